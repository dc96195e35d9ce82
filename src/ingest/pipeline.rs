//! The steps of storing one spooled object, in order: parse the header and check it
//! against what the request said → put the object durably → commit its index row → settle
//! a duplicate. Object first, index second: a crash in between leaves an object without a
//! row (re-indexed by start-up recovery or `verify --reindex`), never a row without its
//! object.
//!
//! One blocking thread parses, checks and — on the filesystem — writes the object and
//! commits it with whatever else is waiting ([`super::commit`]: one journal flush, one
//! index batch per group; on SQLite the group's leader writes the rows itself, on
//! PostgreSQL it hands them to the writer task). A caller already on a blocking thread
//! runs all of it there ([`store_here`]: C-STORE, which answers from that thread too).
//! S3 uploads go on asynchronously afterwards and their row is written when the upload
//! has completed. The audit trail's store event follows the row, through the audit writer.

use super::commit::{Answer, Failed};
use super::outcome::{failure, Accepted, Outcome, Reason, Rejection};
use super::{Expected, Ingest};
use crate::config::ConflictPolicy;
use crate::dicom::Header;
use crate::index::admin::AuditEvent;
use crate::index::{InsertOutcome, InstanceRecord, StoredInstance};
use crate::model::clock::now_millis;
use crate::model::{ObjectKey, Origin, Sha256, Uid};
use crate::storage::{Placed, SpooledFile};

/// Where an instance is after its blocking part: its row queued for the index writer, or
/// its object still to be uploaded (S3) before the row is written.
enum Stage {
    /// Made durable and its row committed (or not) with its group.
    Committed(Answer),
    Upload(SpooledFile, Box<InstanceRecord>),
}

/// Parse, check, store and index a spooled object (not counted: the caller counts).
pub(super) async fn store(
    ingest: &Ingest,
    spooled: SpooledFile,
    origin: Origin,
    expected: &Expected,
) -> Outcome {
    let audit = store_event(&origin);
    let (ingest2, expected) = (ingest.clone(), expected.clone());
    let prepared =
        tokio::task::spawn_blocking(move || prepare(&ingest2, spooled, origin, &expected)).await;
    match prepared {
        Ok(Ok(prepared)) => complete(ingest, prepared, audit).await,
        Ok(Err(rejection)) => Outcome::Rejected(rejection),
        Err(e) => Outcome::Rejected(failure(format!("header task failed: {e}"), None)),
    }
}

/// [`store`] on a blocking thread, all of it on this thread: the blocking part here, the
/// rest (the index's answer, an upload) driven by `runtime` from here. No hand-off to
/// another thread on the filesystem with SQLite, where the row is committed here too.
pub(super) fn store_here(
    ingest: &Ingest,
    spooled: SpooledFile,
    origin: Origin,
    expected: &Expected,
    runtime: &tokio::runtime::Handle,
) -> Outcome {
    let audit = store_event(&origin);
    match prepare(ingest, spooled, origin, expected) {
        Ok(prepared) => runtime.block_on(complete(ingest, prepared, audit)),
        Err(rejection) => Outcome::Rejected(rejection),
    }
}

/// The audit trail's event for an instance stored from `origin` (completed once stored).
fn store_event(origin: &Origin) -> AuditEvent {
    let (who, via) = (&origin.who, origin.kind.as_str());
    AuditEvent::new(who, via, origin.address.clone(), "store")
}

/// An object put and its row on the way: its key, the answer to give, and where it is.
type Prepared = (ObjectKey, Accepted, Stage);

/// After the blocking part: the index's answer (the row queued or written; on S3 the
/// object uploaded first, then its row), settled into an outcome.
async fn complete(ingest: &Ingest, prepared: Prepared, audit: AuditEvent) -> Outcome {
    let (key, mut accepted, stage) = prepared;
    let inserted = match stage {
        Stage::Committed(answer) => answer,
        Stage::Upload(spooled, mut record) => match ingest.store().put(&key, spooled).await {
            Ok(()) => {
                // Stored when the upload completed, not when it began.
                record.stored_at = now_millis();
                accepted.stored_at = record.stored_at;
                ingest.index().insert(*record).await.map_err(Failed::Index)
            }
            Err(e) => Err(Failed::Object(e)),
        },
    };
    settle(ingest, key, accepted, inserted, audit).await
}

/// The blocking part: parse and check the header, put the object (durably, on the
/// filesystem) and queue its row.
fn prepare(
    ingest: &Ingest,
    spooled: SpooledFile,
    origin: Origin,
    expected: &Expected,
) -> Result<Prepared, Rejection> {
    let (len, digest) = (spooled.len, spooled.sha256);
    let source = spooled
        .reader()
        .map_err(|e| failure(format!("reading the spooled object: {e}"), None))?;
    // On its way to a group from now: a group's leader may wait a moment for it.
    let coming = ingest.commits.coming();
    let header = crate::dicom::parse_header(source, len).map_err(Rejection::from)?;
    check_expected(&header, expected)?;
    // No look-up first: the key names the bytes, so putting an instance that is already
    // stored rewrites an identical object, and the index's uniqueness decides the rest.
    let key = ObjectKey::new(&header.study_uid, &digest);
    let placed = ingest
        .store()
        .put_local(&key, spooled)
        .map_err(|e| Rejection::from(e).about(&header.sop_class_uid, &header.sop_instance_uid))?;
    let (accepted, mut record) = into_record(header, &key, len, digest, origin);
    record.forward_to = ingest.routes().destinations(&record);
    let stage = match placed {
        Placed::Written(written) => Stage::Committed(ingest.commits.commit(
            ingest.index(),
            written,
            record,
            coming,
        )),
        Placed::Remote(spooled) => Stage::Upload(spooled, Box::new(record)),
    };
    Ok((key, accepted, stage))
}

/// What the index said, as an outcome.
async fn settle(
    ingest: &Ingest,
    key: ObjectKey,
    accepted: Accepted,
    inserted: Answer,
    mut audit: AuditEvent,
) -> Outcome {
    match inserted {
        Ok(InsertOutcome::Inserted) => {
            tracing::info!(sop = %accepted.sop_instance_uid, study = %accepted.study_uid, size = accepted.size, "stored");
            // The instance row itself records who stored it, from where and when; the
            // audit trail's event follows through the audit writer (batched), not in the
            // row's transaction: two fewer indexes and a table written per commit.
            audit.at = accepted.stored_at;
            let detail = format!("instance {}", accepted.sop_instance_uid);
            let event = audit.study(accepted.study_uid.as_str()).detail(detail);
            ingest.index().audit_kept(event).await;
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
        Err(Failed::Object(e)) => {
            let r = Rejection::from(e);
            Outcome::Rejected(r.about(&accepted.sop_class_uid, &accepted.sop_instance_uid))
        }
        Err(Failed::Index(e)) => {
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
