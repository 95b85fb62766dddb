//! Activity: the audit log, newest first, 50 per page (`?before=<id>` for older entries).
//! Admins see everyone's changes; members see their own (as `GET /api/v1/audit`).

use super::form::{Ui, UiResult};
use super::page as render;
use axum::extract::Query;
use axum::http::StatusCode;
use minijinja::{context, Value};
use serde::Deserialize;

const PAGE: i64 = 50;

#[derive(Deserialize)]
pub struct Paging {
    before: Option<i64>,
}

pub async fn page(ui: Ui, Query(q): Query<Paging>) -> UiResult {
    let only = (!ui.viewer.user.is_admin).then_some(ui.viewer.user.id);
    let list = async { Ok(ui.state.store.list_audit(only, q.before, PAGE).await?) };
    let entries = ui.run(list).await?;
    let older = (entries.len() as i64 == PAGE)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    let ctx = context! {
        entries => Value::from_serialize(&entries),
        older => older,
        all => ui.viewer.user.is_admin,
    };
    let page = render::page(&ui.viewer, StatusCode::OK, "activity.html", "activity", ctx);
    Ok(page)
}
