//! Activity: the audit log, newest first, 50 per page (`?before=<id>` for older entries).
//! Admins see everyone's changes; members see their own (as `GET /api/v1/audit`).

use super::page as render;
use super::viewer::Viewer;
use crate::app::AppState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::{context, Value};
use serde::Deserialize;

const PAGE: i64 = 50;

#[derive(Deserialize)]
pub struct Paging {
    before: Option<i64>,
}

pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<Paging>,
) -> Response {
    let only = (!viewer.user.is_admin).then_some(viewer.user.id);
    match state.store.list_audit(only, q.before, PAGE).await {
        Ok(entries) => {
            let older = (entries.len() as i64 == PAGE)
                .then(|| entries.last().map(|e| e.id))
                .flatten();
            let ctx = context! {
                entries => Value::from_serialize(&entries),
                older => older,
                all => viewer.user.is_admin,
            };
            render::page(&viewer, StatusCode::OK, "activity.html", "activity", ctx)
        }
        Err(e) => render::error_page(&viewer, &e.into()),
    }
}
