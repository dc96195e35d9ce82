//! What ingest answers: an [`Outcome`] — stored, already stored, or rejected with a
//! [`Reason`] — and the one place outcomes are counted (`pacs_ingest_total`, bytes and
//! latency by entry point). Every outcome an entry point gets back from `Ingest` has been
//! counted exactly once, whichever step decided it: spooling, the header, the store, the
//! index, or the entry point's own refusal through [`super::Ingest::refuse`].

use std::fmt;
use std::time::Duration;

use crate::dicom::{HeaderError, Problem};
use crate::model::{OriginKind, Sha256, Uid};
use crate::storage::StorageError;

/// Why an object was refused. Entry points map these to STOW failure reasons, DIMSE
/// statuses and REST error codes in one place each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not parseable as DICOM (garbage, truncated, bad encoding).
    CannotUnderstand,
    /// A required attribute (Study/Series/SOP Instance UID, SOP Class UID) is missing.
    MissingAttribute,
    /// A UID is not a valid UID (letters, too long, empty components…).
    InvalidUid,
    /// The transfer syntax is not one this server knows.
    UnsupportedTransferSyntax,
    /// The SOP class is not a storage SOP class.
    SopClassNotSupported,
    /// The data set contradicts its file meta group or the request (UIDs that do not match).
    DataSetMismatch,
    /// The StudyInstanceUID differs from the one the request named.
    StudyUidMismatch,
    /// Another object with this SOP Instance UID and different bytes is stored.
    ConflictingDuplicate,
    /// The object is larger than the configured limit.
    TooLarge,
    /// The sender's byte stream broke off before the object was complete.
    Truncated,
    /// The bytes are not as long as the sender declared.
    SizeMismatch,
    /// The bytes do not hash to the SHA-256 the sender declared.
    ChecksumMismatch,
    /// No room to spool or store it.
    OutOfResources,
    /// The server failed while storing (object store or index error); nothing was committed.
    ProcessingFailure,
}

/// A refusal with the reason, a human-readable detail and whatever UIDs were readable.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
    pub sop_class_uid: Option<Uid>,
    pub sop_instance_uid: Option<Uid>,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
            sop_class_uid: None,
            sop_instance_uid: None,
        }
    }

    /// The same refusal, naming the instance it is about.
    pub fn about(self, sop_class: &Uid, sop_instance: &Uid) -> Self {
        Rejection {
            sop_class_uid: Some(sop_class.clone()),
            sop_instance_uid: Some(sop_instance.clone()),
            ..self
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl From<HeaderError> for Rejection {
    fn from(e: HeaderError) -> Self {
        let reason = match e.problem {
            Problem::Malformed => Reason::CannotUnderstand,
            Problem::MissingAttribute => Reason::MissingAttribute,
            Problem::InvalidUid => Reason::InvalidUid,
            Problem::UnsupportedTransferSyntax => Reason::UnsupportedTransferSyntax,
            Problem::NotStorable => Reason::SopClassNotSupported,
            Problem::IodMismatch => Reason::DataSetMismatch,
            Problem::Unreadable => Reason::ProcessingFailure,
        };
        Rejection {
            reason,
            detail: e.detail,
            sop_class_uid: e.sop_class,
            sop_instance_uid: e.sop_instance,
        }
    }
}

impl From<StorageError> for Rejection {
    /// A failure to spool or put an object: too large, out of space, or the store failing
    /// (logged here; the sender is told only that the server failed).
    fn from(e: StorageError) -> Self {
        match &e {
            StorageError::TooLarge { limit } => Rejection::new(
                Reason::TooLarge,
                format!("the object is larger than the limit of {limit} bytes"),
            ),
            StorageError::Io { source, .. } if is_out_of_space(source) => {
                tracing::error!(error = %e, "out of space");
                Rejection::new(Reason::OutOfResources, "the server is out of storage space")
            }
            _ => {
                tracing::error!(error = %e, "storage failure during ingest");
                Rejection::new(
                    Reason::ProcessingFailure,
                    "the object store failed while storing the object",
                )
            }
        }
    }
}

fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28) | Some(122)) // ENOSPC, EDQUOT
}

/// A failure of ours: logged with its cause, reported without it.
pub(super) fn failure(detail: String, about: Option<&Accepted>) -> Rejection {
    tracing::error!(%detail, "ingest failure");
    Rejection {
        reason: Reason::ProcessingFailure,
        detail: "the server failed while storing the object".to_owned(),
        sop_class_uid: about.map(|a| a.sop_class_uid.clone()),
        sop_instance_uid: about.map(|a| a.sop_instance_uid.clone()),
    }
}

/// A stored (or already stored) instance.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub study_uid: Uid,
    pub series_uid: Uid,
    pub sop_instance_uid: Uid,
    pub sop_class_uid: Uid,
    /// SHA-256 of the stored bytes.
    pub sha256: Sha256,
    pub size: u64,
    pub stored_at: i64,
    /// Set when the policy kept a different stored copy instead of refusing.
    pub kept_original: bool,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Stored(Accepted),
    AlreadyStored(Accepted),
    Rejected(Rejection),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Stored(_) => "stored",
            Outcome::AlreadyStored(_) => "already_stored",
            Outcome::Rejected(_) => "rejected",
        }
    }
}

/// Count an outcome: the only place ingest metrics are recorded. `took` is the time from
/// the complete object to its outcome, when the object got that far.
pub(super) fn count(entry: OriginKind, outcome: Outcome, took: Option<Duration>) -> Outcome {
    let m = crate::metrics::get();
    let (entry, label) = (entry.as_str(), outcome.label());
    m.ingest_total.with_label_values(&[entry, label]).inc();
    if let Outcome::Stored(a) = &outcome {
        m.ingest_bytes.with_label_values(&[entry]).inc_by(a.size);
    }
    if let Some(took) = took {
        m.ingest_seconds
            .with_label_values(&[entry, label])
            .observe(took.as_secs_f64());
    }
    if let Outcome::Rejected(r) = &outcome {
        tracing::debug!(origin = entry, reason = ?r.reason, detail = %r.detail, "refused");
    }
    outcome
}
