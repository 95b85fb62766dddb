//! Control and nodes one release apart (issue #18): the session uses the newest protocol version
//! both speak. A node of the release before (protocol 2: hello in version 2, no version header, and it
//! accepts only a `Welcome` of version 2) still gets its session and snapshot; this release's
//! nodes and the next release's get this release's version; nodes two releases apart, either
//! way, are refused with a message that says which side to upgrade. (The other direction, a node
//! of this release against a Control of the release before, is in the node crate's tests.)

use futures_util::SinkExt as _;
use kakuremichi_proto::{
    ControlMessage, NodeRole, OLDEST_PROTOCOL_VERSION, PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use kakuremichi_testkit::control::*;
use kakuremichi_testkit::node::{random_key, try_next_message, within, Ws};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

fn connect_url(c: &Control) -> String {
    c.url(kakuremichi_proto::CONNECT_PATH)
        .replace("http://", "ws://")
}

/// Opens a Gateway session: the upgrade request with `header` as the version header, then a
/// hello written in `hello_version` (the JSON of protocol 2's hello).
async fn open(c: &Control, token: &str, header: Option<&str>, hello_version: u32) -> Ws {
    let mut req = connect_url(c).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(v) = header {
        req.headers_mut()
            .insert(PROTOCOL_HEADER, v.parse().unwrap());
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = format!(
        r#"{{"type":"hello","protocol_version":{hello_version},"role":"gateway","public_key":"{}","config_hash":null,"software":"kakuremichi test"}}"#,
        random_key()
    );
    ws.send(Message::text(hello)).await.unwrap();
    ws
}

/// The version `Welcome` names, then the snapshot that follows; or the refusal's message.
async fn outcome(ws: &mut Ws) -> Result<u32, String> {
    let first = within(Duration::from_secs(5), try_next_message(ws)).await;
    match first {
        Some(ControlMessage::Welcome {
            protocol_version, ..
        }) => {
            let config = within(Duration::from_secs(5), try_next_message(ws)).await;
            assert!(
                matches!(config, Some(ControlMessage::Config { ref snapshot }) if snapshot.is_intact()),
                "a snapshot after the welcome: {config:?}"
            );
            Ok(protocol_version)
        }
        Some(ControlMessage::Error { code, message }) => {
            assert_eq!(code, "version_mismatch", "{message}");
            Err(message)
        }
        other => panic!("expected a welcome or an error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_session_uses_the_newest_version_both_sides_speak() {
    let (_dir, data) = data_dir();
    let c = start(&data).await;
    let gw = c.gateway("edge").await;
    let token = gw["token"].as_str().unwrap();
    let (oldest, ours) = (OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION);
    let header = |v: u32| v.to_string();

    // The release before's Gateway: hello in 2, no header → a version-2 session.
    let mut old = open(&c, token, None, oldest).await;
    assert_eq!(outcome(&mut old).await, Ok(oldest));
    drop(old);
    // This release's: hello in the oldest, the newest in the header.
    let mut this = open(&c, token, Some(&header(ours)), oldest).await;
    assert_eq!(outcome(&mut this).await, Ok(ours));
    drop(this);
    // The next release's (it speaks ours and its own).
    let mut next = open(&c, token, Some(&header(ours + 1)), ours).await;
    assert_eq!(outcome(&mut next).await, Ok(ours));
    drop(next);
    // Two releases ahead, and two behind: refused, naming the versions and what to do.
    for (hello, offered) in [(ours + 1, ours + 2), (oldest - 1, oldest - 1)] {
        let mut far = open(&c, token, Some(&header(offered)), hello).await;
        let refused = outcome(&mut far).await.unwrap_err();
        assert!(refused.contains("upgrade the older side"), "{refused}");
        assert!(refused.contains(&hello.to_string()), "{refused}");
    }
    // A header that is not a version is a clear 400, before any session.
    let mut req = connect_url(&c).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req.headers_mut()
        .insert(PROTOCOL_HEADER, "three".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 400);
            let body = String::from_utf8_lossy(res.body().as_deref().unwrap_or_default());
            assert!(body.contains(PROTOCOL_HEADER), "{body}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    // The Gateway is none the worse: this release's own client still connects.
    let (_ws, id, _) = c.node(token, NodeRole::Gateway, None).await;
    assert_eq!(id, gw["id"].as_i64().unwrap());
}
