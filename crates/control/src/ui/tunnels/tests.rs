//! The tunnel form: what each field means for the tunnel, and what is refused with which words.

use super::*;
use axum::extract::{FromRequest, Request};
use axum::Form;

impl TunnelForm {
    fn parse(body: &[u8]) -> TunnelForm {
        form_urlencoded::parse(body)
            .into_owned()
            .collect::<Vec<_>>()
            .into()
    }
}

#[tokio::test]
async fn forms_decoder_takes_the_repeated_replicas() {
    let req = Request::post("/tunnels")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=t&hostname=a.test&replica=2&replica=3&replicas_shown=1".into())
        .unwrap();
    let Form(f) = Form::<TunnelForm>::from_request(req, &()).await.unwrap();
    assert_eq!(f.hostname, "a.test");
    assert_eq!(f.agent_ids(1).unwrap(), Some(vec![1, 2, 3]));
}

fn form(access: &str, allow: &str) -> TunnelForm {
    TunnelForm {
        access: access.into(),
        allow: allow.into(),
        ..Default::default()
    }
}

#[test]
fn access_choice_maps_to_the_policy() {
    assert_eq!(
        form("", "a@x.io").access().unwrap(),
        None,
        "absent: unchanged"
    );
    assert_eq!(
        form("public", "ignored").access().unwrap(),
        Some(AccessPolicy::Public)
    );
    assert_eq!(
        form("login", "").access().unwrap(),
        Some(AccessPolicy::Login)
    );
    let Some(AccessPolicy::Users { allow }) = form(
        "users",
        " Alice@Example.com,bob@example.org\r\n\r\ncarol@example.net ; alice@example.com\n",
    )
    .access()
    .unwrap() else {
        panic!("a users policy")
    };
    assert_eq!(
        allow.into_iter().collect::<Vec<_>>(),
        ["alice@example.com", "bob@example.org", "carol@example.net"]
    );
}

#[test]
fn replicas_repeat_and_only_count_when_shown() {
    let f = TunnelForm::parse(b"agent_id=1&replica=2&replica=1&replica=3&access=login");
    assert_eq!(f.agent_ids(1).unwrap(), None, "no boxes shown: unchanged");
    let f = TunnelForm::parse(b"agent_id=1&replicas_shown=1&replica=2&replica=1&replica=3");
    assert_eq!(f.agent_ids(1).unwrap(), Some(vec![1, 2, 3]));
    let input = f.input().unwrap();
    assert_eq!((input.agent_id, input.access), (Some(1), None));
    let f = TunnelForm::parse(b"replicas_shown=1");
    assert_eq!(
        f.agent_ids(4).unwrap(),
        Some(vec![4]),
        "none ticked: no replicas"
    );
    let f = TunnelForm::parse(b"replicas_shown=1&replica=x");
    assert!(f.agent_ids(4).is_err());
}

#[test]
fn limits_only_count_when_shown_and_empty_means_off() {
    let f = TunnelForm::parse(b"agent_id=1&ip_deny=10.0.0.0%2F8&rate_limit_per_second=5");
    let limits = f.input().unwrap().limits;
    assert!(limits.ip_deny.is_none() && limits.rate_limit_per_second.is_none());
    let f = TunnelForm::parse(
        b"agent_id=1&limits_shown=1&ip_allow=192.0.2.0%2F24%0D%0A2001%3Adb8%3A%3A1%2C+198.51.100.7\
          &ip_deny=&rate_limit_per_second=+5+&rate_limit_burst=&max_concurrent_requests=",
    );
    let limits = f.input().unwrap().limits;
    assert_eq!(
        limits.ip_allow.unwrap(),
        ["192.0.2.0/24", "2001:db8::1", "198.51.100.7"]
    );
    assert_eq!(limits.ip_deny, Some(vec![]));
    assert_eq!(limits.rate_limit_per_second, Some(Some(5)));
    assert_eq!(limits.rate_limit_burst, Some(None));
    assert_eq!(limits.max_concurrent_requests, Some(None));
    let f = TunnelForm::parse(b"agent_id=1&limits_shown=1&max_concurrent_requests=many");
    let err = f.input().unwrap_err();
    assert!(
        err.message().starts_with("Concurrent requests"),
        "{}",
        err.message()
    );
}

#[test]
fn bad_access_input_says_what_to_fix() {
    let msg = |f: TunnelForm| f.access().unwrap_err().message().to_string();
    assert!(msg(form("users", " \n, ")).contains("at least one e-mail address"));
    assert!(msg(form("users", "a@x.io\nnot-an-address")).contains("\"not-an-address\""));
    assert!(msg(form("everyone", "")).contains("Access must be"));
}
