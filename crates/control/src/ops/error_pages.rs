//! Custom error pages: a tunnel's own (its owner sets it) and the global one (admins, a
//! setting), HTML the Gateways serve as is in place of their own pages, with `{{request_id}}`
//! and `{{status}}` filled in.
//!
//! Limits: one page is at most [`MAX_ERROR_PAGE_BYTES`]; every Gateway's snapshot carries each
//! distinct page once, and all of them together (the global page included) at most
//! [`MAX_ERROR_PAGES_TOTAL`] bytes, a quarter of a node message, so pages can never be what
//! keeps a snapshot from being sent.

use super::{audit, require_admin};
use crate::app::AppState;
use crate::error::ApiError;
use crate::store::{UserRow, ERROR_PAGE};
use kakuremichi_proto::{MAX_ERROR_PAGE_BYTES, MAX_MESSAGE_BYTES};
use serde_json::json;

/// Most bytes the distinct custom error pages may take in a Gateway's snapshot.
pub const MAX_ERROR_PAGES_TOTAL: usize = MAX_MESSAGE_BYTES / 4;

/// A page as sent: blank means none (`None`); beyond [`MAX_ERROR_PAGE_BYTES`] a 400.
pub fn check(page: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(page) = page.filter(|p| !p.trim().is_empty()) else {
        return Ok(None);
    };
    if page.len() > MAX_ERROR_PAGE_BYTES {
        return Err(ApiError::bad_request(format!(
            "error_page is {} bytes; a custom error page may have at most {MAX_ERROR_PAGE_BYTES} \
             bytes (64 KiB): put images and styles elsewhere and link to them",
            page.len()
        )));
    }
    Ok(Some(page))
}

/// Whose page is being set, which the budget counts instead of its current page.
#[derive(Debug, Clone, Copy)]
pub enum PageOf {
    NewTunnel,
    Tunnel(i64),
    Global,
}

/// 400 when setting `page` (for `of`) would make the distinct pages of every Gateway's
/// snapshot exceed [`MAX_ERROR_PAGES_TOTAL`].
pub async fn check_budget(state: &AppState, of: PageOf, page: &str) -> Result<(), ApiError> {
    let except = match of {
        PageOf::Tunnel(id) => Some(id),
        PageOf::NewTunnel | PageOf::Global => None,
    };
    let mut pages = state.store.distinct_error_pages(except).await?;
    // The global page counts too, unless it is the one being replaced.
    if !matches!(of, PageOf::Global) {
        pages.extend(state.store.error_page().await?);
    }
    if pages.iter().any(|p| p == page) {
        return Ok(());
    }
    pages.sort_unstable();
    pages.dedup();
    let total: usize = pages.iter().map(String::len).sum::<usize>() + page.len();
    if total > MAX_ERROR_PAGES_TOTAL {
        return Err(ApiError::bad_request(format!(
            "error_page: the distinct custom error pages would take {total} bytes of every \
             Gateway's configuration, over the {MAX_ERROR_PAGES_TOTAL}-byte budget; give several \
             tunnels the same page (identical pages are sent once) or set the global page instead"
        )));
    }
    Ok(())
}

/// Sets (or with `None` removes) the global error page (admins).
pub async fn set_global(
    state: &AppState,
    admin: &UserRow,
    page: Option<String>,
) -> Result<(), ApiError> {
    require_admin(admin, "change settings")?;
    let page = check(page)?;
    match &page {
        Some(html) => {
            check_budget(state, PageOf::Global, html).await?;
            state.store.set_setting(ERROR_PAGE, html).await?;
        }
        None => state.store.clear_setting(ERROR_PAGE).await?,
    }
    state.hub.changed();
    let detail = json!({ "error_page_bytes": page.as_ref().map(String::len) });
    audit(
        state,
        Some(admin),
        "settings.update",
        "settings".into(),
        detail,
    )
    .await;
    Ok(())
}
