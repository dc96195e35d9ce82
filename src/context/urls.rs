//! Absolute URLs for responses (RetrieveURL, BulkDataURI): the configured public base URL,
//! else what the request says about how the client reached us (`Forwarded`,
//! `X-Forwarded-Proto`/`-Host`, `Host`).

use axum::http::HeaderMap;

/// The scheme://host[:port] prefix clients should use; `scheme` is the listener's, for
/// requests that do not say through a proxy's headers.
pub(super) fn base_url(configured: Option<&str>, scheme: &str, headers: &HeaderMap) -> String {
    if let Some(base) = configured {
        return base.trim_end_matches('/').to_owned();
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut proto = None;
    let mut host = None;
    if let Some(fwd) = header("forwarded") {
        // Only the first (client-side) element matters.
        let first = fwd.split(',').next().unwrap_or("");
        for pair in first.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                let v = v.trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "proto" => proto = Some(v.to_owned()),
                    "host" => host = Some(v.to_owned()),
                    _ => {}
                }
            }
        }
    }
    let first = |v: &str| v.split(',').next().unwrap_or("").trim().to_owned();
    let proto = proto
        .or_else(|| header("x-forwarded-proto").map(first))
        .filter(|p| p == "http" || p == "https")
        .unwrap_or_else(|| scheme.to_owned());
    let host = host
        .or_else(|| header("x-forwarded-host").map(first))
        .or_else(|| header("host").map(str::to_owned))
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'"')
        })
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{proto}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn picks_the_right_source() {
        assert_eq!(
            base_url(
                Some("https://pacs.example/"),
                "http",
                &headers(&[("host", "x")])
            ),
            "https://pacs.example"
        );
        assert_eq!(
            base_url(None, "http", &headers(&[("host", "10.0.0.1:8080")])),
            "http://10.0.0.1:8080"
        );
        assert_eq!(
            base_url(None, "https", &headers(&[("host", "10.0.0.1:8443")])),
            "https://10.0.0.1:8443"
        );
        assert_eq!(
            base_url(
                None,
                "http",
                &headers(&[
                    ("host", "a"),
                    (
                        "forwarded",
                        "for=1.2.3.4;proto=https;host=\"pacs.org\", for=5"
                    )
                ])
            ),
            "https://pacs.org"
        );
        assert_eq!(
            base_url(
                None,
                "http",
                &headers(&[
                    ("host", "a"),
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-host", "b.org, c")
                ])
            ),
            "https://b.org"
        );
        assert_eq!(
            base_url(None, "http", &headers(&[("host", "evil/\"x")])),
            "http://localhost"
        );
    }
}
