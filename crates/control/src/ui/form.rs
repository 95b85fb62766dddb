//! What every page handler of the signed-in UI shares, so a handler is only its own steps:
//! [`Ui`] (the viewer, the state and the page that shows this handler's errors), [`CsrfForm`]
//! (that plus a posted form whose CSRF token matched the session) and [`UiResult`].
//!
//! An error is shown on the page the form was posted from, re-drawn from the store with the
//! message and what was typed (or on the plain error page, for forms that have no page of their
//! own). Re-drawing reads the store, which `IntoResponse` cannot wait for, so an error is rendered
//! where it happens ([`Ui::run`]) and travels up as [`UiError`], an already rendered page. Which
//! page that is is a type parameter ([`ShowsErrors`]), so a refused CSRF token, found before the
//! handler runs, is shown on the same page as any other error of that form.

use super::page::error_page;
use super::viewer::Viewer;
use crate::app::AppState;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, RawForm, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Form;
use minijinja::{context, Value};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::future::Future;

/// What a page handler returns: its page, or an error already rendered (see [`Ui::run`]).
pub type UiResult = Result<Response, UiError>;

/// An error rendered as the page that shows it.
pub struct UiError(Response);

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        self.0
    }
}

/// Where a handler's errors are shown.
pub trait ShowsErrors: Sized + Send + Sync {
    /// The page of this request (the tunnel page needs the tunnel's id from the path).
    fn at(
        parts: &mut Parts,
        state: &AppState,
    ) -> impl Future<Output = Result<Self, Response>> + Send;

    /// `e` on this page, with `kept`: what the form had typed ([`UiForm::kept`]).
    fn show(
        &self,
        state: &AppState,
        viewer: &Viewer,
        e: ApiError,
        kept: Value,
    ) -> impl Future<Output = Response> + Send;
}

/// Errors on the plain error page (keeping the menu): pages that show one thing, one-click
/// forms without a page of their own.
pub struct ErrorPage;

impl ShowsErrors for ErrorPage {
    async fn at(_: &mut Parts, _: &AppState) -> Result<Self, Response> {
        Ok(Self)
    }

    async fn show(&self, _: &AppState, viewer: &Viewer, e: ApiError, _: Value) -> Response {
        error_page(viewer, &e)
    }
}

/// Errors as the API answers them (JSON): logging out, which has no page.
pub struct ApiErrors;

impl ShowsErrors for ApiErrors {
    async fn at(_: &mut Parts, _: &AppState) -> Result<Self, Response> {
        Ok(Self)
    }

    async fn show(&self, _: &AppState, _: &Viewer, e: ApiError, _: Value) -> Response {
        e.into_response()
    }
}

/// A page drawn again with a form's error above it, with what was typed (the list pages):
/// [`Redraw::draw`] is all such a page writes.
pub trait Redraw: Default + Send + Sync {
    /// The page at `status`, with `ctx` added (the flash, an error, what a form kept).
    fn draw(
        state: &AppState,
        viewer: &Viewer,
        status: StatusCode,
        ctx: Value,
    ) -> impl Future<Output = Result<Response, ApiError>> + Send;

    /// Errors shown on the plain error page instead. Default: none.
    fn not_here(_: &ApiError) -> bool {
        false
    }
}

impl<P: Redraw> ShowsErrors for P {
    async fn at(_: &mut Parts, _: &AppState) -> Result<Self, Response> {
        Ok(P::default())
    }

    async fn show(&self, state: &AppState, viewer: &Viewer, e: ApiError, kept: Value) -> Response {
        if P::not_here(&e) {
            return error_page(viewer, &e);
        }
        above(viewer, e, kept, |status, ctx| {
            P::draw(state, viewer, status, ctx)
        })
        .await
    }
}

/// `e`, with what was typed, above the page `draw` renders at the error's status; the plain
/// error page if that page cannot be drawn either.
pub async fn above<F>(
    viewer: &Viewer,
    e: ApiError,
    kept: Value,
    draw: impl FnOnce(StatusCode, Value) -> F,
) -> Response
where
    F: Future<Output = Result<Response, ApiError>>,
{
    let ctx = context! { error => e.message(), ..kept };
    draw(e.status(), ctx)
        .await
        .unwrap_or_else(|e| error_page(viewer, &e))
}

/// The signed-in viewer of a page, the state, and where this handler's errors go (`P`).
/// As an extractor: the viewer of the session cookie, else a redirect to the login page.
pub struct Ui<P = ErrorPage> {
    pub state: AppState,
    pub viewer: Viewer,
    page: P,
    /// What the posted form re-shows after an error.
    kept: Value,
}

impl<P: ShowsErrors> Ui<P> {
    /// Runs `op`; its error is rendered on this handler's page.
    pub async fn run<R>(
        &self,
        op: impl Future<Output = Result<R, ApiError>>,
    ) -> Result<R, UiError> {
        match op.await {
            Ok(r) => Ok(r),
            Err(e) => Err(self.show(e).await),
        }
    }

    async fn show(&self, e: ApiError) -> UiError {
        let page = self
            .page
            .show(&self.state, &self.viewer, e, self.kept.clone());
        UiError(page.await)
    }
}

impl<P: ShowsErrors> FromRequestParts<AppState> for Ui<P> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let viewer = Viewer::from_request_parts(parts, state).await?;
        let page = P::at(parts, state).await?;
        Ok(Ui {
            state: state.clone(),
            viewer,
            page,
            kept: context! {},
        })
    }
}

/// A form of the signed-in UI (its fields, without the `csrf` one).
pub trait UiForm: DeserializeOwned + Send {
    /// What the page shows again after an error, so nothing typed is lost. Default: nothing.
    fn kept(&self) -> Value {
        context! {}
    }
}

/// A form with no field but the CSRF token (delete, rotate, log out).
#[derive(Deserialize)]
pub struct NoFields {}

impl UiForm for NoFields {}

/// The hidden field every form of the signed-in UI carries the session's CSRF token in.
const CSRF_FIELD: &str = "csrf";

/// A form posted by the signed-in viewer whose `csrf` field is the session's token, as axum
/// extractor. In order, as the handlers did by hand before: the session (else the login
/// redirect), the path `I` (e.g. `Path<i64>`), the form `T` (axum's `Form` rejections), then the
/// token (else 403 on the form's page `P`). A token is never compared early-exit
/// ([`Viewer::check`]). Its parts in that order: `CsrfForm(ui, path, form)`.
pub struct CsrfForm<T, P = ErrorPage, I = ()>(pub Ui<P>, pub I, pub T);

impl<T, P, I> FromRequest<AppState> for CsrfForm<T, P, I>
where
    T: UiForm,
    P: ShowsErrors,
    I: FromRequestParts<AppState> + Send,
    I::Rejection: IntoResponse,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, state).await?;
        let path = I::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let page = P::at(&mut parts, state).await?;
        let req = Request::from_parts(parts, body);
        let RawForm(bytes) = RawForm::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        // `Form` on the same bytes: the same decoder and rejections as the handlers had.
        let again = Request::post("/")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(bytes.clone()))
            .map_err(|_| ApiError::internal().into_response())?;
        let Form(form) = Form::<T>::from_request(again, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let sent = form_urlencoded::parse(&bytes)
            .filter(|(k, _)| k == CSRF_FIELD)
            .last()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let ui = Ui {
            state: state.clone(),
            viewer,
            page,
            kept: form.kept(),
        };
        if let Err(e) = ui.viewer.check(&sent) {
            return Err(ui.show(e).await.into_response());
        }
        Ok(CsrfForm(ui, path, form))
    }
}

#[cfg(test)]
mod tests;
