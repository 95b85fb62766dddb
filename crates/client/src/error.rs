//! What can go wrong talking to Control: the request never got an answer, Control refused it
//! (with its stable error code), or the answer was not what the API documents.

use reqwest::{Method, StatusCode};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer: Control unreachable, a timeout, a broken connection.
    #[error("cannot reach Control: {0}")]
    Http(#[from] reqwest::Error),
    /// Control answered with a status other than 2xx.
    #[error("{method} /api/v1/{path}: HTTP {status} {code}: {message}")]
    Api {
        method: Method,
        path: String,
        status: StatusCode,
        /// The stable error code (`error.code`), empty if the body had none.
        code: String,
        message: String,
        /// The whole answer (boxed: errors travel in every `Result`).
        body: Box<Value>,
    },
    /// The body was not JSON.
    #[error("HTTP {status}: the body is not JSON ({source}): {text}")]
    Decode {
        status: StatusCode,
        source: serde_json::Error,
        text: String,
    },
    /// A request body could not be encoded.
    #[error("cannot encode the request: {0}")]
    Encode(serde_json::Error),
    /// The answer lacked a field the API documents.
    #[error("no `{field}` in {body}")]
    MissingField { field: String, body: Box<Value> },
}

impl Error {
    /// The HTTP status Control answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api { status, .. } | Error::Decode { status, .. } => Some(*status),
            Error::Http(e) => e.status(),
            Error::Encode(_) | Error::MissingField { .. } => None,
        }
    }
}
