//! Domain types, parsed once where data enters and trusted everywhere inside: UIDs, AE
//! titles, transfer syntaxes, dates and ranges, SHA-256 digests, object keys, order ids,
//! roles, an instance's origin, the query model, and the clock.
//!
//! The bottom of the house: owns no I/O and imports nothing of ours. Everything here is
//! pure and unit-tested beside its definition.

mod ae;
pub mod clock;
mod date;
mod key;
mod order;
mod origin;
pub mod query;
mod role;
mod sha256;
mod ts;
mod uid;

pub use ae::{AeTitle, AeTitleError};
pub use date::{DicomDate, Temporal, TemporalError, TemporalKind, TemporalRange};
pub use key::{KeyError, ObjectKey, UPLOADS_PREFIX};
pub use order::{OrderId, OrderIdError, OrderStatus};
pub use origin::{Origin, OriginKind};
pub use role::Role;
pub use sha256::{Sha256, Sha256Error};
pub use ts::{TransferSyntax, TransferSyntaxError};
pub use uid::{Uid, UidError};
