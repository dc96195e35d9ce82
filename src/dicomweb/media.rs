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
