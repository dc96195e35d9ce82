//! DICOM Unique Identifiers (PS3.5 §9), parsed once at the boundary.
//!
//! A [`Uid`] is 1–64 characters of digits and dots, with no empty component and no
//! trailing NUL or space padding. Leading zeros in components are tolerated (real
//! modalities emit them) but anything that could escape a storage key or a SQL string
//! — letters, `/`, `..`, whitespace — is refused.

use std::fmt;

/// A syntactically valid DICOM UID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(String);

/// Why a string is not a UID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    #[error("UID is empty")]
    Empty,
    #[error("UID is {0} characters long; at most 64 are allowed")]
    TooLong(usize),
    #[error("UID contains {0:?}; only digits and dots are allowed")]
    BadChar(char),
    #[error("UID has an empty component")]
    EmptyComponent,
}

impl Uid {
    /// Parse a UID, trimming the NUL/space padding DICOM values may carry.
    pub fn parse(raw: &str) -> Result<Self, UidError> {
        let s = raw.trim_end_matches(['\0', ' ']).trim_start_matches(' ');
        if s.is_empty() {
            return Err(UidError::Empty);
        }
        if s.len() > 64 {
            return Err(UidError::TooLong(s.chars().count()));
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_digit() || *c == '.')) {
            return Err(UidError::BadChar(c));
        }
        if s.split('.').any(str::is_empty) {
            return Err(UidError::EmptyComponent);
        }
        Ok(Uid(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A new UID under the `2.25` root (PS3.5 B.2): a random UUID as a decimal integer.
    pub fn generate() -> Self {
        Uid(format!("2.25.{}", uuid::Uuid::new_v4().as_u128()))
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uid({})", self.0)
    }
}

impl AsRef<str> for Uid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Uid {
    type Error = UidError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Uid::parse(&s)
    }
}

impl serde::Serialize for Uid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl std::str::FromStr for Uid {
    type Err = UidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uid::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_and_trims_padding() {
        assert_eq!(
            Uid::parse("1.2.840.10008.1.2\0").unwrap().as_str(),
            "1.2.840.10008.1.2"
        );
        assert_eq!(Uid::parse("1.2.3 ").unwrap().as_str(), "1.2.3");
        assert!(Uid::parse("1.2.03").is_ok(), "leading zeros are tolerated");
        assert!(Uid::parse(&"1".repeat(64)).is_ok());
    }

    #[test]
    fn refuses_what_could_escape_a_key() {
        assert_eq!(Uid::parse(""), Err(UidError::Empty));
        assert_eq!(Uid::parse("\0"), Err(UidError::Empty));
        assert!(matches!(Uid::parse("../x"), Err(UidError::BadChar('/'))));
        assert!(matches!(Uid::parse("1.2/3"), Err(UidError::BadChar('/'))));
        assert!(matches!(Uid::parse("1.2.abc"), Err(UidError::BadChar('a'))));
        assert!(matches!(Uid::parse("1..2"), Err(UidError::EmptyComponent)));
        assert!(matches!(Uid::parse(".1.2"), Err(UidError::EmptyComponent)));
        assert!(matches!(Uid::parse("1.2."), Err(UidError::EmptyComponent)));
        assert!(matches!(
            Uid::parse(&"1".repeat(65)),
            Err(UidError::TooLong(65))
        ));
        assert!(matches!(Uid::parse("1.2 3"), Err(UidError::BadChar(' '))));
    }
}
