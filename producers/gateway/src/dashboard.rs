//! `GET /`: a one-page dashboard, embedded in the binary, with a strong `ETag` (a hash of
//! its bytes) so browsers and proxies revalidate it cheaply, and a Content-Security-Policy
//! that lets the page run its own inline script and style (by hash) and talk to this
//! origin only: an injected script or a third-party resource is refused by the browser.

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

/// The page's policy: only its own inline `<script>` and `<style>`, named by their SHA-256,
/// requests to this origin (commands, the live feed), the `data:` favicon, nothing else.
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
         img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        source_hash(inline(HTML, "script")),
        source_hash(inline(HTML, "style")),
    )
});

/// The text of the page's one `<tag>` element.
fn inline<'a>(html: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = html.find(&open).map_or(0, |i| i + open.len());
    let end = html[start..].find(&close).map_or(start, |i| start + i);
    &html[start..end]
}

/// A CSP hash source: `sha256-` and the base64 of the SHA-256 of the element's text.
fn source_hash(text: &str) -> String {
    use base64::Engine;
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

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
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_str(&CSP).expect("the policy is a valid header"),
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
    fn the_policy_names_the_page_s_one_script_and_one_style() {
        assert_eq!(HTML.matches("<script>").count(), 1, "one inline script");
        assert_eq!(HTML.matches("<style>").count(), 1, "one inline style");
        assert!(!HTML.contains("<script src"), "no external script");
        // Inline handlers and style attributes would need 'unsafe-inline'.
        assert!(!HTML.contains(" onclick=") && !HTML.contains(" style="));
        let script = inline(HTML, "script");
        assert!(script.contains("\"use strict\"") && !script.contains("</script>"));
        assert!(CSP.contains(&format!("script-src '{}'", source_hash(script))));
        assert!(CSP.contains("connect-src 'self'") && !CSP.contains("unsafe"));
        // The SHA-256 of nothing, as a browser writes it in a policy.
        assert_eq!(
            source_hash(""),
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn etag_is_strong_and_quoted() {
        assert!(ETAG.starts_with('"') && ETAG.ends_with('"') && !ETAG.starts_with("W/"));
        assert_eq!(ETAG.len(), 34);
    }
}
