//! Questions Control asks a node over its session, and the node's answers (protocol 3): a
//! [`crate::ControlMessage::Query`] carries an id and a [`Query`], the node replies with a
//! [`crate::NodeMessage::Answer`] of the same id. Control never sends one to a protocol-2
//! session (such a node would not understand it).
//!
//! - An Agent checks a tunnel's target: connects to it and says how it went ("connection
//!   refused from app:3000"), so a wrong target is found before a visitor finds it.
//! - A Gateway returns the recent requests of a tunnel that logs them (`log_requests`), which it
//!   keeps in memory only.
//!
//! Everything here is bounded: a node cuts what it sends to these limits, and Control cuts again
//! what it receives.

use serde::{Deserialize, Serialize};

/// Most request records one answer carries (and one Gateway keeps per tunnel by default).
pub const MAX_LOG_RECORDS: usize = 1000;
/// Longest path a request record keeps, in characters (longer ones are cut).
pub const MAX_PATH_CHARS: usize = 512;
/// Longest method a request record keeps.
pub const MAX_METHOD_CHARS: usize = 16;
/// Longest free text (an error, a status line) in an answer.
pub const MAX_DETAIL_CHARS: usize = 300;

/// Control → node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Query {
    /// Agent: connect to the tunnel's target now and report ([`TargetCheck`]).
    CheckTarget { tunnel_id: i64 },
    /// Gateway: the tunnel's recent requests, newest first ([`Answer::RequestLog`]).
    RequestLog {
        tunnel_id: i64,
        #[serde(default)]
        filter: RequestFilter,
    },
}

/// Which requests of a log to return.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFilter {
    /// Only this status (`502`), or this class when under 10 (`5` for 5xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Only paths that start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// At most this many (capped at [`MAX_LOG_RECORDS`]; 0 means the cap).
    #[serde(default)]
    pub limit: u32,
}

impl RequestFilter {
    /// Whether `record` passes the filter.
    pub fn admits(&self, record: &RequestRecord) -> bool {
        let status_ok = match self.status {
            None => true,
            Some(class @ 1..=9) => record.status / 100 == class,
            Some(status) => record.status == status,
        };
        status_ok
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| record.path.starts_with(p))
    }

    /// How many records to return at most.
    pub fn limit(&self) -> usize {
        match self.limit {
            0 => MAX_LOG_RECORDS,
            n => (n as usize).min(MAX_LOG_RECORDS),
        }
    }
}

/// Node → Control.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    CheckTarget {
        check: TargetCheck,
    },
    RequestLog {
        requests: Vec<RequestRecord>,
    },
    /// The node could not answer (unknown tunnel, busy, not that role): for the operator.
    Error {
        message: String,
    },
}

impl Answer {
    pub fn error(message: impl AsRef<str>) -> Self {
        Answer::Error {
            message: cut(message.as_ref(), MAX_DETAIL_CHARS),
        }
    }

    /// The answer with every list and text cut to this module's limits (what Control keeps of
    /// an answer, whatever the node sent).
    pub fn bounded(self) -> Self {
        match self {
            Answer::CheckTarget { mut check } => {
                check.target = cut(&check.target, MAX_DETAIL_CHARS);
                check.detail = cut(&check.detail, MAX_DETAIL_CHARS);
                Answer::CheckTarget { check }
            }
            Answer::RequestLog { mut requests } => {
                requests.truncate(MAX_LOG_RECORDS);
                for r in &mut requests {
                    r.bound();
                }
                Answer::RequestLog { requests }
            }
            Answer::Error { message } => Answer::error(message),
        }
    }
}

/// How connecting to a tunnel's target went, as the Agent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetCheck {
    /// The target as configured (`app:3000`).
    pub target: String,
    /// The target accepted the connection (and, for `http` tunnels, answered with a status
    /// line).
    pub ok: bool,
    /// Microseconds until the connection was accepted (absent when it was not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_us: Option<u64>,
    /// What happened, in words: the status line an HTTP target answered, or the exact error
    /// ("connection refused from app:3000 (172.18.0.5:3000)").
    pub detail: String,
}

/// One request a Gateway answered for a tunnel that logs requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRecord {
    /// When the request arrived, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The id the Gateway gave the request: on its error pages, in its access log.
    pub request_id: String,
    pub client_ip: String,
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    pub status: u16,
    /// Until the response body ended, in microseconds.
    pub duration_us: u64,
    /// Body bytes from the client, and to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl RequestRecord {
    /// Cuts the record's texts to this module's limits.
    pub fn bound(&mut self) {
        self.request_id = cut(&self.request_id, 64);
        self.client_ip = cut(&self.client_ip, 64);
        self.method = cut(&self.method, MAX_METHOD_CHARS);
        self.path = cut(&self.path, MAX_PATH_CHARS);
    }
}

/// `text` without control characters, at most `max` characters.
pub fn cut(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: u16, path: &str) -> RequestRecord {
        RequestRecord {
            time_ms: 1,
            request_id: "r".into(),
            client_ip: "192.0.2.1".into(),
            method: "GET".into(),
            path: path.into(),
            status,
            duration_us: 1500,
            bytes_in: 0,
            bytes_out: 10,
        }
    }

    #[test]
    fn a_filter_takes_a_status_a_class_and_a_path_prefix() {
        let f = |status, prefix: Option<&str>| RequestFilter {
            status,
            path_prefix: prefix.map(Into::into),
            limit: 0,
        };
        assert!(f(None, None).admits(&record(200, "/")));
        assert!(f(Some(5), None).admits(&record(503, "/")));
        assert!(!f(Some(5), None).admits(&record(404, "/")));
        assert!(f(Some(502), None).admits(&record(502, "/")));
        assert!(!f(Some(502), None).admits(&record(503, "/")));
        assert!(f(None, Some("/api")).admits(&record(200, "/api/x")));
        assert!(!f(None, Some("/api")).admits(&record(200, "/other")));
        assert_eq!(f(None, None).limit(), MAX_LOG_RECORDS);
        let many = RequestFilter {
            limit: 50_000,
            ..RequestFilter::default()
        };
        assert_eq!(many.limit(), MAX_LOG_RECORDS);
    }

    #[test]
    fn an_answer_is_cut_to_the_limits() {
        let mut long = record(200, &"/a".repeat(2000));
        long.method = "X".repeat(100);
        let requests = vec![long; MAX_LOG_RECORDS + 5];
        let Answer::RequestLog { requests } = (Answer::RequestLog { requests }).bounded() else {
            panic!()
        };
        assert_eq!(requests.len(), MAX_LOG_RECORDS);
        assert_eq!(requests[0].path.chars().count(), MAX_PATH_CHARS);
        assert_eq!(requests[0].method.len(), MAX_METHOD_CHARS);
        let Answer::Error { message } = Answer::error("a\nb".repeat(500)) else {
            panic!()
        };
        assert_eq!(message.chars().count(), MAX_DETAIL_CHARS);
        assert!(!message.contains('\n'));
    }
}
