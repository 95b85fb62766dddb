//! [`CsrfForm`]'s checks, each of which must refuse the form by itself: a signed-in session, the
//! session's own token in the `csrf` field, and a refusal shown on the form's own page.

use super::*;
use crate::ops;
use std::time::Duration;

#[derive(Deserialize)]
struct NameForm {
    #[serde(default)]
    name: String,
}

impl UiForm for NameForm {
    fn kept(&self) -> Value {
        context! { name => self.name }
    }
}

/// A page that says which error it shows and what the form kept.
struct EchoPage;

impl ShowsErrors for EchoPage {
    async fn at(_: &mut Parts, _: &AppState) -> Result<Self, Response> {
        Ok(Self)
    }

    async fn show(&self, _: &AppState, _: &Viewer, e: ApiError, kept: Value) -> Response {
        let name = kept
            .get_attr("name")
            .map(|v| v.to_string())
            .unwrap_or_default();
        (e.status(), format!("echo: {} / kept {name}", e.message())).into_response()
    }
}

/// A state with one user signed in: the state, the session cookie and its CSRF token.
async fn signed_in() -> (AppState, String, String) {
    let store = crate::store::Store::open("sqlite::memory:").await.unwrap();
    let user = store
        .create_user("a@x.io", "not-a-hash", false, true)
        .await
        .unwrap();
    let hub = crate::hub::Hub::new(store, Duration::from_secs(1), Duration::from_secs(2));
    let network = crate::validate::WgNetwork::parse("10.77.0.0/16").unwrap();
    let state = AppState::new(hub, network, false, "not-a-hash".into());
    let session = ops::login::start_login_session(&state, user).await.unwrap();
    (state, session.cookie, session.csrf_token)
}

fn post(cookie: Option<&str>, body: String) -> Request {
    let mut req =
        Request::post("/things?x=1").header(CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        req = req.header("cookie", format!("km_session={c}"));
    }
    req.body(Body::from(body)).unwrap()
}

async fn text(r: Response) -> String {
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn the_sessions_token_opens_the_form() {
    let (state, cookie, csrf) = signed_in().await;
    let req = post(Some(&cookie), format!("name=box&csrf={csrf}"));
    let Ok(CsrfForm(ui, (), form)) =
        CsrfForm::<NameForm, EchoPage>::from_request(req, &state).await
    else {
        panic!("the right token is accepted");
    };
    assert_eq!(form.name, "box");
    assert_eq!(ui.viewer.user.email, "a@x.io");
    assert_eq!(ui.viewer.csrf, csrf);
}

#[tokio::test]
async fn a_form_without_the_token_is_refused_on_its_page() {
    let (state, cookie, _) = signed_in().await;
    let req = post(Some(&cookie), "name=box".into());
    let Err(r) = CsrfForm::<NameForm, EchoPage>::from_request(req, &state).await else {
        panic!("no token, no form");
    };
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body = text(r).await;
    assert!(
        body.starts_with("echo: this form has expired or was sent from another site"),
        "{body}"
    );
    assert!(
        body.ends_with("kept box"),
        "what was typed is shown again: {body}"
    );
}

#[tokio::test]
async fn a_wrong_token_is_refused() {
    let (state, cookie, csrf) = signed_in().await;
    let same_length = "x".repeat(csrf.len());
    // Another session's token is as wrong as a made-up one.
    let other = ops::login::start_login_session(
        &state,
        state.store.user_by_email("a@x.io").await.unwrap().unwrap(),
    )
    .await
    .unwrap()
    .csrf_token;
    for wrong in [same_length.as_str(), "forged", other.as_str(), ""] {
        let req = post(Some(&cookie), format!("csrf={wrong}&name=box"));
        let r = CsrfForm::<NameForm>::from_request(req, &state).await;
        let Err(r) = r else {
            panic!("{wrong:?} is not the session's token");
        };
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{wrong:?}");
        // The default page: the error page with the menu.
        let body = text(r).await;
        assert!(body.contains("this form has expired"), "{body}");
        assert!(body.contains("a@x.io"), "the menu stays: {body}");
    }
    // The last `csrf` field is the one checked.
    let req = post(Some(&cookie), format!("csrf={csrf}&csrf=forged"));
    let r = CsrfForm::<NameForm, EchoPage>::from_request(req, &state).await;
    assert_eq!(r.err().map(|r| r.status()), Some(StatusCode::FORBIDDEN));
}

#[tokio::test]
async fn without_a_session_the_form_goes_to_the_login_page() {
    let (state, _, csrf) = signed_in().await;
    for cookie in [None, Some("not-a-session")] {
        let req = post(cookie, format!("name=box&csrf={csrf}"));
        let Err(r) = CsrfForm::<NameForm, EchoPage>::from_request(req, &state).await else {
            panic!("a token without its session opens nothing");
        };
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let to = r.headers().get("location").unwrap();
        assert_eq!(to, "/login?next=/things%3Fx%3D1");
    }
}

#[tokio::test]
async fn a_body_that_is_not_a_form_is_refused_before_the_token() {
    let (state, cookie, csrf) = signed_in().await;
    let req = Request::post("/things")
        .header("cookie", format!("km_session={cookie}"))
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(format!("{{\"csrf\":\"{csrf}\"}}")))
        .unwrap();
    let r = CsrfForm::<NameForm, EchoPage>::from_request(req, &state).await;
    assert_eq!(
        r.err().map(|r| r.status()),
        Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
    );
}
