//! DICOM dates, times and date-times (PS3.5 §6.2: DA, TM, DT) and the ranges of queries
//! (PS3.4 C.2.2.2.5). Values are kept in their DICOM text form, which orders the same way
//! as the instants they name, so the index compares them as text.

use std::fmt;

/// Which of the three temporal VRs a value has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemporalKind {
    /// DA: `YYYYMMDD`.
    Date,
    /// TM: `HH[MM[SS[.F{1,6}]]]`.
    Time,
    /// DT: `YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]`.
    DateTime,
}

impl TemporalKind {
    /// The value representation's name.
    pub fn vr(self) -> &'static str {
        match self {
            TemporalKind::Date => "DA",
            TemporalKind::Time => "TM",
            TemporalKind::DateTime => "DT",
        }
    }
}

/// A checked DA, TM or DT value.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Temporal {
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {} value", kind.vr())]
pub struct TemporalError {
    pub kind: TemporalKind,
    pub value: String,
}

/// A calendar date (DA), e.g. a birth date.
pub type DicomDate = Temporal;

impl Temporal {
    pub fn parse(kind: TemporalKind, raw: &str) -> Result<Self, TemporalError> {
        let s = raw.trim_matches([' ', '\0']);
        let digits_or = |extra: &[u8]| s.bytes().all(|b| b.is_ascii_digit() || extra.contains(&b));
        let ok = match kind {
            TemporalKind::Date => s.len() == 8 && digits_or(b""),
            TemporalKind::Time => !s.is_empty() && s.len() <= 16 && digits_or(b"."),
            TemporalKind::DateTime => !s.is_empty() && s.len() <= 26 && digits_or(b"+-."),
        };
        if ok {
            Ok(Temporal { text: s.to_owned() })
        } else {
            Err(TemporalError {
                kind,
                value: raw.to_owned(),
            })
        }
    }

    /// A date (DA).
    pub fn date(raw: &str) -> Result<DicomDate, TemporalError> {
        Temporal::parse(TemporalKind::Date, raw)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Temporal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Temporal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Temporal({})", self.text)
    }
}

/// A range query `from-to` with either end open (not both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemporalRange {
    pub kind: TemporalKind,
    pub from: Option<Temporal>,
    pub to: Option<Temporal>,
}

impl TemporalRange {
    /// Parse a query value: a single value (`None`: not a range) or a range.
    pub fn parse(kind: TemporalKind, value: &str) -> Result<Option<Self>, String> {
        // DT values may carry a timezone with '-', so split on the first '-' that is not one.
        let split = match kind {
            TemporalKind::DateTime => value.find('-').filter(|&i| i == 0 || i >= 4),
            _ => value.find('-'),
        };
        let Some(i) = split else { return Ok(None) };
        let (from, to) = (&value[..i], &value[i + 1..]);
        if from.is_empty() && to.is_empty() {
            return Err("a range needs at least one end".into());
        }
        let end = |s: &str| {
            (!s.is_empty())
                .then(|| Temporal::parse(kind, s).map_err(|e| e.to_string()))
                .transpose()
        };
        Ok(Some(TemporalRange {
            kind,
            from: end(from)?,
            to: end(to)?,
        }))
    }

    /// The inclusive lower bound, as text.
    pub fn lower(&self) -> Option<&str> {
        self.from.as_ref().map(Temporal::as_str)
    }

    /// The inclusive upper bound, as text: for times and date-times it covers the whole of
    /// the bound's last unit (`-1000` includes `100059.5`).
    pub fn upper(&self) -> Option<String> {
        self.to.as_ref().map(|t| match self.kind {
            TemporalKind::Date => t.as_str().to_owned(),
            _ => format!("{}\u{10FFFF}", t.as_str()),
        })
    }

    /// Does a stored value fall in the range?
    pub fn contains(&self, value: &str) -> bool {
        !value.is_empty()
            && self.lower().is_none_or(|f| value >= f)
            && self.upper().is_none_or(|t| value <= t.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert!(Temporal::date("20240229").is_ok());
        assert!(Temporal::date("2024").is_err());
        assert!(Temporal::parse(TemporalKind::Time, "0930.5").is_ok());
        assert!(Temporal::parse(TemporalKind::Time, "09:30").is_err());
        assert!(Temporal::parse(TemporalKind::DateTime, "20240101120000+0100").is_ok());
    }

    #[test]
    fn ranges() {
        let r = TemporalRange::parse(TemporalKind::Time, "0900-1000")
            .unwrap()
            .unwrap();
        assert!(r.contains("095959") && r.contains("1000") && r.contains("100059.5"));
        assert!(!r.contains("1001") && !r.contains(""));
        let open = TemporalRange::parse(TemporalKind::Date, "20240101-")
            .unwrap()
            .unwrap();
        assert_eq!((open.lower(), open.upper()), (Some("20240101"), None));
        assert_eq!(
            TemporalRange::parse(TemporalKind::Date, "20240101"),
            Ok(None)
        );
        assert!(TemporalRange::parse(TemporalKind::Date, "-").is_err());
        assert!(TemporalRange::parse(TemporalKind::Date, "2024-").is_err());
        let tz = TemporalRange::parse(TemporalKind::DateTime, "20240101-0500").unwrap();
        assert!(tz.is_some());
    }
}
