//! What a caller may do: the roles of the configuration, of API keys and of tokens.

use serde::{Deserialize, Serialize};

/// A caller's privilege; ordered, so that a higher role may do what a lower one may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Store and upload, plus read.
    Uploader,
    /// Everything.
    Admin,
}

impl Role {
    /// A role by its name or a common synonym (`read`, `writer`, `administrator`…).
    pub fn parse(s: &str) -> Option<Role> {
        match s.trim().to_ascii_lowercase().as_str() {
            "viewer" | "read" | "reader" => Some(Role::Viewer),
            "uploader" | "upload" | "writer" => Some(Role::Uploader),
            "admin" | "administrator" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Uploader => "uploader",
            Role::Admin => "admin",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_order() {
        assert_eq!(Role::parse(" Writer "), Some(Role::Uploader));
        assert_eq!(Role::parse("nobody"), None);
        assert!(Role::Admin > Role::Uploader && Role::Uploader > Role::Viewer);
        assert_eq!(Role::parse(Role::Viewer.as_str()), Some(Role::Viewer));
    }
}
