//! The one ingest path. C-STORE, STOW-RS, the offline upload API and `import` all hand
//! their bytes here and get an [`Outcome`] back; each entry point maps it to its own
//! protocol in one place.
//!
//! The steps, in order: stream the bytes to a spool file while hashing SHA-256 → parse the
//! header (up to Pixel Data) and locate the frames → validate → check for a stored copy →
//! put the object durably → commit the index row → answer. Object first, index second: a
//! crash in between leaves an object without a row (found by `verify`), never a row
//! without its object. Only `ingest/` decides what is stored.

pub mod frames;
pub(crate) mod header;
pub mod json;
mod nesting;
mod seekbuf;
mod walker;

use std::fmt;
use std::path::Path;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::config::ConflictPolicy;
use crate::index::{Index, IndexError, InsertOutcome, InstanceRecord, StoredInstance};
use crate::model::ObjectKey;
use crate::model::Origin;
use crate::model::Uid;
use crate::storage::{Spool, SpooledFile, StorageError, Store};

pub use header::{fold as fold_name, is_storage_class, open_stored, text as element_text};
pub use header::{parse as parse_header, Parsed};
pub use nesting::check_data_set;

/// Why an object was refused. Entry points map these to STOW failure reasons and DIMSE
/// statuses in one place each.
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
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
}

impl Rejection {
    /// The same refusal, naming the instance it is about.
    pub fn about(self, sop_class: &Uid, sop_instance: &Uid) -> Self {
        Rejection {
            sop_class_uid: Some(sop_class.to_string()),
            sop_instance_uid: Some(sop_instance.to_string()),
            ..self
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// A stored (or already stored) instance.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub study_uid: Uid,
    pub series_uid: Uid,
    pub sop_instance_uid: Uid,
    pub sop_class_uid: Uid,
    /// SHA-256 of the stored bytes (hex).
    pub sha256: String,
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

/// What the request itself says about the instance, checked against the data set.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub study_uid: Option<Uid>,
    pub series_uid: Option<Uid>,
    pub sop_instance_uid: Option<Uid>,
    pub sop_class_uid: Option<Uid>,
}

/// The sender's byte stream broke before the object was complete.
#[derive(Debug, thiserror::Error)]
#[error("the request body ended abnormally: {0}")]
pub struct BodyError(pub String);

#[derive(Clone)]
pub struct Ingest {
    store: Store,
    index: Index,
    on_conflict: ConflictPolicy,
    max_instance_bytes: u64,
}

impl Ingest {
    pub fn new(
        store: Store,
        index: Index,
        on_conflict: ConflictPolicy,
        max_instance_bytes: u64,
    ) -> Self {
        Ingest {
            store,
            index,
            on_conflict,
            max_instance_bytes,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Ingest one Part-10 object arriving as a byte stream.
    #[tracing::instrument(skip_all, fields(origin = %origin.kind, who = %origin.who))]
    pub async fn ingest<S, E>(
        &self,
        body: S,
        origin: Origin,
        expected: &Expected,
    ) -> Result<Outcome, BodyError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: fmt::Display,
    {
        Ok(match self.spool(body).await? {
            Ok(spooled) => self.store_spooled(spooled, origin, expected).await,
            Err(rejection) => Outcome::Rejected(rejection),
        })
    }

    /// A new, empty spool for an entry point that writes the bytes itself (C-STORE, which
    /// puts a file meta group in front of the data set it receives).
    pub fn start_spool(&self) -> Result<Spool, Rejection> {
        Spool::create(self.store.spool_dir(), self.max_instance_bytes).map_err(storage_rejection)
    }

    /// First half of [`Ingest::ingest`]: stream the bytes into a spool file, hashing them.
    /// Entry points that receive several objects in a row (STOW multipart) spool each as
    /// it arrives and run [`Ingest::store_spooled`] for it concurrently with the next.
    pub async fn spool<S, E>(&self, body: S) -> Result<Result<SpooledFile, Rejection>, BodyError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: fmt::Display,
    {
        let mut spool = match Spool::create(self.store.spool_dir(), self.max_instance_bytes) {
            Ok(s) => s,
            Err(e) => return Ok(Err(storage_rejection(e))),
        };
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BodyError(e.to_string()))?;
            if let Err(e) = spool.write(&chunk).await {
                return Ok(Err(storage_rejection(e)));
            }
        }
        Ok(spool.finish().await.map_err(storage_rejection))
    }

    /// Ingest a file from disk (for `import`); the file itself is left untouched.
    pub async fn ingest_file(&self, path: &Path, origin: Origin) -> Outcome {
        let file = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) => {
                return Outcome::Rejected(Rejection {
                    reason: Reason::ProcessingFailure,
                    detail: format!("cannot open {}: {e}", path.display()),
                    sop_class_uid: None,
                    sop_instance_uid: None,
                })
            }
        };
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        match self.ingest(stream, origin, &Expected::default()).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Rejected(Rejection {
                reason: Reason::ProcessingFailure,
                detail: format!("reading {}: {}", path.display(), e.0),
                sop_class_uid: None,
                sop_instance_uid: None,
            }),
        }
    }

    /// Second half of [`Ingest::ingest`]: parse, validate, store and index a spooled object.
    pub async fn store_spooled(
        &self,
        spooled: SpooledFile,
        origin: Origin,
        expected: &Expected,
    ) -> Outcome {
        let started = std::time::Instant::now();
        let (entry, len) = (origin.kind.as_str(), spooled.len);
        let outcome = self.store_spooled_inner(spooled, origin, expected).await;
        let m = crate::metrics::get();
        let label = match &outcome {
            Outcome::Stored(_) => "stored",
            Outcome::AlreadyStored(_) => "already_stored",
            Outcome::Rejected(_) => "rejected",
        };
        m.ingest_total.with_label_values(&[entry, label]).inc();
        if let Outcome::Stored(_) = outcome {
            m.ingest_bytes.with_label_values(&[entry]).inc_by(len);
        }
        m.ingest_seconds
            .with_label_values(&[entry, label])
            .observe(started.elapsed().as_secs_f64());
        outcome
    }

    async fn store_spooled_inner(
        &self,
        spooled: SpooledFile,
        origin: Origin,
        expected: &Expected,
    ) -> Outcome {
        let len = spooled.len;
        let digest = spooled.sha256;
        // One blocking task parses, checks and — on the filesystem — makes the object
        // durable and hands its row to the index writer (one thread hop less before the
        // commit); S3 uploads go on asynchronously afterwards.
        let (store, index, expected) = (self.store.clone(), self.index.clone(), expected.clone());
        let prepared = tokio::task::spawn_blocking(move || {
            let source = spooled
                .reader()
                .map_err(|e| failure(format!("reading the spooled object: {e}"), None))?;
            let parsed = header::parse(source, len)?;
            check_expected(&parsed, &expected)?;
            // No look-up first: the key names the bytes, so putting an instance that is
            // already stored rewrites an identical object, and the index's uniqueness
            // decides the rest.
            let key = ObjectKey::new(&parsed.study_uid, &digest);
            let remote = store.put_local(&key, spooled).map_err(|e| {
                storage_rejection(e).about(&parsed.sop_class_uid, &parsed.sop_instance_uid)
            })?;
            let (accepted, record) = into_record(parsed, &key, len, &digest, origin);
            let stage = match remote {
                None => Stage::Queued(
                    index
                        .submit_blocking(record)
                        .map_err(|e| failure(format!("index writer: {e}"), Some(&accepted)))?,
                ),
                Some(spooled) => Stage::Upload(spooled, Box::new(record)),
            };
            Ok::<_, Rejection>((key, accepted, stage))
        })
        .await;
        let (key, mut accepted, stage) = match prepared {
            Ok(Ok(p)) => p,
            Ok(Err(r)) => return Outcome::Rejected(r),
            Err(e) => return Outcome::Rejected(failure(format!("header task failed: {e}"), None)),
        };
        let inserted = match stage {
            Stage::Queued(answer) => answer.await.unwrap_or(Err(IndexError::WriterGone)),
            Stage::Upload(spooled, mut record) => {
                if let Err(e) = self.store.put(&key, spooled).await {
                    return Outcome::Rejected(
                        storage_rejection(e)
                            .about(&accepted.sop_class_uid, &accepted.sop_instance_uid),
                    );
                }
                // Stored when the upload completed, not when it began.
                record.stored_at = crate::model::clock::now_millis();
                accepted.stored_at = record.stored_at;
                self.index.insert(*record).await
            }
        };
        match inserted {
            Ok(InsertOutcome::Inserted) => {
                tracing::info!(sop = %accepted.sop_instance_uid, study = %accepted.study_uid, size = len, "stored");
                Outcome::Stored(accepted)
            }
            Ok(InsertOutcome::Existing(existing)) => {
                // Already stored (or a concurrent ingest won): keep the indexed object only.
                if existing.object_key != key.as_str() {
                    if let Err(e) = self.store.delete(&key).await {
                        tracing::warn!(key = %key, error = %e, "could not remove the losing copy; verify will sweep it");
                    }
                }
                self.duplicate(existing, accepted)
            }
            Err(e) => {
                // The object stays; `verify` finds it as an orphan (it may even have been
                // committed if the connection broke after COMMIT).
                tracing::error!(sop = %accepted.sop_instance_uid, error = %e, "index commit failed");
                Outcome::Rejected(failure(
                    format!("index commit failed: {e}"),
                    Some(&accepted),
                ))
            }
        }
    }

    fn duplicate(&self, existing: StoredInstance, mut accepted: Accepted) -> Outcome {
        if existing.sha256 == accepted.sha256 {
            accepted.stored_at = existing.stored_at;
            return Outcome::AlreadyStored(accepted);
        }
        match self.on_conflict {
            ConflictPolicy::KeepOriginal => {
                tracing::warn!(sop = %accepted.sop_instance_uid, "different bytes for a stored instance; original kept");
                accepted.kept_original = true;
                accepted.sha256 = existing.sha256;
                accepted.size = existing.size as u64;
                accepted.stored_at = existing.stored_at;
                Outcome::AlreadyStored(accepted)
            }
            ConflictPolicy::Reject => Outcome::Rejected(Rejection {
                reason: Reason::ConflictingDuplicate,
                detail: format!(
                    "SOP Instance {} is already stored with different content (sha256 {}); stored instances are immutable",
                    accepted.sop_instance_uid, existing.sha256
                ),
                sop_class_uid: Some(accepted.sop_class_uid.to_string()),
                sop_instance_uid: Some(accepted.sop_instance_uid.to_string()),
            }),
        }
    }
}

/// Where an instance is after its blocking part: its row queued for the index writer, or
/// its object still to be uploaded (S3) before the row is written.
enum Stage {
    Queued(tokio::sync::oneshot::Receiver<Result<InsertOutcome, IndexError>>),
    Upload(SpooledFile, Box<InstanceRecord>),
}

/// The outcome to report and the index row of a parsed instance stored under `key`. The
/// parsed header moves into the record: its JSON is not copied on this hot path.
fn into_record(
    parsed: header::Parsed,
    key: &ObjectKey,
    len: u64,
    digest: &crate::model::Sha256,
    origin: Origin,
) -> (Accepted, InstanceRecord) {
    let sha256 = digest.to_hex();
    let accepted = Accepted {
        study_uid: parsed.study_uid.clone(),
        series_uid: parsed.series_uid.clone(),
        sop_instance_uid: parsed.sop_instance_uid.clone(),
        sop_class_uid: parsed.sop_class_uid.clone(),
        sha256: sha256.clone(),
        size: len,
        stored_at: crate::model::clock::now_millis(),
        kept_original: false,
    };
    let record = InstanceRecord {
        sop_instance_uid: parsed.sop_instance_uid.to_string(),
        sop_class_uid: parsed.sop_class_uid.to_string(),
        instance_number: parsed.instance_number,
        transfer_syntax: parsed.transfer_syntax.to_string(),
        number_of_frames: parsed.number_of_frames,
        rows: parsed.rows,
        columns: parsed.columns,
        object_key: key.as_str().to_owned(),
        size: len as i64,
        part10_prefix: parsed.part10_prefix,
        sha256,
        attrs_json: parsed.attrs_json,
        metadata_json: parsed.metadata_json,
        frame_table: parsed.frame_table,
        origin,
        stored_at: accepted.stored_at,
        study: parsed.study,
        series: parsed.series,
    };
    (accepted, record)
}

fn check_expected(p: &header::Parsed, e: &Expected) -> Result<(), Rejection> {
    let mismatch = |reason, name: &str, want: &Uid, got: &Uid| Rejection {
        reason,
        detail: format!("{name} {got} of the data set does not match {want} of the request"),
        sop_class_uid: Some(p.sop_class_uid.to_string()),
        sop_instance_uid: Some(p.sop_instance_uid.to_string()),
    };
    if let Some(want) = e.study_uid.as_ref().filter(|w| **w != p.study_uid) {
        return Err(mismatch(
            Reason::StudyUidMismatch,
            "StudyInstanceUID",
            want,
            &p.study_uid,
        ));
    }
    let checks = [
        (&e.series_uid, &p.series_uid, "SeriesInstanceUID"),
        (&e.sop_instance_uid, &p.sop_instance_uid, "SOPInstanceUID"),
        (&e.sop_class_uid, &p.sop_class_uid, "SOPClassUID"),
    ];
    for (want, got, name) in checks {
        if let Some(want) = want.as_ref().filter(|w| *w != got) {
            return Err(mismatch(Reason::DataSetMismatch, name, want, got));
        }
    }
    Ok(())
}

fn storage_rejection(e: StorageError) -> Rejection {
    let (reason, detail) = match &e {
        StorageError::TooLarge { limit } => (
            Reason::TooLarge,
            format!("the object is larger than the limit of {limit} bytes"),
        ),
        StorageError::Io { source, .. } if is_out_of_space(source) => {
            tracing::error!(error = %e, "out of space");
            (
                Reason::OutOfResources,
                "the server is out of storage space".to_owned(),
            )
        }
        _ => {
            tracing::error!(error = %e, "storage failure during ingest");
            (
                Reason::ProcessingFailure,
                "the object store failed while storing the object".to_owned(),
            )
        }
    };
    Rejection {
        reason,
        detail,
        sop_class_uid: None,
        sop_instance_uid: None,
    }
}

fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28) | Some(122)) // ENOSPC, EDQUOT
}

fn failure(detail: String, about: Option<&Accepted>) -> Rejection {
    tracing::error!(%detail, "ingest failure");
    Rejection {
        reason: Reason::ProcessingFailure,
        detail: "the server failed while storing the object".to_owned(),
        sop_class_uid: about.map(|a| a.sop_class_uid.to_string()),
        sop_instance_uid: about.map(|a| a.sop_instance_uid.to_string()),
    }
}
