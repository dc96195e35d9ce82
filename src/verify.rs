//! `pacs-lite verify`: re-read every stored object and recompute its SHA-256; report
//! missing objects and mismatches; list orphans (objects no index row points to) and,
//! on request, re-index them (`--reindex`, the recovery path after a crash between the
//! object write and the index commit) or delete them (`--delete-orphans`).
//!
//! Orphans younger than a grace period are left alone: they may belong to an ingest
//! that has written its object and is about to commit its row.

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::index::{IndexError, Origin, OriginKind, StoredInstance};
use crate::ingest::{Expected, Ingest, Outcome, Reason};
use crate::storage::{ObjectKey, StorageError};

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
    let now = crate::index::now_millis() / 1000;
    let listing = ingest.store().list().await?;
    let mut listing = std::pin::pin!(listing);
    while let Some(entry) = listing.next().await {
        let key = match entry? {
            Ok(key) => key,
            // Parts of offline uploads in progress belong to the upload flow (which
            // expires them), not to the instances.
            Err(raw) if raw.starts_with(crate::storage::UPLOADS_PREFIX) => continue,
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
            reindex(ingest, &key, &mut report).await?;
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
    let mut stream = match ingest.store().stream(&key, None).await {
        Ok(s) => s,
        Err(StorageError::NotFound(_)) => return Ok(Check::Missing),
        Err(e) => return Err(e.into()),
    };
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let digest = hex::encode(hasher.finalize());
    let ok = digest == row.sha256 && digest == key.sha256_hex() && len == row.size as u64;
    Ok(if ok {
        Check::Intact(len)
    } else {
        Check::Mismatch
    })
}

/// Feed an orphan back through ingest: it is a complete, self-describing object whose
/// row was lost (a crash between object write and index commit).
async fn reindex(
    ingest: &Ingest,
    key: &ObjectKey,
    report: &mut VerifyReport,
) -> Result<(), VerifyError> {
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
            // A losing version of an indexed instance (a crash before it was swept).
            tracing::info!(key = %key, "orphan is another version of an indexed instance; deleting it");
            ingest.store().delete(key).await?;
            report.deleted.push(key.to_string());
        }
        Ok(Outcome::Rejected(r)) => {
            tracing::warn!(key = %key, reason = %r, "orphan could not be re-indexed")
        }
        Err(e) => tracing::warn!(key = %key, error = %e, "orphan could not be read"),
    }
    Ok(())
}
