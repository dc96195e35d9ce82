//! `pacs-lite verify`: re-read every stored object and recompute its SHA-256; report
//! missing objects and mismatches; list orphans (objects no index row points to) and,
//! on request, re-index them (`--reindex`, the recovery path after a crash between the
//! object write and the index commit) or delete them (`--delete-orphans`).
//!
//! Orphans younger than a grace period are left alone: they may belong to an ingest
//! that has written its object and is about to commit its row. An orphan is re-indexed
//! only if its bytes still hash to its key (an object key names its SHA-256); one that
//! does not is torn or damaged, and is deleted rather than indexed.
//!
//! [`recover_recent`] is the start-up half of this for a relaxed index (SQLite commits
//! without an fsync each): the objects of recently written study directories that no row
//! points to are re-indexed before the process does anything else.

use std::collections::HashSet;
use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::index::{IndexError, StoredInstance};
use crate::ingest::{Expected, Ingest, Outcome, Reason};
use crate::model::ObjectKey;
use crate::model::Uid;
use crate::model::{Origin, OriginKind};
use crate::storage::StorageError;

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub instances_checked: u64,
    pub intact: u64,
    pub bytes_checked: u64,
    /// Index rows whose object is gone.
    pub missing: Vec<String>,
    /// Objects whose bytes no longer hash to the recorded SHA-256 (or have another size).
    pub mismatched: Vec<String>,
    /// Objects no index row points to.
    pub orphans: Vec<String>,
    /// Orphans skipped because they are younger than the grace period.
    pub recent_orphans: Vec<String>,
    /// Files in the store that are not objects of ours.
    pub foreign: Vec<String>,
    pub reindexed: Vec<String>,
    pub deleted: Vec<String>,
    /// Orphans whose bytes do not hash to their key (deleted with `--reindex` or
    /// `--delete-orphans`, never indexed).
    pub torn: Vec<String>,
    /// Orphans that are another version of an indexed instance (kept by `--reindex`).
    pub conflicting: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.mismatched.is_empty() && self.orphans.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("recovery: {0}")]
    Recovery(String),
}

#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    pub reindex_orphans: bool,
    pub delete_orphans: bool,
    pub grace_secs: i64,
    pub parallelism: usize,
}

enum Check {
    Intact(u64),
    Missing,
    Mismatch,
}

pub async fn verify(ingest: &Ingest, opts: VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let mut report = VerifyReport::default();
    let mut keys = HashSet::new();
    {
        let mut checks = ingest
            .index()
            .all_instances()
            .map_ok(|row| async move {
                let check = check_one(ingest, &row).await;
                Ok::<_, IndexError>((row, check))
            })
            .try_buffer_unordered(opts.parallelism.max(1));
        while let Some((row, check)) = checks.try_next().await? {
            report.instances_checked += 1;
            match check? {
                Check::Intact(n) => {
                    report.intact += 1;
                    report.bytes_checked += n;
                }
                Check::Missing => report
                    .missing
                    .push(format!("{} ({})", row.sop_instance_uid, row.object_key)),
                Check::Mismatch => report
                    .mismatched
                    .push(format!("{} ({})", row.sop_instance_uid, row.object_key)),
            }
            keys.insert(row.object_key);
        }
    }
    let now = crate::model::clock::now_millis() / 1000;
    let listing = ingest.store().list().await?;
    let mut listing = std::pin::pin!(listing);
    while let Some(entry) = listing.next().await {
        let key = match entry? {
            Ok(key) => key,
            // Parts of offline uploads in progress belong to the upload flow (which
            // expires them), not to the instances.
            Err(raw) if raw.starts_with(crate::model::UPLOADS_PREFIX) => continue,
            Err(raw) => {
                report.foreign.push(raw);
                continue;
            }
        };
        if keys.contains(key.as_str()) || ingest.index().key_is_referenced(key.as_str()).await? {
            continue;
        }
        let modified = ingest.store().modified(&key).await?.unwrap_or(0);
        if now - modified < opts.grace_secs {
            report.recent_orphans.push(key.to_string());
            continue;
        }
        report.orphans.push(key.to_string());
        if opts.reindex_orphans {
            reindex(ingest, &key, &mut report, false).await?;
        } else if opts.delete_orphans {
            ingest.store().delete(&key).await?;
            report.deleted.push(key.to_string());
        }
    }
    Ok(report)
}

async fn check_one(ingest: &Ingest, row: &StoredInstance) -> Result<Check, VerifyError> {
    let Some(key) = ObjectKey::parse(&row.object_key) else {
        return Ok(Check::Missing);
    };
    let (digest, len) = match digest(ingest, &key).await {
        Ok(d) => d,
        Err(StorageError::NotFound(_)) => return Ok(Check::Missing),
        Err(e) => return Err(e.into()),
    };
    let ok = digest == row.sha256
        && Some(&digest) == key.sha256().map(|d| d.to_hex()).as_ref()
        && len == row.size as u64;
    Ok(if ok {
        Check::Intact(len)
    } else {
        Check::Mismatch
    })
}

/// The object's SHA-256 (hex) and size, read from the store.
async fn digest(ingest: &Ingest, key: &ObjectKey) -> Result<(String, u64), StorageError> {
    let mut stream = ingest.store().stream(key, None).await?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((hex::encode(hasher.finalize()), len))
}

/// What an orphan on the filesystem is: its SOP Instance UID (if its header parses) and
/// when it was written (milliseconds since the epoch). `None` on S3.
async fn orphan_header(
    ingest: &Ingest,
    key: &ObjectKey,
) -> Result<Option<(Option<Uid>, i64)>, VerifyError> {
    let Some(path) = ingest.store().fs_root().map(|r| r.join(key.as_str())) else {
        return Ok(None);
    };
    let read = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        let meta = file.metadata()?;
        let written = modified_millis(&meta);
        let sop = crate::ingest::header::parse(file, meta.len())
            .ok()
            .map(|p| p.sop_instance_uid);
        Ok::<_, std::io::Error>((sop, written))
    })
    .await
    .map_err(|e| StorageError::Internal(format!("header task failed: {e}")))?;
    Ok(Some(read.map_err(|e| {
        StorageError::io("reading", Path::new(key.as_str()), e)
    })?))
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
async fn reindex(
    ingest: &Ingest,
    key: &ObjectKey,
    report: &mut VerifyReport,
    strict: bool,
) -> Result<(), VerifyError> {
    if Some(digest(ingest, key).await?.0) != key.sha256().map(|d| d.to_hex()) {
        tracing::warn!(key = %key, "orphan does not hash to its key (torn or damaged); deleting it");
        ingest.store().delete(key).await?;
        report.torn.push(key.to_string());
        report.deleted.push(key.to_string());
        return Ok(());
    }
    if let Some((Some(sop), written)) = orphan_header(ingest, key).await? {
        let deleted = ingest.index().last_deleted_at(&sop).await?;
        if deleted.is_some_and(|at| at - written >= DELETE_MARGIN_MS) {
            tracing::info!(key = %key, "orphan is an instance deleted after it was stored; deleting it");
            ingest.store().delete(key).await?;
            report.deleted.push(key.to_string());
            return Ok(());
        }
        if ingest.index().instance_id(&sop).await?.is_some() {
            tracing::warn!(key = %key, "orphan is another version of an indexed instance; kept");
            report.conflicting.push(key.to_string());
            return Ok(());
        }
    }
    let stream = ingest.store().stream(key, None).await?;
    let origin = Origin {
        kind: OriginKind::Import,
        who: format!("verify --reindex {key}"),
        address: None,
    };
    match ingest.ingest(stream, origin, &Expected::default()).await {
        Ok(Outcome::Stored(_)) => report.reindexed.push(key.to_string()),
        Ok(Outcome::AlreadyStored(a)) => {
            // Another copy of this instance is indexed; this one is a losing duplicate.
            tracing::info!(key = %key, sop = %a.sop_instance_uid, "orphan duplicates an indexed instance; deleting it");
            ingest.store().delete(key).await?;
            report.deleted.push(key.to_string());
        }
        Ok(Outcome::Rejected(r)) if r.reason == Reason::ConflictingDuplicate => {
            // A losing version of an indexed instance (S3: not caught above).
            tracing::info!(key = %key, "orphan is another version of an indexed instance; deleting it");
            ingest.store().delete(key).await?;
            report.deleted.push(key.to_string());
        }
        Ok(Outcome::Rejected(r))
            if strict && matches!(r.reason, Reason::OutOfResources | Reason::ProcessingFailure) =>
        {
            return Err(VerifyError::Recovery(format!(
                "{key} could not be stored again: {r}"
            )));
        }
        Ok(Outcome::Rejected(r)) => {
            tracing::warn!(key = %key, reason = %r, "orphan could not be re-indexed")
        }
        Err(e) if strict => {
            return Err(VerifyError::Recovery(format!(
                "{key} could not be read: {e}"
            )));
        }
        Err(e) => tracing::warn!(key = %key, error = %e, "orphan could not be read"),
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
    let Some(root) = ingest.store().fs_root().map(Path::to_owned) else {
        return Ok(report);
    };
    let newest = ingest.index().newest_stored_at().await?;
    let since = newest.map_or(i64::MIN, |ms| ms / 1000 - RECOVERY_WINDOW_SECS);
    let studies = tokio::task::spawn_blocking(move || recent_study_dirs(&root, since))
        .await
        .map_err(|e| StorageError::Internal(format!("recovery listing failed: {e}")))??;
    report.directories = studies.len();
    for (study, keys) in studies {
        let indexed: HashSet<String> = ingest
            .index()
            .study_object_keys(&study)
            .await?
            .into_iter()
            .collect();
        // Oldest first: of two versions of one instance, the one written first is the one
        // the index took (the other was refused as a conflicting duplicate).
        let mut orphans: Vec<_> = keys
            .into_iter()
            .filter(|(k, _)| !indexed.contains(k.as_str()))
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

/// The objects (key, when written in milliseconds since the epoch) in each study directory
/// of `root` modified at or after `since` (seconds since the epoch). Blocking.
#[allow(clippy::type_complexity)]
fn recent_study_dirs(
    root: &Path,
    since: i64,
) -> Result<Vec<(Uid, Vec<(ObjectKey, i64)>)>, StorageError> {
    fn io<'a>(what: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> StorageError + 'a {
        move |e| StorageError::io(what, path, e)
    }
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(StorageError::io("listing", root, e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("listing", root))?;
        let Some(study) = entry.file_name().to_str().and_then(|n| Uid::parse(n).ok()) else {
            continue;
        };
        let dir = entry.path();
        let meta = entry.metadata().map_err(io("reading", &dir))?;
        if !meta.is_dir() || modified_secs(&meta) < since {
            continue;
        }
        let mut keys = Vec::new();
        for file in std::fs::read_dir(&dir).map_err(io("listing", &dir))? {
            let file = file.map_err(io("listing", &dir))?;
            let name = file.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(key) = ObjectKey::parse(&format!("{study}/{name}")) {
                let meta = file.metadata().map_err(io("reading", &dir))?;
                keys.push((key, modified_millis(&meta)));
            }
        }
        found.push((study, keys));
    }
    Ok(found)
}

fn modified_secs(meta: &std::fs::Metadata) -> i64 {
    modified_millis(meta).saturating_div(1000)
}

/// A file's modification time in milliseconds since the epoch (the far future if unknown:
/// such a file counts as recent).
fn modified_millis(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(i64::MAX, |d| d.as_millis() as i64)
}
