//! The query model shared by QIDO-RS and C-FIND: query levels, attribute keys, and the
//! matching kinds of PS3.4 C.2.2.2 (single value, universal, wildcard, UID list, range).
//!
//! Pure: parsing and in-memory matching. `index/` turns a [`Filter`] into SQL where a
//! column exists and falls back to [`Matcher::matches`] on the stored JSON otherwise.

use std::fmt;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use super::{TemporalKind, TemporalRange, Uid};

/// The level of a query's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    Study,
    Series,
    Instance,
}

/// A query key: a tag path (one tag, or sequence tags then a final tag) and its VR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeKey {
    pub path: Vec<Tag>,
    pub vr: VR,
}

impl AttributeKey {
    /// Parse `PatientName`, `00100010`, or a dotted path such as
    /// `RequestAttributesSequence.RequestedProcedureID` / `00400275.00401001`.
    pub fn parse(raw: &str) -> Option<AttributeKey> {
        let mut path = Vec::new();
        let mut vr = VR::UN;
        for part in raw.split('.') {
            let (tag, part_vr) = lookup(part)?;
            path.push(tag);
            vr = part_vr;
        }
        if path.is_empty()
            || path[..path.len() - 1]
                .iter()
                .any(|t| lookup_vr(*t) != Some(VR::SQ))
        {
            return None;
        }
        Some(AttributeKey { path, vr })
    }

    /// The final tag of the path.
    pub fn tag(&self) -> Tag {
        *self.path.last().expect("non-empty path")
    }

    pub fn is_nested(&self) -> bool {
        self.path.len() > 1
    }
}

impl fmt::Display for AttributeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .path
            .iter()
            .map(|t| format!("{:04X}{:04X}", t.0, t.1))
            .collect();
        f.write_str(&parts.join("."))
    }
}

fn lookup(part: &str) -> Option<(Tag, VR)> {
    if part.len() == 8 && part.bytes().all(|b| b.is_ascii_hexdigit()) {
        let g = u16::from_str_radix(&part[..4], 16).ok()?;
        let e = u16::from_str_radix(&part[4..], 16).ok()?;
        let tag = Tag(g, e);
        // Private and unknown tags are accepted by number, with an unknown VR.
        return Some((tag, lookup_vr(tag).unwrap_or(VR::UN)));
    }
    let entry = StandardDataDictionary.by_name(part)?;
    let vr = match entry.vr {
        VirtualVr::Exact(vr) => vr,
        _ => VR::UN,
    };
    Some((entry.tag(), vr))
}

fn lookup_vr(tag: Tag) -> Option<VR> {
    StandardDataDictionary.by_tag(tag).map(|e| match e.vr {
        VirtualVr::Exact(vr) => vr,
        _ => VR::UN,
    })
}

/// How one query key matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// Empty value: matches everything; the attribute is only returned.
    Universal,
    /// Single value matching.
    Exact(String),
    /// `*` and `?` wildcards.
    Wildcard(String),
    /// A list of UIDs (`\` or `,` separated).
    UidList(Vec<Uid>),
    /// A date, time or date-time range; either end may be open.
    Range(TemporalRange),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct MatcherError {
    pub key: String,
    pub reason: String,
}

impl Matcher {
    /// Parse a query value for an attribute of the given VR.
    pub fn parse(key: &AttributeKey, raw: &str) -> Result<Matcher, MatcherError> {
        let err = |reason: String| MatcherError {
            key: key.to_string(),
            reason,
        };
        let value = raw.trim();
        if value.is_empty() || value == "*" {
            return Ok(Matcher::Universal);
        }
        match key.vr {
            VR::UI => {
                let uids = value
                    .split(['\\', ','])
                    .map(|u| Uid::parse(u).map_err(|e| err(format!("{u:?}: {e}"))))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(if uids.len() == 1 {
                    Matcher::Exact(uids[0].to_string())
                } else {
                    Matcher::UidList(uids)
                })
            }
            VR::DA | VR::TM | VR::DT => parse_temporal(key.vr, value).map_err(err),
            _ if value.contains(['*', '?']) => Ok(Matcher::Wildcard(value.to_owned())),
            _ => Ok(Matcher::Exact(value.to_owned())),
        }
    }

    /// Does one stored value match? (Multi-valued attributes match if any value does.)
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Universal => true,
            Matcher::Exact(v) => v == value,
            Matcher::Wildcard(p) => wildcard_match(p, value),
            Matcher::UidList(list) => list.iter().any(|u| u.as_str() == value),
            Matcher::Range(range) => range.contains(value),
        }
    }
}

fn parse_temporal(vr: VR, value: &str) -> Result<Matcher, String> {
    let kind = match vr {
        VR::DA => TemporalKind::Date,
        VR::TM => TemporalKind::Time,
        _ => TemporalKind::DateTime,
    };
    match TemporalRange::parse(kind, value)? {
        Some(range) => Ok(Matcher::Range(range)),
        None => {
            let single = super::Temporal::parse(kind, value).map_err(|e| e.to_string())?;
            Ok(Matcher::Exact(single.as_str().to_owned()))
        }
    }
}

/// DICOM wildcard matching: `*` any sequence, `?` one character.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    let (mut pi, mut vi, mut star, mut mark) = (0, 0, None, 0);
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A query key with how it matches.
#[derive(Debug, Clone)]
pub struct Filter {
    pub key: AttributeKey,
    pub matcher: Matcher,
}

#[cfg(test)]
impl Filter {
    /// A filter from a key (keyword, tag or path) and a query value, as a request has them.
    pub fn of(key: &str, value: &str) -> Filter {
        let key = AttributeKey::parse(key).unwrap();
        let matcher = Matcher::parse(&key, value).unwrap();
        Filter { key, matcher }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::tags;

    #[test]
    fn keys_by_keyword_hex_and_path() {
        let k = AttributeKey::parse("PatientName").unwrap();
        assert_eq!((k.tag(), k.vr), (tags::PATIENT_NAME, VR::PN));
        assert_eq!(AttributeKey::parse("00100010").unwrap(), k);
        assert_eq!(AttributeKey::parse("0020000d").unwrap().vr, VR::UI);
        let nested = AttributeKey::parse("RequestAttributesSequence.RequestedProcedureID").unwrap();
        assert_eq!(
            nested.path,
            vec![
                tags::REQUEST_ATTRIBUTES_SEQUENCE,
                tags::REQUESTED_PROCEDURE_ID
            ]
        );
        assert_eq!(AttributeKey::parse("00400275.00401001").unwrap(), nested);
        assert!(AttributeKey::parse("NoSuchKeyword").is_none());
        assert!(
            AttributeKey::parse("PatientName.PatientID").is_none(),
            "only sequences nest"
        );
        assert_eq!(AttributeKey::parse("00091001").unwrap().vr, VR::UN);
    }

    #[test]
    fn matchers_by_vr() {
        let uid = AttributeKey::parse("StudyInstanceUID").unwrap();
        assert_eq!(
            Matcher::parse(&uid, "1.2").unwrap(),
            Matcher::Exact("1.2".into())
        );
        assert!(
            matches!(Matcher::parse(&uid, "1.2\\1.3,1.4").unwrap(), Matcher::UidList(l) if l.len() == 3)
        );
        assert!(Matcher::parse(&uid, "1.2,x").is_err());
        let date = AttributeKey::parse("StudyDate").unwrap();
        let Matcher::Range(open_end) = Matcher::parse(&date, "20240101-").unwrap() else {
            panic!("a range")
        };
        assert_eq!(
            (open_end.lower(), open_end.upper()),
            (Some("20240101"), None)
        );
        let Matcher::Range(open_start) = Matcher::parse(&date, "-20241231").unwrap() else {
            panic!("a range")
        };
        assert_eq!(
            (open_start.lower(), open_start.upper()),
            (None, Some("20241231".to_owned()))
        );
        assert!(Matcher::parse(&date, "2024").is_err());
        assert!(Matcher::parse(&date, "-").is_err());
        let name = AttributeKey::parse("PatientName").unwrap();
        assert_eq!(Matcher::parse(&name, "").unwrap(), Matcher::Universal);
        assert_eq!(Matcher::parse(&name, "*").unwrap(), Matcher::Universal);
        assert!(matches!(
            Matcher::parse(&name, "Do?^*").unwrap(),
            Matcher::Wildcard(_)
        ));
        let time = AttributeKey::parse("StudyTime").unwrap();
        let m = Matcher::parse(&time, "0900-1000").unwrap();
        assert!(
            m.matches("095959") && m.matches("1000") && m.matches("100059.5") && !m.matches("1001")
        );
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("Do*", "Doe^John"));
        assert!(wildcard_match("*^Jo?n", "Doe^John"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("Do?", "Doe^John"));
        assert!(wildcard_match("山田*", "山田^太郎"));
        assert!(!wildcard_match("a*b", "acbd"));
    }
}
