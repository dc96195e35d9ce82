//! Putting orphans back: an object no index row points to is a complete, self-describing
//! instance whose row was lost (a crash between the object's write and the index commit,
//! or a power failure that took a relaxed commit) — or what is left of a delete, a losing
//! duplicate, or a torn write. [`reindex`] tells them apart; [`recover_recent`] runs it at
//! start-up over the recently written study directories.

use std::collections::HashSet;

use serde::Serialize;

use super::{VerifyError, VerifyReport};
use crate::ingest::{Expected, Ingest, Outcome, Reason};
use crate::model::{ObjectKey, Origin, OriginKind, Uid};

/// What an orphan is: its SOP Instance UID (when its header parses) and when it was
/// written (milliseconds since the epoch, when the store knows).
async fn orphan_header(
    ingest: &Ingest,
    key: &ObjectKey,
) -> Result<Option<(Uid, i64)>, VerifyError> {
    let Some(written) = ingest.store().written_at(key).await? else {
        return Ok(None);
    };
    let sop = ingest
        .store()
        .with_local_file(key, |path| {
            let file = std::fs::File::open(path).ok()?;
            let len = file.metadata().ok()?.len();
            crate::dicom::parse_header(file, len)
                .ok()
                .map(|h| h.sop_instance_uid)
        })
        .await?;
    Ok(sop.map(|sop| (sop, written)))
}

/// A delete committed at least this long after an object was written is taken to be the
/// delete of that object (the file's time comes from a coarser clock than the delete's).
const DELETE_MARGIN_MS: i64 = 100;

/// Feed an orphan back through ingest: it is a complete, self-describing object whose
/// row was lost (a crash between object write and index commit, or a power failure that
/// took a relaxed commit). Not when its bytes do not hash to its key (torn or damaged:
/// deleted), nor when its instance was deleted after it was written (what a delete whose
/// object removal never happened left: deleted; a re-sent instance written after its
/// delete comes back), nor when another version of its instance is indexed (kept and
/// reported: which of the two was acknowledged is not known here; `--delete-orphans`
/// sweeps it). In `strict` mode (start-up recovery) a failure to store it again (no room,
/// an I/O error) is an error, not a warning.
pub(super) async fn reindex(
    ingest: &Ingest,
    key: &ObjectKey,
    report: &mut VerifyReport,
    strict: bool,
) -> Result<(), VerifyError> {
    match judge(ingest, key).await? {
        Orphan::Torn => {
            tracing::warn!(key = %key, "orphan does not hash to its key (torn or damaged); deleting it");
            ingest.store().delete(key).await?;
            report.torn.push(key.to_string());
            report.deleted.push(key.to_string());
        }
        Orphan::Deleted => {
            tracing::info!(key = %key, "orphan is an instance deleted after it was stored; deleting it");
            ingest.store().delete(key).await?;
            report.deleted.push(key.to_string());
        }
        Orphan::Conflicting => {
            tracing::warn!(key = %key, "orphan is another version of an indexed instance; kept");
            report.conflicting.push(key.to_string());
        }
        Orphan::Lost => store_again(ingest, key, report, strict).await?,
    }
    Ok(())
}

/// What an orphan is.
enum Orphan {
    /// Its bytes do not hash to its key.
    Torn,
    /// Its instance was deleted after it was written.
    Deleted,
    /// Another version of its instance is indexed.
    Conflicting,
    /// An instance whose row was lost.
    Lost,
}

async fn judge(ingest: &Ingest, key: &ObjectKey) -> Result<Orphan, VerifyError> {
    if Some(ingest.store().digest(key).await?.0) != key.sha256() {
        return Ok(Orphan::Torn);
    }
    let Some((sop, written)) = orphan_header(ingest, key).await? else {
        return Ok(Orphan::Lost);
    };
    let deleted = ingest.index().last_deleted_at(&sop).await?;
    if deleted.is_some_and(|at| at - written >= DELETE_MARGIN_MS) {
        return Ok(Orphan::Deleted);
    }
    if ingest.index().instance_id(&sop).await?.is_some() {
        return Ok(Orphan::Conflicting);
    }
    Ok(Orphan::Lost)
}

/// Store a lost instance again through the one ingest path.
async fn store_again(
    ingest: &Ingest,
    key: &ObjectKey,
    report: &mut VerifyReport,
    strict: bool,
) -> Result<(), VerifyError> {
    let stream = ingest.store().stream(key, None).await?;
    let origin = Origin::new(OriginKind::Import, format!("verify --reindex {key}"), None);
    match ingest.ingest(stream, origin, &Expected::default()).await {
        Outcome::Stored(_) => report.reindexed.push(key.to_string()),
        Outcome::AlreadyStored(a) => {
            // Another copy of this instance is indexed; this one is a losing duplicate.
            tracing::info!(key = %key, sop = %a.sop_instance_uid, "orphan duplicates an indexed instance; deleting it");
            ingest.store().delete(key).await?;
            report.deleted.push(key.to_string());
        }
        Outcome::Rejected(r) if r.reason == Reason::ConflictingDuplicate => {
            // A losing version of an indexed instance (S3: not caught before).
            tracing::info!(key = %key, "orphan is another version of an indexed instance; deleting it");
            ingest.store().delete(key).await?;
            report.deleted.push(key.to_string());
        }
        Outcome::Rejected(r)
            if strict
                && matches!(
                    r.reason,
                    Reason::OutOfResources | Reason::ProcessingFailure | Reason::Truncated
                ) =>
        {
            return Err(VerifyError::Recovery(format!(
                "{key} could not be stored again: {r}"
            )));
        }
        Outcome::Rejected(r) => {
            tracing::warn!(key = %key, reason = %r, "orphan could not be re-indexed")
        }
    }
    Ok(())
}

/// How far before the newest row start-up recovery looks for objects without rows: much
/// longer than an ingest takes between its durable object and its commit, and than the
/// clock may step back.
const RECOVERY_WINDOW_SECS: i64 = 24 * 3600;

#[derive(Debug, Default, Serialize)]
pub struct RecoveryReport {
    /// Study directories looked into.
    pub directories: usize,
    pub reindexed: Vec<String>,
    pub torn: Vec<String>,
    pub conflicting: Vec<String>,
}

/// Start-up recovery for a relaxed index on a filesystem store. A power failure may take
/// the last rows such an index committed, though their objects were durable (and
/// linked, and their directories fsynced) before their instances were acknowledged. A
/// study directory gets a new entry — and a new modification time — for each object put
/// in it, so the objects of every study directory modified since shortly before the
/// newest row that survived are compared with the study's rows, and those without one
/// go back through ingest (as `verify --reindex` does, torn ones deleted). One directory
/// listing and one query per recent study; nothing else is read.
pub async fn recover_recent(ingest: &Ingest) -> Result<RecoveryReport, VerifyError> {
    let mut report = RecoveryReport::default();
    let newest = ingest.index().newest_stored_at().await?;
    let since = newest.map_or(i64::MIN, |ms| ms / 1000 - RECOVERY_WINDOW_SECS);
    let studies = ingest.store().recent_study_objects(since).await?;
    report.directories = studies.len();
    for (study, keys) in studies {
        let indexed: HashSet<ObjectKey> = ingest
            .index()
            .study_object_keys(&study)
            .await?
            .into_iter()
            .collect();
        // Oldest first: of two versions of one instance, the one written first is the one
        // the index took (the other was refused as a conflicting duplicate).
        let mut orphans: Vec<_> = keys
            .into_iter()
            .filter(|(k, _)| !indexed.contains(k))
            .collect();
        orphans.sort_by_key(|(_, written)| *written);
        for (key, _) in orphans {
            let mut one = VerifyReport::default();
            reindex(ingest, &key, &mut one, true).await?;
            report.reindexed.extend(one.reindexed);
            report.torn.extend(one.torn);
            report.conflicting.extend(one.conflicting);
        }
    }
    Ok(report)
}
