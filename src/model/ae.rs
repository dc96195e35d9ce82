//! Application Entity titles (PS3.5 §6.2, VR AE): how DICOM peers name themselves.
//!
//! 1–16 characters of the default repertoire without backslash or control characters;
//! leading and trailing spaces are not significant (and are trimmed here), a title of only
//! spaces is no title.

use std::fmt;

/// A valid AE title, trimmed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AeTitle(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AeTitleError {
    #[error("AE title is empty")]
    Empty,
    #[error("AE title {0:?} is longer than 16 characters")]
    TooLong(String),
    #[error("AE title {0:?} holds a backslash or a character outside printable ASCII")]
    BadChar(String),
}

impl AeTitle {
    pub fn parse(raw: &str) -> Result<Self, AeTitleError> {
        let t = raw.trim_matches([' ', '\0']);
        if t.is_empty() {
            return Err(AeTitleError::Empty);
        }
        if t.len() > 16 {
            return Err(AeTitleError::TooLong(t.to_owned()));
        }
        if t.chars().any(|c| c == '\\' || !(' '..='~').contains(&c)) {
            return Err(AeTitleError::BadChar(t.to_owned()));
        }
        Ok(AeTitle(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AeTitle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AeTitle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AeTitle({})", self.0)
    }
}

impl TryFrom<String> for AeTitle {
    type Error = AeTitleError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AeTitle::parse(&s)
    }
}

impl From<AeTitle> for String {
    fn from(ae: AeTitle) -> String {
        ae.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles() {
        assert_eq!(AeTitle::parse(" STORESCU  ").unwrap().as_str(), "STORESCU");
        assert_eq!(AeTitle::parse("A B").unwrap().as_str(), "A B");
        assert_eq!(AeTitle::parse("    "), Err(AeTitleError::Empty));
        assert!(matches!(
            AeTitle::parse(&"A".repeat(17)),
            Err(AeTitleError::TooLong(_))
        ));
        assert!(matches!(
            AeTitle::parse("A\\B"),
            Err(AeTitleError::BadChar(_))
        ));
        assert!(matches!(
            AeTitle::parse("A\nB"),
            Err(AeTitleError::BadChar(_))
        ));
        assert_eq!(AeTitle::parse("PACSLITE"), AeTitle::parse("PACSLITE\0"));
    }
}
