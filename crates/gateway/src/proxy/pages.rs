//! The few responses the proxy writes itself: small, self-contained HTML pages that name the
//! problem without leaking upstream details (those go to the log).

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::custom_pages::fill;

/// Host names in pages are cut to this many characters so a hostile Host header cannot make a
/// large page.
const MAX_HOST_IN_PAGE: usize = 255;

pub(crate) fn not_found(host: Option<&str>) -> Response<Full<Bytes>> {
    let detail = match host {
        Some(host) => {
            let host: String = host.chars().take(MAX_HOST_IN_PAGE).collect();
            format!(
                "The host <code>{}</code> is not served by this gateway.",
                escape(&host)
            )
        }
        None => "The request named no host, so this gateway cannot route it.".to_owned(),
    };
    page(StatusCode::NOT_FOUND, &detail)
}

pub(crate) fn bad_gateway() -> Response<Full<Bytes>> {
    page(
        StatusCode::BAD_GATEWAY,
        "The service behind this host could not be reached.",
    )
}

/// The client stopped sending its request body; `Connection: close` because the rest of that
/// body will never be read.
pub(crate) fn request_timeout() -> Response<Full<Bytes>> {
    let mut response = page(
        StatusCode::REQUEST_TIMEOUT,
        "The request body stopped arriving, so the request was cut.",
    );
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

pub(crate) fn bad_request() -> Response<Full<Bytes>> {
    page(
        StatusCode::BAD_REQUEST,
        "The request could not be understood.",
    )
}

/// The tunnel asks for a user name and password (its Basic authentication).
pub(crate) fn basic_auth_required() -> Response<Full<Bytes>> {
    let mut response = page(
        StatusCode::UNAUTHORIZED,
        "This site asks for a user name and a password.",
    );
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"kakuremichi\", charset=\"UTF-8\""),
    );
    response
}

pub(crate) fn method_not_allowed() -> Response<Full<Bytes>> {
    page(
        StatusCode::METHOD_NOT_ALLOWED,
        "This gateway is not a forward proxy.",
    )
}

/// What a page the Gateway wrote says, kept with the response so that the request's id can be
/// written into it once known ([`stamp`]).
#[derive(Debug, Clone)]
pub(crate) struct PageDetail(String);

/// The header that carries a request's id on the Gateway's own pages.
pub(crate) const REQUEST_ID: &str = "x-request-id";

fn render(status: StatusCode, detail: &str, request_id: Option<&str>) -> Bytes {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let id = request_id
        .map(|id| format!("<p>Request id: <code>{}</code></p>", escape(id)))
        .unwrap_or_default();
    Bytes::from(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1><p>{detail}</p>{id}<hr><p>kakuremichi gateway</p></body></html>\n"
    ))
}

/// Writes `request_id` into a page the Gateway wrote (and its `X-Request-Id` header), or puts
/// `custom` (a custom error page, its placeholders filled) in its place; other responses get
/// only the header. Status and headers stay those of the Gateway's page.
pub(crate) fn stamp<B>(
    response: &mut Response<B>,
    request_id: &str,
    custom: Option<&str>,
    body: impl FnOnce(Bytes) -> B,
) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    if let Some(PageDetail(detail)) = response.extensions_mut().remove::<PageDetail>() {
        let status = response.status();
        let html = match custom {
            Some(template) => Bytes::from(fill(template, status.as_u16(), request_id)),
            None => render(status, &detail, Some(request_id)),
        };
        *response.body_mut() = body(html);
    }
}

/// A page with `detail` (HTML: escape what comes from outside) under the status as title.
pub(crate) fn page(status: StatusCode, detail: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(render(status, detail, None)));
    response
        .extensions_mut()
        .insert(PageDetail(detail.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn host_is_escaped() {
        assert_eq!(
            escape("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
        let response = not_found(Some("<script>"));
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            html.contains("<code>&lt;script&gt;</code> is not served"),
            "{html}"
        );
    }
}
