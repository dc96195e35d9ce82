//! Media types as real clients send them: quoted or unquoted parameters (even values such
//! as `type=application/dicom` that RFC 9110 would want quoted), any letter case.

/// A parsed media type: lower-case `type/subtype` and its parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    pub essence: String,
    pub params: Vec<(String, String)>,
}

impl MediaType {
    pub fn parse(raw: &str) -> Option<MediaType> {
        let mut pieces = split_outside_quotes(raw, ';').into_iter();
        let essence = pieces.next()?.trim().to_ascii_lowercase();
        let (ty, sub) = essence.split_once('/')?;
        if ty.is_empty() || sub.is_empty() || essence.contains(char::is_whitespace) {
            return None;
        }
        let mut params = Vec::new();
        for piece in pieces {
            let piece = piece.trim();
            if piece.is_empty() {
                continue;
            }
            let (k, v) = piece.split_once('=')?;
            params.push((k.trim().to_ascii_lowercase(), unquote(v.trim())));
        }
        Some(MediaType { essence, params })
    }

    /// A parameter's value (names are case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Split on `sep` where it is not inside a quoted string.
pub fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => v.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_clients_send() {
        let m = MediaType::parse("Multipart/Related; type=\"application/dicom\"; boundary=\"a;b\"")
            .unwrap();
        assert_eq!(m.essence, "multipart/related");
        assert_eq!(m.param("TYPE"), Some("application/dicom"));
        assert_eq!(m.param("boundary"), Some("a;b"));
        let m =
            MediaType::parse("multipart/related; type=application/dicom; boundary=xyz").unwrap();
        assert_eq!(m.param("type"), Some("application/dicom"));
        assert_eq!(m.param("boundary"), Some("xyz"));
        assert_eq!(
            MediaType::parse("application/dicom").unwrap().params,
            vec![]
        );
        assert!(MediaType::parse("nonsense").is_none());
        assert!(MediaType::parse("a/b; novalue").is_none());
        assert_eq!(
            MediaType::parse("a/b; q=\"x\\\"y\"").unwrap().param("q"),
            Some("x\"y")
        );
    }
}

/// One entry of an `Accept` header.
#[derive(Debug, Clone, PartialEq)]
pub struct Acceptable {
    pub media: MediaType,
    pub q: f32,
}

/// Parse an `Accept` header (absent: `*/*`), most preferred first. Entries that do not
/// parse are skipped; `q=0` entries are dropped.
pub fn parse_accept(header: Option<&str>) -> Vec<Acceptable> {
    let raw = header.unwrap_or("*/*");
    let mut out: Vec<Acceptable> = split_outside_quotes(raw, ',')
        .into_iter()
        .filter_map(|item| MediaType::parse(item.trim()))
        .map(|media| {
            let q = media
                .param("q")
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            Acceptable { media, q }
        })
        .filter(|a| a.q > 0.0)
        .collect();
    out.sort_by(|a, b| b.q.partial_cmp(&a.q).unwrap_or(std::cmp::Ordering::Equal));
    out
}

impl Acceptable {
    /// Does this entry accept the media type `essence` (`*/*` and `type/*` included)?
    pub fn covers(&self, essence: &str) -> bool {
        let e = self.media.essence.as_str();
        e == essence
            || e == "*/*"
            || (e.ends_with("/*") && essence.split('/').next() == e.split('/').next())
    }
}

/// Does the `Accept` header allow one of the given media types?
pub fn accepts_any(header: Option<&str>, offered: &[&str]) -> bool {
    let list = parse_accept(header);
    list.is_empty() && header.is_some_and(|h| h.trim().is_empty())
        || list.iter().any(|a| offered.iter().any(|o| a.covers(o)))
}

#[cfg(test)]
mod accept_tests {
    use super::*;

    #[test]
    fn accept_lists() {
        let l = parse_accept(Some(
            "application/json;q=0.5, application/dicom+json, */*;q=0.1",
        ));
        assert_eq!(l[0].media.essence, "application/dicom+json");
        assert_eq!(l[2].media.essence, "*/*");
        assert!(accepts_any(None, &["application/dicom+json"]));
        assert!(accepts_any(
            Some("application/*"),
            &["application/dicom+json"]
        ));
        assert!(!accepts_any(
            Some("application/dicom+xml"),
            &["application/dicom+json", "application/json"]
        ));
        assert!(!accepts_any(
            Some("application/json;q=0"),
            &["application/json"]
        ));
        assert!(accepts_any(
            Some("multipart/related; type=\"application/dicom\""),
            &["multipart/related"]
        ));
    }
}
