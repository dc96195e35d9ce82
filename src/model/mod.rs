//! Domain types, parsed once where data enters and trusted everywhere inside.
//!
//! Owns no I/O. Everything here is pure and unit-tested beside its definition.

pub mod query;
mod uid;

pub use uid::{Uid, UidError};

/// Hex SHA-256 digest of a stored object.
pub type Sha256 = [u8; 32];
