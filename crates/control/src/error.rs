//! The error every request handler and operation returns, and the extractors that turn axum's
//! own rejections into it. It sits low (above the store, below `ops`) so that operations, the
//! API and the UI share it without importing each other; the UI renders it as a page.
//!
//! Every error response is `{"error":{"code":"...","message":"..."}}`; [`json_errors`] is a
//! backstop that rewrites any other error response (an extractor or route we did not wrap).

use crate::store::StoreError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for a `Retry-After` header (throttled logins).
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code_for_status(status),
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429 with `Retry-After`, the wait also said in words.
    pub fn too_many(wait_secs: u64, what: &str) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{what}; try again in {wait_secs} seconds"),
        );
        e.retry_after = Some(wait_secs);
        e
    }

    /// 503 with `Retry-After`: Control is overloaded, not the caller at fault.
    pub fn busy(wait_secs: u64, what: &str) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what}; try again in {wait_secs} seconds"),
        );
        e.retry_after = Some(wait_secs);
        e
    }

    /// The same error with its own stable `code` (e.g. RFC 8628's `authorization_pending`).
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication required: log in, or send Authorization: Bearer <personal API token>",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see Control's log",
        )
    }
}

/// The stable `code` of an error status.
fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        429 => "too_many_requests",
        502 => "bad_gateway",
        503 => "unavailable",
        500..=599 => "internal",
        _ => "bad_request",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "not found"),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            e @ StoreError::KeyInUse(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            StoreError::Invalid(m) => ApiError::bad_request(m),
            StoreError::Quota(m) => ApiError::forbidden(m),
            e @ (StoreError::Db(_) | StoreError::Migrate(_) | StoreError::SchemaTooNew(_)) => {
                tracing::error!(error = %e, "request failed");
                ApiError::internal()
            }
        }
    }
}

/// `axum::Json` whose rejections (bad JSON, wrong content type, unknown field...) are 400 [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

/// The numeric `{id}` of a resource path; anything else is a 400 [`ApiError`].
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<i64>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(id)) => Ok(Id(id)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "the id in the path must be an integer ({})",
                rejection.body_text()
            ))),
        }
    }
}

/// Middleware: rewrites error responses that are not already JSON into the API's error format.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        t => t.to_string(),
    };
    ApiError::new(status, message).into_response()
}

/// Fallback for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// Fallback for a known route with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

/// Maps a store error, naming the resource in a 404.
pub fn about(what: &'static str) -> impl FnOnce(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound => ApiError::not_found(what),
        e => e.into(),
    }
}
