//! `GET /`: a one-page dashboard, embedded in the binary, with a strong `ETag` (a hash of
//! its bytes) so browsers and proxies revalidate it cheaply.

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

pub const HTML: &str = include_str!("dashboard.html");

/// Short enough for a change to show within minutes, long enough to spare the gateway.
const CACHE_CONTROL: &str = "public, max-age=300";

/// `"<first 128 bits of the SHA-256 of the page>"`: changes with every edit of the page.
pub static ETAG: LazyLock<String> = LazyLock::new(|| {
    let digest = Sha256::digest(HTML.as_bytes());
    format!("\"{}\"", hex::encode(&digest[..16]))
});

pub async fn page(headers: HeaderMap) -> Response {
    let etag = HeaderValue::from_str(&ETAG).expect("hex etag is a valid header");
    let cache = HeaderValue::from_static(CACHE_CONTROL);
    if not_modified(&headers, &ETAG) {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache)],
        )
            .into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        HTML,
    )
        .into_response()
}

/// `If-None-Match` holds our tag (or `*`). RFC 9110 §13.1.2 compares weakly here, so
/// `W/"x"` matches `"x"`.
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_forms() {
        let etag = "\"abc\"";
        let mut headers = HeaderMap::new();
        assert!(!not_modified(&headers, etag));
        for (value, matches) in [
            ("\"abc\"", true),
            ("W/\"abc\"", true),
            ("\"x\", \"abc\"", true),
            ("*", true),
            ("\"abd\"", false),
            ("abc", false),
        ] {
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
            assert_eq!(not_modified(&headers, etag), matches, "{value}");
        }
    }

    #[test]
    fn etag_is_strong_and_quoted() {
        assert!(ETAG.starts_with('"') && ETAG.ends_with('"') && !ETAG.starts_with("W/"));
        assert_eq!(ETAG.len(), 34);
    }
}
