//! Offline uploads in the index: everything the upload flow needs to
//! survive restarts and to be shared by several gateway processes.

use super::{Index, IndexError};
use crate::model::clock::now_millis;
use crate::model::{ObjectKey, OrderId, Sha256, Uid};

/// Where an offline upload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    /// Metadata known, bytes (partly) missing.
    Pending,
    /// Stored and indexed: the ACK may be given.
    Stored,
}

impl UploadState {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::Pending => "pending",
            UploadState::Stored => "stored",
        }
    }
}

impl TryFrom<String> for UploadState {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "pending" => Ok(UploadState::Pending),
            "stored" => Ok(UploadState::Stored),
            _ => Err(format!("unknown upload state {s:?}")),
        }
    }
}

/// A pending or finished offline upload.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Upload {
    /// The client's UUID for the image (lower-case, hyphenated).
    pub image_uuid: String,
    pub order_id: OrderId,
    pub filename: String,
    pub file_size: i64,
    pub mime_type: String,
    /// The SHA-256 the client declared for the file.
    pub checksum: Sha256,
    pub study_uid: Uid,
    pub series_uid: Uid,
    pub image_uid: Uid,
    pub state: UploadState,
    pub received: i64,
    pub sop_instance_uid: Option<Uid>,
    /// The SHA-256 of the stored instance (for photos: of the wrapped object).
    pub sha256: Option<Sha256>,
    pub stored_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A received part of an upload.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Chunk {
    pub start: i64,
    pub length: i64,
    pub object_key: ObjectKey,
}

const UPLOAD_COLS: &str = "image_uuid, order_id, filename, file_size, mime_type, checksum, study_uid, \
     series_uid, image_uid, state, received, sop_instance_uid, sha256, stored_at, created_at, updated_at";

impl Index {
    pub async fn upload(&self, image_uuid: &str) -> Result<Option<Upload>, IndexError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {UPLOAD_COLS} FROM offline_uploads WHERE image_uuid = $1"
        ))
        .bind(image_uuid)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Record a new pending upload; false if the UUID is taken (the caller compares).
    pub async fn create_upload(&self, u: &Upload) -> Result<bool, IndexError> {
        let now = now_millis();
        let done = sqlx::query(
            "INSERT INTO offline_uploads (image_uuid, order_id, filename, file_size, mime_type, checksum, \
             study_uid, series_uid, image_uid, state, received, created_at, updated_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,0,$11,$11) ON CONFLICT (image_uuid) DO NOTHING",
        )
        .bind(&u.image_uuid)
        .bind(&u.order_id)
        .bind(&u.filename)
        .bind(u.file_size)
        .bind(&u.mime_type)
        .bind(u.checksum)
        .bind(&u.study_uid)
        .bind(&u.series_uid)
        .bind(&u.image_uid)
        .bind(UploadState::Pending.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn upload_chunks(&self, image_uuid: &str) -> Result<Vec<Chunk>, IndexError> {
        Ok(sqlx::query_as(
            "SELECT start, length, object_key FROM offline_upload_chunks WHERE image_uuid = $1 ORDER BY start",
        )
        .bind(image_uuid)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Append a durably stored part if the upload still has `expected_received` bytes
    /// (another request may have raced this one); false if it did not.
    pub async fn add_upload_chunk(
        &self,
        image_uuid: &str,
        expected_received: i64,
        length: i64,
        object_key: &ObjectKey,
    ) -> Result<bool, IndexError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE offline_uploads SET received = received + $3, updated_at = $4 \
             WHERE image_uuid = $1 AND received = $2 AND state = $5",
        )
        .bind(image_uuid)
        .bind(expected_received)
        .bind(length)
        .bind(now_millis())
        .bind(UploadState::Pending.as_str())
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO offline_upload_chunks (image_uuid, start, length, object_key) VALUES ($1,$2,$3,$4)",
        )
        .bind(image_uuid)
        .bind(expected_received)
        .bind(length)
        .bind(object_key)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Forget the received parts (restart from zero); returns their object keys.
    pub async fn reset_upload(&self, image_uuid: &str) -> Result<Vec<ObjectKey>, IndexError> {
        let chunks = self.upload_chunks(image_uuid).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM offline_upload_chunks WHERE image_uuid = $1")
            .bind(image_uuid)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE offline_uploads SET received = 0, updated_at = $2 WHERE image_uuid = $1 AND state = $3",
        )
        .bind(image_uuid)
        .bind(now_millis())
        .bind(UploadState::Pending.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(chunks.into_iter().map(|c| c.object_key).collect())
    }

    /// The upload is stored and indexed: record what, link its study to the order, and
    /// drop the parts (returns their keys, to delete from the store).
    pub async fn finish_upload(
        &self,
        u: &Upload,
        sop_instance_uid: &Uid,
        sha256: &Sha256,
        stored_at: i64,
    ) -> Result<Vec<ObjectKey>, IndexError> {
        let chunks = self.upload_chunks(&u.image_uuid).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE offline_uploads SET state = $2, received = file_size, sop_instance_uid = $3, \
             sha256 = $4, stored_at = $5, updated_at = $6 WHERE image_uuid = $1",
        )
        .bind(&u.image_uuid)
        .bind(UploadState::Stored.as_str())
        .bind(sop_instance_uid)
        .bind(sha256)
        .bind(stored_at)
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM offline_upload_chunks WHERE image_uuid = $1")
            .bind(&u.image_uuid)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO study_orders (study_uid, order_id, linked_at) VALUES ($1,$2,$3) \
             ON CONFLICT (study_uid) DO NOTHING",
        )
        .bind(&u.study_uid)
        .bind(&u.order_id)
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(chunks.into_iter().map(|c| c.object_key).collect())
    }

    /// Pending uploads without progress since `before` (milliseconds).
    pub async fn stale_uploads(&self, before: i64) -> Result<Vec<String>, IndexError> {
        Ok(sqlx::query_scalar(
            "SELECT image_uuid FROM offline_uploads WHERE state = $1 AND updated_at < $2",
        )
        .bind(UploadState::Pending.as_str())
        .bind(before)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Remove a pending upload; returns its parts' keys.
    pub async fn delete_upload(&self, image_uuid: &str) -> Result<Vec<ObjectKey>, IndexError> {
        let chunks = self.upload_chunks(image_uuid).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM offline_upload_chunks WHERE image_uuid = $1")
            .bind(image_uuid)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM offline_uploads WHERE image_uuid = $1 AND state = $2")
            .bind(image_uuid)
            .bind(UploadState::Pending.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(chunks.into_iter().map(|c| c.object_key).collect())
    }

    pub async fn pending_uploads(&self) -> Result<i64, IndexError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM offline_uploads WHERE state = $1")
                .bind(UploadState::Pending.as_str())
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
