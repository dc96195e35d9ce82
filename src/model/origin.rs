//! Where an instance came from: the entry point, who sent it, from which address. Carried
//! by the ingest path into the index (the audit trail's store event) and the metrics.

use std::fmt;

/// Which entry point an instance came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OriginKind {
    Stow,
    CStore,
    Upload,
    Import,
}

impl OriginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OriginKind::Stow => "stow",
            OriginKind::CStore => "c-store",
            OriginKind::Upload => "upload",
            OriginKind::Import => "import",
        }
    }
}

impl fmt::Display for OriginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry point, who (AE title, principal or file) and the peer's address.
#[derive(Debug, Clone)]
pub struct Origin {
    pub kind: OriginKind,
    pub who: String,
    pub address: Option<String>,
}

impl Origin {
    pub fn new(kind: OriginKind, who: impl Into<String>, address: Option<String>) -> Self {
        Origin {
            kind,
            who: who.into(),
            address,
        }
    }
}
