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

mod recover;

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::index::{IndexError, StoredInstance};
use crate::ingest::Ingest;
use crate::model::clock::now_millis;
use crate::model::{ObjectKey, UPLOADS_PREFIX};
use crate::storage::StorageError;

pub use recover::{recover_recent, RecoveryReport};

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
    let keys = check_rows(ingest, opts, &mut report).await?;
    let listing = ingest.store().list().await?;
    let mut listing = std::pin::pin!(listing);
    while let Some(entry) = listing.next().await {
        let key = match entry? {
            Ok(key) => key,
            // Parts of offline uploads in progress belong to the upload flow (which
            // expires them), not to the instances.
            Err(raw) if raw.starts_with(UPLOADS_PREFIX) => continue,
            Err(raw) => {
                report.foreign.push(raw);
                continue;
            }
        };
        if keys.contains(&key) || ingest.index().key_is_referenced(&key).await? {
            continue;
        }
        orphan(ingest, opts, key, &mut report).await?;
    }
    Ok(report)
}

/// Re-hash the object of every index row; the keys the rows name.
async fn check_rows(
    ingest: &Ingest,
    opts: VerifyOptions,
    report: &mut VerifyReport,
) -> Result<HashSet<ObjectKey>, VerifyError> {
    let mut keys = HashSet::new();
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
        let named = || format!("{} ({})", row.sop_instance_uid, row.object_key);
        match check? {
            Check::Intact(n) => {
                report.intact += 1;
                report.bytes_checked += n;
            }
            Check::Missing => report.missing.push(named()),
            Check::Mismatch => report.mismatched.push(named()),
        }
        keys.insert(row.object_key);
    }
    Ok(keys)
}

/// An object no row points to: left alone while young, else reported and, on request,
/// re-indexed or deleted.
async fn orphan(
    ingest: &Ingest,
    opts: VerifyOptions,
    key: ObjectKey,
    report: &mut VerifyReport,
) -> Result<(), VerifyError> {
    let now = now_millis() / 1000;
    let modified = ingest.store().modified(&key).await?.unwrap_or(0);
    if now - modified < opts.grace_secs {
        report.recent_orphans.push(key.to_string());
        return Ok(());
    }
    report.orphans.push(key.to_string());
    if opts.reindex_orphans {
        recover::reindex(ingest, &key, report, false).await?;
    } else if opts.delete_orphans {
        ingest.store().delete(&key).await?;
        report.deleted.push(key.to_string());
    }
    Ok(())
}

async fn check_one(ingest: &Ingest, row: &StoredInstance) -> Result<Check, VerifyError> {
    let (digest, len) = match ingest.store().digest(&row.object_key).await {
        Ok(d) => d,
        Err(StorageError::NotFound(_)) => return Ok(Check::Missing),
        Err(e) => return Err(e.into()),
    };
    let ok = digest == row.sha256 && Some(digest) == row.object_key.sha256() && len == row.size;
    Ok(if ok {
        Check::Intact(len)
    } else {
        Check::Mismatch
    })
}
