//! DIMSE statuses (PS3.7 Annex C, and the service-specific ones of PS3.4), by name; and
//! the one mapping from ingest outcomes to C-STORE statuses. No other DIMSE file writes a
//! status as a number.

use std::fmt;

use crate::ingest::{Outcome, Reason};

/// A status of a DIMSE response.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    pub const SUCCESS: Status = Status(0x0000);
    /// C-FIND, C-MOVE, C-GET: a match or sub-operation follows.
    pub const PENDING: Status = Status(0xFF00);
    /// The operation was cancelled (C-CANCEL).
    pub const CANCEL: Status = Status(0xFE00);
    /// C-STORE: another copy of the instance is stored and was kept (reported as a
    /// coercion of data elements). C-MOVE, C-GET: sub-operations complete, one or more
    /// failed.
    pub const WARNING: Status = Status(0xB000);
    /// N-CREATE, N-SET: an attribute's value is not allowed (MPPS: a status out of turn).
    pub const INVALID_ATTRIBUTE_VALUE: Status = Status(0x0106);
    pub const PROCESSING_FAILURE: Status = Status(0x0110);
    /// N-CREATE: an instance with this SOP Instance UID exists.
    pub const DUPLICATE_SOP_INSTANCE: Status = Status(0x0111);
    pub const NO_SUCH_OBJECT_INSTANCE: Status = Status(0x0112);
    pub const NO_SUCH_SOP_CLASS: Status = Status(0x0118);
    pub const CLASS_INSTANCE_CONFLICT: Status = Status(0x0119);
    pub const MISSING_ATTRIBUTE: Status = Status(0x0120);
    pub const MISSING_ATTRIBUTE_VALUE: Status = Status(0x0121);
    pub const SOP_CLASS_NOT_SUPPORTED: Status = Status(0x0122);
    pub const NO_SUCH_ACTION: Status = Status(0x0123);
    /// An N-EVENT-REPORT of an event type the SOP class does not have.
    pub const NO_SUCH_EVENT_TYPE: Status = Status(0x0113);
    pub const UNRECOGNIZED_OPERATION: Status = Status(0x0211);
    /// Refused: out of resources.
    pub const OUT_OF_RESOURCES: Status = Status(0xA700);
    /// C-MOVE, C-GET: out of resources, unable to calculate the number of matches.
    pub const OUT_OF_RESOURCES_MATCHES: Status = Status(0xA701);
    /// C-MOVE, C-GET: out of resources, unable to perform the sub-operations.
    pub const OUT_OF_RESOURCES_SUB_OPERATIONS: Status = Status(0xA702);
    /// C-MOVE: the move destination is unknown.
    pub const MOVE_DESTINATION_UNKNOWN: Status = Status(0xA801);
    /// The data set (C-STORE) or identifier (C-FIND) does not match the SOP class.
    pub const DOES_NOT_MATCH_SOP_CLASS: Status = Status(0xA900);
    pub const CANNOT_UNDERSTAND: Status = Status(0xC000);
    /// C-STORE: another version of this SOP Instance is stored (and kept): an error of the
    /// "cannot understand" family, 0xC111 echoing DIMSE's 0x0111 Duplicate SOP Instance.
    pub const CONFLICTING_DUPLICATE: Status = Status(0xC111);

    /// Success: the operation went through.
    pub fn is_success(self) -> bool {
        self == Status::SUCCESS
    }

    /// A warning (0x0001, 0xBxxx, 0x0107, 0x0116).
    pub fn is_warning(self) -> bool {
        self.0 & 0xF000 == 0xB000 || matches!(self.0, 0x0001 | 0x0107 | 0x0116)
    }

    /// The status's class, for metrics: success, warning, pending, cancel or failure.
    pub fn class(self) -> &'static str {
        if self.is_success() {
            "success"
        } else if self.is_warning() {
            "warning"
        } else if self.is_pending() {
            "pending"
        } else if self == Status::CANCEL {
            "cancel"
        } else {
            "failure"
        }
    }

    /// Pending (0xFF00, 0xFF01).
    pub fn is_pending(self) -> bool {
        self.0 & 0xFF00 == 0xFF00
    }

    /// The C-STORE-RSP status of an ingest outcome: the one mapping for C-STORE.
    pub fn of_store(outcome: &Outcome) -> Status {
        match outcome {
            Outcome::Stored(_) => Status::SUCCESS,
            Outcome::AlreadyStored(a) if a.kept_original => Status::WARNING,
            Outcome::AlreadyStored(_) => Status::SUCCESS,
            Outcome::Rejected(r) => match r.reason {
                Reason::CannotUnderstand
                | Reason::MissingAttribute
                | Reason::InvalidUid
                | Reason::UnsupportedTransferSyntax
                | Reason::Truncated
                | Reason::SizeMismatch
                | Reason::ChecksumMismatch => Status::CANNOT_UNDERSTAND,
                Reason::SopClassNotSupported => Status::SOP_CLASS_NOT_SUPPORTED,
                Reason::DataSetMismatch | Reason::StudyUidMismatch => {
                    Status::DOES_NOT_MATCH_SOP_CLASS
                }
                Reason::ConflictingDuplicate => Status::CONFLICTING_DUPLICATE,
                Reason::TooLarge | Reason::OutOfResources => Status::OUT_OF_RESOURCES,
                Reason::ProcessingFailure => Status::PROCESSING_FAILURE,
            },
        }
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:04X}", self.0)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:04X}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert!(Status::WARNING.is_warning() && !Status::SUCCESS.is_warning());
        assert!(Status::PENDING.is_pending() && !Status::CANCEL.is_pending());
        assert_eq!(format!("{}", Status::CONFLICTING_DUPLICATE), "0xC111");
    }
}
