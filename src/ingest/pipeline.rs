//! The steps of storing one spooled object, in order: parse the header and check it
//! against what the request said → put the object durably → commit its index row → settle
//! a duplicate. Object first, index second: a crash in between leaves an object without a
//! row (re-indexed by start-up recovery or `verify --reindex`), never a row without its
//! object.
//!
//! One blocking task parses, checks and — on the filesystem — makes the object durable and
//! writes its row: on SQLite it commits the row itself (no thread hop before the answer),
//! on PostgreSQL it hands the row to the writer task. S3 uploads go on asynchronously
//! afterwards and their row is written when the upload has completed.

use tokio::sync::oneshot;

use super::outcome::{failure, Accepted, Outcome, Reason, Rejection};
use super::{Expected, Ingest};
use crate::config::ConflictPolicy;
use crate::dicom::Header;
use crate::index::{IndexError, InsertOutcome, InstanceRecord, StoredInstance};
use crate::model::clock::now_millis;
use crate::model::{ObjectKey, Origin, Sha256, Uid};
use crate::storage::SpooledFile;

/// Where an instance is after its blocking part: its row queued for the index writer, or
/// its object still to be uploaded (S3) before the row is written.
enum Stage {
    Queued(oneshot::Receiver<Result<InsertOutcome, IndexError>>),
    Upload(SpooledFile, Box<InstanceRecord>),
}

/// Parse, check, store and index a spooled object (not counted: the caller counts).
pub(super) async fn store(
    ingest: &Ingest,
    spooled: SpooledFile,
    origin: Origin,
    expected: &Expected,
) -> Outcome {
    let (key, mut accepted, stage) = match prepare(ingest, spooled, origin, expected).await {
        Ok(prepared) => prepared,
        Err(rejection) => return Outcome::Rejected(rejection),
    };
    let inserted = match stage {
        Stage::Queued(answer) => answer.await.unwrap_or(Err(IndexError::WriterGone)),
        Stage::Upload(spooled, mut record) => {
            if let Err(e) = ingest.store().put(&key, spooled).await {
                let r = Rejection::from(e);
                return Outcome::Rejected(
                    r.about(&accepted.sop_class_uid, &accepted.sop_instance_uid),
                );
            }
            // Stored when the upload completed, not when it began.
            record.stored_at = now_millis();
            accepted.stored_at = record.stored_at;
            ingest.index().insert(*record).await
        }
    };
    settle(ingest, key, accepted, inserted).await
}

/// The blocking part: parse and check the header, put the object (durably, on the
/// filesystem) and queue its row.
async fn prepare(
    ingest: &Ingest,
    spooled: SpooledFile,
    origin: Origin,
    expected: &Expected,
) -> Result<(ObjectKey, Accepted, Stage), Rejection> {
    let (store, index, expected, routes) = (
        ingest.store().clone(),
        ingest.index().clone(),
        expected.clone(),
        ingest.routes(),
    );
    let (len, digest) = (spooled.len, spooled.sha256);
    let prepared = tokio::task::spawn_blocking(move || {
        let source = spooled
            .reader()
            .map_err(|e| failure(format!("reading the spooled object: {e}"), None))?;
        let header = crate::dicom::parse_header(source, len).map_err(Rejection::from)?;
        check_expected(&header, &expected)?;
        // No look-up first: the key names the bytes, so putting an instance that is
        // already stored rewrites an identical object, and the index's uniqueness
        // decides the rest.
        let key = ObjectKey::new(&header.study_uid, &digest);
        let remote = store.put_local(&key, spooled).map_err(|e| {
            Rejection::from(e).about(&header.sop_class_uid, &header.sop_instance_uid)
        })?;
        let (accepted, mut record) = into_record(header, &key, len, digest, origin);
        record.forward_to = routes.destinations(&record);
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
    match prepared {
        Ok(result) => result,
        Err(e) => Err(failure(format!("header task failed: {e}"), None)),
    }
}

/// What the index said, as an outcome.
async fn settle(
    ingest: &Ingest,
    key: ObjectKey,
    accepted: Accepted,
    inserted: Result<InsertOutcome, IndexError>,
) -> Outcome {
    match inserted {
        Ok(InsertOutcome::Inserted) => {
            tracing::info!(sop = %accepted.sop_instance_uid, study = %accepted.study_uid, size = accepted.size, "stored");
            Outcome::Stored(accepted)
        }
        Ok(InsertOutcome::Existing(existing)) => {
            // Already stored (or a concurrent ingest won): keep the indexed object only.
            if existing.object_key != key {
                if let Err(e) = ingest.store().delete(&key).await {
                    tracing::warn!(key = %key, error = %e, "could not remove the losing copy; verify will sweep it");
                }
            }
            duplicate(ingest.on_conflict, existing, accepted)
        }
        Err(e) => {
            // The object stays; recovery or `verify` finds it as an orphan (it may even have
            // been committed if the connection broke after COMMIT).
            tracing::error!(sop = %accepted.sop_instance_uid, error = %e, "index commit failed");
            Outcome::Rejected(failure(
                format!("index commit failed: {e}"),
                Some(&accepted),
            ))
        }
    }
}

/// An instance whose SOP Instance UID is indexed already: the same bytes are a no-op,
/// other bytes are refused or (by policy) answered with the original kept.
fn duplicate(policy: ConflictPolicy, existing: StoredInstance, mut accepted: Accepted) -> Outcome {
    if existing.sha256 == accepted.sha256 {
        accepted.stored_at = existing.stored_at;
        return Outcome::AlreadyStored(accepted);
    }
    match policy {
        ConflictPolicy::KeepOriginal => {
            tracing::warn!(sop = %accepted.sop_instance_uid, "different bytes for a stored instance; original kept");
            accepted.kept_original = true;
            accepted.sha256 = existing.sha256;
            accepted.size = existing.size;
            accepted.stored_at = existing.stored_at;
            Outcome::AlreadyStored(accepted)
        }
        ConflictPolicy::Reject => {
            let detail = format!(
                "SOP Instance {} is already stored with different content (sha256 {}); stored instances are immutable",
                accepted.sop_instance_uid, existing.sha256
            );
            let r = Rejection::new(Reason::ConflictingDuplicate, detail);
            Outcome::Rejected(r.about(&accepted.sop_class_uid, &accepted.sop_instance_uid))
        }
    }
}

/// The outcome to report and the index row of a parsed instance stored under `key`. The
/// header moves into the record: its JSON is not copied on this hot path.
fn into_record(
    header: Header,
    key: &ObjectKey,
    len: u64,
    digest: Sha256,
    origin: Origin,
) -> (Accepted, InstanceRecord) {
    let accepted = Accepted {
        study_uid: header.study_uid.clone(),
        series_uid: header.series_uid.clone(),
        sop_instance_uid: header.sop_instance_uid.clone(),
        sop_class_uid: header.sop_class_uid.clone(),
        sha256: digest,
        size: len,
        stored_at: now_millis(),
        kept_original: false,
    };
    let record = InstanceRecord {
        sop_instance_uid: header.sop_instance_uid,
        sop_class_uid: header.sop_class_uid,
        instance_number: header.instance_number,
        transfer_syntax: header.transfer_syntax,
        number_of_frames: header.number_of_frames,
        rows: header.rows,
        columns: header.columns,
        object_key: key.clone(),
        size: len,
        part10_prefix: header.part10_prefix,
        sha256: digest,
        attrs_json: header.attrs_json,
        metadata_json: header.metadata_json,
        frame_table: header.frame_table,
        origin,
        stored_at: accepted.stored_at,
        study: header.study,
        series: header.series,
        forward_to: Vec::new(),
    };
    (accepted, record)
}

/// The request's UIDs (a STOW URL's study, an upload's declared UIDs, a C-STORE command's
/// affected SOP) against the data set's.
fn check_expected(h: &Header, e: &Expected) -> Result<(), Rejection> {
    let mismatch = |reason, name: &str, want: &Uid, got: &Uid| {
        let detail = format!("{name} {got} of the data set does not match {want} of the request");
        Rejection::new(reason, detail).about(&h.sop_class_uid, &h.sop_instance_uid)
    };
    if let Some(want) = e.study_uid.as_ref().filter(|w| **w != h.study_uid) {
        return Err(mismatch(
            Reason::StudyUidMismatch,
            "StudyInstanceUID",
            want,
            &h.study_uid,
        ));
    }
    let checks = [
        (&e.series_uid, &h.series_uid, "SeriesInstanceUID"),
        (&e.sop_instance_uid, &h.sop_instance_uid, "SOPInstanceUID"),
        (&e.sop_class_uid, &h.sop_class_uid, "SOPClassUID"),
    ];
    for (want, got, name) in checks {
        if let Some(want) = want.as_ref().filter(|w| *w != got) {
            return Err(mismatch(Reason::DataSetMismatch, name, want, got));
        }
    }
    Ok(())
}
