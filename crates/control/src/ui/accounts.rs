//! Signing in and out: the first-run setup page, login (honouring `?next=`), logout, and
//! registration by invitation link or, when an admin turned it on, open registration.

use super::form::{ApiErrors, CsrfForm, NoFields, UiResult};
use super::page::render;
use super::viewer::{safe_next, same_origin};
use crate::app::AppState;
use crate::auth::{session_cookie, ClientIp};
use crate::error::ApiError;
use crate::ops::{self, login::NewLogin};
use crate::secrets;
use axum::extract::{Query, State};
use axum::http::header::{CONTENT_SECURITY_POLICY, RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use minijinja::context;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct SetupForm {
    email: String,
    password: String,
}

#[derive(Deserialize, Default)]
pub struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct RegisterForm {
    #[serde(default)]
    email: String,
    password: String,
    invite: Option<String>,
}

#[derive(Deserialize)]
pub struct InviteQuery {
    invite: Option<String>,
}

/// A throttled or overloaded answer says when to come back.
fn retry_after(mut response: Response, e: &ApiError) -> Response {
    if let Some(secs) = e.retry_after() {
        response.headers_mut().insert(RETRY_AFTER, secs.into());
    }
    response
}

/// Signed in: the session cookie and a redirect to where the user was going.
fn signed_in(state: &AppState, session: NewLogin, next: &str) -> Response {
    let cookie = ops::login::set_cookie(state, &session.cookie);
    ([(SET_COOKIE, cookie)], Redirect::to(next)).into_response()
}

pub async fn setup_page(State(state): State<AppState>) -> Result<Response, ApiError> {
    if state.store.count_users().await? > 0 {
        return Ok(Redirect::to("/login").into_response());
    }
    Ok(render(StatusCode::OK, "setup.html", context! {}))
}

pub async fn setup(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SetupForm>,
) -> Result<Response, Response> {
    same_origin(&headers).map_err(IntoResponse::into_response)?;
    match ops::users::setup(&state, &form.email, form.password).await {
        Ok(user) => {
            let session = ops::login::start_login_session(&state, user)
                .await
                .map_err(IntoResponse::into_response)?;
            Ok(signed_in(&state, session, "/"))
        }
        Err(e) if e.status() == StatusCode::CONFLICT => Ok(Redirect::to("/login").into_response()),
        Err(e) => Ok(retry_after(
            render(
                e.status(),
                "setup.html",
                context! { error => e.message(), email => form.email },
            ),
            &e,
        )),
    }
}

pub async fn login_page(
    State(state): State<AppState>,
    Query(q): Query<NextQuery>,
) -> Result<Response, ApiError> {
    if state.store.count_users().await? == 0 {
        return Ok(Redirect::to("/setup").into_response());
    }
    let open = state.store.open_registration().await?;
    let next = safe_next(q.next.as_deref());
    let page = render(
        StatusCode::OK,
        "login.html",
        context! { next => next, open_registration => open },
    );
    Ok(login_page_for(page, &next))
}

/// A login page that leads on to a protected tunnel may post into a chain ending there.
fn login_page_for(mut page: Response, next: &str) -> Response {
    if let Some(csp) = super::csp_for_login(next) {
        page.headers_mut().insert(CONTENT_SECURITY_POLICY, csp);
    }
    page
}

pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, Response> {
    same_origin(&headers).map_err(IntoResponse::into_response)?;
    let next = safe_next(form.next.as_deref());
    let previous = session_cookie(&headers);
    let result =
        ops::login::login(&state, &form.email, form.password, ip.as_deref(), previous).await;
    match result {
        Ok(session) => Ok(signed_in(&state, session, &next)),
        Err(e) => {
            let mut response = render(
                e.status(),
                "login.html",
                context! { error => e.message(), email => form.email, next => next },
            );
            response = retry_after(response, &e);
            Ok(login_page_for(response, &next))
        }
    }
}

/// Ends this session. The CSRF token is required so another site cannot log the user out.
pub async fn logout(
    headers: HeaderMap,
    CsrfForm(ui, (), _): CsrfForm<NoFields, ApiErrors>,
) -> UiResult {
    if let Some(session) = session_cookie(&headers) {
        let hash = secrets::hash(session);
        ui.run(async { Ok(ui.state.store.delete_login_session(&hash).await?) })
            .await?;
    }
    let cookie = ops::login::set_cookie(&ui.state, "");
    Ok(([(SET_COOKIE, cookie)], Redirect::to("/login")).into_response())
}

pub async fn register_page(
    State(state): State<AppState>,
    Query(q): Query<InviteQuery>,
) -> Result<Response, ApiError> {
    let invite = q.invite.filter(|t| !t.is_empty());
    let invitation = match &invite {
        Some(token) => state.store.invitation(&secrets::hash(token)).await?,
        None => None,
    };
    let open = state.store.open_registration().await?;
    let ctx = match (&invite, &invitation) {
        (Some(token), Some(inv)) => context! { invite => token, email => inv.email.clone() },
        (Some(_), None) => context! {
            closed => true,
            error => "This invitation link is unknown, used or expired; ask an admin for a new one.",
        },
        (None, _) if open => context! {},
        (None, _) => context! { closed => true },
    };
    Ok(render(StatusCode::OK, "register.html", ctx))
}

pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<RegisterForm>,
) -> Result<Response, Response> {
    same_origin(&headers).map_err(IntoResponse::into_response)?;
    match ops::users::register(&state, form.invite.as_deref(), &form.email, form.password).await {
        Ok(user) => {
            let session = ops::login::start_login_session(&state, user)
                .await
                .map_err(IntoResponse::into_response)?;
            Ok(signed_in(&state, session, "/"))
        }
        Err(e) => Ok(retry_after(
            render(
                e.status(),
                "register.html",
                context! { error => e.message(), email => form.email, invite => form.invite },
            ),
            &e,
        )),
    }
}
