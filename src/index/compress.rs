//! Compression at rest in the index: which instances are candidates, the intent recorded
//! before a re-encoded object is written, and the swap of an instance's row to it — which
//! keeps the SHA-256 of the bytes as received beside the one of the bytes now stored.

use sqlx::Row;

use super::{Index, IndexError};
use crate::model::clock::now_millis;
use crate::model::{ObjectKey, Sha256, TransferSyntax, Uid};

/// The transfer syntaxes a candidate may be stored in: uncompressed ones.
const UNCOMPRESSED: &str =
    "('1.2.840.10008.1.2', '1.2.840.10008.1.2.1', '1.2.840.10008.1.2.2', '1.2.840.10008.1.2.1.99')";

/// An instance that may be re-encoded.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub sop_instance_uid: Uid,
    pub study_uid: Uid,
    pub sop_class_uid: Uid,
    pub modality: Option<String>,
    pub object_key: ObjectKey,
    pub transfer_syntax: TransferSyntax,
    pub size: u64,
    pub sha256: Sha256,
}

/// The re-encoded object an instance's row moves to.
#[derive(Debug, Clone)]
pub struct Replacement {
    pub object_key: ObjectKey,
    pub sha256: Sha256,
    pub size: u64,
    pub transfer_syntax: TransferSyntax,
    pub part10_prefix: i64,
    pub frame_table: Option<Vec<u8>>,
    pub attrs_json: String,
    pub metadata_json: String,
}

/// How an instance's compression ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressState {
    Done,
    /// Not a candidate (compressed already, colour, no pixel data, excluded by a rule…).
    Skipped,
    /// The re-encoded object did not verify, or could not be written: the original stays.
    Failed,
}

impl CompressState {
    pub fn as_str(self) -> &'static str {
        match self {
            CompressState::Done => "done",
            CompressState::Skipped => "skipped",
            CompressState::Failed => "failed",
        }
    }
}

fn candidate(row: &sqlx::any::AnyRow) -> Result<Candidate, sqlx::Error> {
    let uid = |c: &str| -> Result<Uid, sqlx::Error> {
        let raw: String = row.try_get(c)?;
        Uid::parse(&raw).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    };
    let ts: String = row.try_get("transfer_syntax")?;
    let key: String = row.try_get("object_key")?;
    let sha: String = row.try_get("sha256")?;
    let size: i64 = row.try_get("size")?;
    Ok(Candidate {
        sop_instance_uid: uid("sop_instance_uid")?,
        study_uid: uid("study_uid")?,
        sop_class_uid: uid("sop_class_uid")?,
        modality: row.try_get("modality")?,
        object_key: ObjectKey::parse(&key)
            .ok_or_else(|| sqlx::Error::Decode(format!("object key {key:?}").into()))?,
        transfer_syntax: TransferSyntax::parse(&ts)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        size: u64::try_from(size).unwrap_or(0),
        sha256: Sha256::parse_hex(&sha).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    })
}

impl Index {
    /// Instances not looked at yet, stored uncompressed, in studies unchanged since
    /// `idle_before` (milliseconds since the epoch); of one study when given.
    pub async fn compress_candidates(
        &self,
        idle_before: i64,
        study: Option<&Uid>,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Candidate>, IndexError> {
        let sql = format!(
            "SELECT i.sop_instance_uid, st.study_uid, i.sop_class_uid, se.modality, i.object_key, \
             i.transfer_syntax, i.size, i.sha256 FROM instances i \
             JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = i.study_pk \
             WHERE i.compress_state IS NULL AND i.transfer_syntax IN {UNCOMPRESSED} \
             AND st.updated_at <= $1 AND ($2 = '' OR st.study_uid = $2) ORDER BY i.id LIMIT {limit} OFFSET {offset}"
        );
        let rows = sqlx::query(&sql)
            .bind(idle_before)
            .bind(study.map(Uid::as_str).unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(candidate).collect::<Result<_, _>>()?)
    }

    /// How many instances are still to be looked at.
    pub async fn compress_backlog(&self) -> Result<i64, IndexError> {
        let sql = format!(
            "SELECT COUNT(*) FROM instances WHERE compress_state IS NULL \
             AND transfer_syntax IN {UNCOMPRESSED}"
        );
        Ok(sqlx::query_scalar(&sql).fetch_one(&self.pool).await?)
    }

    /// Record that each new key is about to be written as the re-encoded old key of its
    /// instance: (new key, SOP Instance UID, old key), in one transaction.
    pub async fn add_compress_intents(
        &self,
        intents: &[(&ObjectKey, &Uid, &ObjectKey)],
    ) -> Result<(), IndexError> {
        let mut tx = self.pool.begin().await?;
        for (key, sop, old_key) in intents {
            sqlx::query(
                "INSERT INTO compress_intents (object_key, sop_instance_uid, old_key, created_at) \
                 VALUES ($1,$2,$3,$4) ON CONFLICT (object_key) DO NOTHING",
            )
            .bind(key.as_str())
            .bind(sop.as_str())
            .bind(old_key.as_str())
            .bind(now_millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Intents older than `before`: (new key, old key, whether the row was swapped to the
    /// new key).
    pub async fn compress_intents(
        &self,
        before: i64,
    ) -> Result<Vec<(ObjectKey, ObjectKey, bool)>, IndexError> {
        let rows = sqlx::query(
            "SELECT object_key, old_key, state FROM compress_intents WHERE created_at < $1",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let (new, old, state): (String, String, String) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            if let (Some(new), Some(old)) = (ObjectKey::parse(&new), ObjectKey::parse(&old)) {
                out.push((new, old, state == "swapped"));
            }
        }
        Ok(out)
    }

    pub async fn drop_compress_intent(&self, key: &ObjectKey) -> Result<(), IndexError> {
        self.settle_compress(&[key], &[]).await
    }

    /// After a group of instances was handled: drop the intents whose left-over object is
    /// gone, and record how the instances not re-encoded ended; one transaction.
    pub async fn settle_compress(
        &self,
        intents: &[&ObjectKey],
        states: &[(&Uid, CompressState)],
    ) -> Result<(), IndexError> {
        if intents.is_empty() && states.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for key in intents {
            sqlx::query("DELETE FROM compress_intents WHERE object_key = $1")
                .bind(key.as_str())
                .execute(&mut *tx)
                .await?;
        }
        for (sop, state) in states {
            sqlx::query("UPDATE instances SET compress_state = $1 WHERE sop_instance_uid = $2")
                .bind(state.as_str())
                .bind(sop.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Move each instance's row from its old key to the re-encoded object, keeping the
    /// SHA-256 of the bytes as received, and mark the intent swapped (the old object is to
    /// be deleted, then the intent dropped); one transaction. An instance whose row no
    /// longer points at the old key (deleted, or re-encoded by another process meanwhile),
    /// or whose intent was given up, is not swapped (false).
    pub async fn swap_compressed(
        &self,
        swaps: &[(&Uid, &ObjectKey, &Replacement)],
    ) -> Result<Vec<bool>, IndexError> {
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(swaps.len());
        for (sop, old_key, new) in swaps {
            // The intent is claimed first, which locks it: recovery (another process
            // starting) may be giving it up and deleting the object.
            let key = new.object_key.as_str();
            let claimed = sqlx::query(
                "UPDATE compress_intents SET state = 'swapped' WHERE object_key = $1 AND state = 'pending'",
            )
            .bind(key)
            .execute(&mut *tx)
            .await?;
            let swapped =
                claimed.rows_affected() == 1 && swap_row(&mut tx, sop, old_key, new).await?;
            if claimed.rows_affected() == 1 && !swapped {
                sqlx::query("UPDATE compress_intents SET state = 'pending' WHERE object_key = $1")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
            out.push(swapped);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The SHA-256 of an instance's bytes as received (the stored one unless re-encoded).
    pub async fn received_sha256(&self, sop: &Uid) -> Result<Option<Sha256>, IndexError> {
        let raw: Option<String> = sqlx::query_scalar(
            "SELECT COALESCE(received_sha256, sha256) FROM instances WHERE sop_instance_uid = $1",
        )
        .bind(sop.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(raw.and_then(|s| Sha256::parse_hex(&s).ok()))
    }
}

async fn swap_row(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    sop: &Uid,
    old_key: &ObjectKey,
    new: &Replacement,
) -> Result<bool, IndexError> {
    let done = sqlx::query(
        "UPDATE instances SET received_sha256 = COALESCE(received_sha256, sha256), \
         object_key = $1, sha256 = $2, size = $3, transfer_syntax = $4, part10_prefix = $5, \
         frame_table = $6, attrs_json = $7, metadata_json = $8, compress_state = 'done' \
         WHERE sop_instance_uid = $9 AND object_key = $10",
    )
    .bind(new.object_key.as_str())
    .bind(new.sha256.to_string())
    .bind(new.size as i64)
    .bind(new.transfer_syntax.as_str())
    .bind(new.part10_prefix)
    .bind(&new.frame_table)
    .bind(&new.attrs_json)
    .bind(&new.metadata_json)
    .bind(sop.as_str())
    .bind(old_key.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}
