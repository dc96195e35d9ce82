//! Offline uploads and radiology orders in the index: everything the upload flow needs to
//! survive restarts and to be shared by several gateway processes.

use sqlx::Row;

use super::{Index, IndexError};
use crate::model::clock::now_millis;

/// A pending or finished offline upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub image_uuid: String,
    pub order_id: String,
    pub filename: String,
    pub file_size: i64,
    pub mime_type: String,
    pub checksum: String,
    pub study_uid: String,
    pub series_uid: String,
    pub image_uid: String,
    pub state: String,
    pub received: i64,
    pub sop_instance_uid: Option<String>,
    pub sha256: Option<String>,
    pub stored_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub const PENDING: &str = "pending";
pub const STORED: &str = "stored";

/// A received part of an upload.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub start: i64,
    pub length: i64,
    pub object_key: String,
}

/// A radiology order as registered by the hospital system.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Order {
    #[serde(skip_deserializing)]
    pub order_id: String,
    pub accession_number: Option<String>,
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
}

/// A study as listed for an order.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StudySummary {
    pub study_id: i64,
    pub study_instance_uid: String,
    pub study_date: Option<String>,
    pub study_description: Option<String>,
    pub accession_number: Option<String>,
    pub modalities: String,
    pub number_of_series: i64,
    pub number_of_instances: i64,
    /// How the study belongs to the order: "upload" or "accession_number".
    pub linked_by: String,
}

const UPLOAD_COLS: &str = "image_uuid, order_id, filename, file_size, mime_type, checksum, study_uid, \
     series_uid, image_uid, state, received, sop_instance_uid, sha256, stored_at, created_at, updated_at";

fn upload(r: &sqlx::any::AnyRow) -> Result<Upload, sqlx::Error> {
    Ok(Upload {
        image_uuid: r.try_get(0)?,
        order_id: r.try_get(1)?,
        filename: r.try_get(2)?,
        file_size: r.try_get(3)?,
        mime_type: r.try_get(4)?,
        checksum: r.try_get(5)?,
        study_uid: r.try_get(6)?,
        series_uid: r.try_get(7)?,
        image_uid: r.try_get(8)?,
        state: r.try_get(9)?,
        received: r.try_get(10)?,
        sop_instance_uid: r.try_get(11)?,
        sha256: r.try_get(12)?,
        stored_at: r.try_get(13)?,
        created_at: r.try_get(14)?,
        updated_at: r.try_get(15)?,
    })
}

impl Index {
    pub async fn upload(&self, image_uuid: &str) -> Result<Option<Upload>, IndexError> {
        let row = sqlx::query(&format!(
            "SELECT {UPLOAD_COLS} FROM offline_uploads WHERE image_uuid = $1"
        ))
        .bind(image_uuid)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(upload).transpose()?)
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
        .bind(&u.checksum)
        .bind(&u.study_uid)
        .bind(&u.series_uid)
        .bind(&u.image_uid)
        .bind(PENDING)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn upload_chunks(&self, image_uuid: &str) -> Result<Vec<Chunk>, IndexError> {
        let rows = sqlx::query(
            "SELECT start, length, object_key FROM offline_upload_chunks WHERE image_uuid = $1 ORDER BY start",
        )
        .bind(image_uuid)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Chunk {
                    start: r.try_get(0)?,
                    length: r.try_get(1)?,
                    object_key: r.try_get(2)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(IndexError::from)
    }

    /// Append a durably stored part if the upload still has `expected_received` bytes
    /// (another request may have raced this one); false if it did not.
    pub async fn add_upload_chunk(
        &self,
        image_uuid: &str,
        expected_received: i64,
        length: i64,
        object_key: &str,
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
        .bind(PENDING)
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
    pub async fn reset_upload(&self, image_uuid: &str) -> Result<Vec<String>, IndexError> {
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
        .bind(PENDING)
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
        sop_instance_uid: &str,
        sha256: &str,
        stored_at: i64,
    ) -> Result<Vec<String>, IndexError> {
        let chunks = self.upload_chunks(&u.image_uuid).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE offline_uploads SET state = $2, received = file_size, sop_instance_uid = $3, \
             sha256 = $4, stored_at = $5, updated_at = $6 WHERE image_uuid = $1",
        )
        .bind(&u.image_uuid)
        .bind(STORED)
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
        let rows = sqlx::query(
            "SELECT image_uuid FROM offline_uploads WHERE state = $1 AND updated_at < $2",
        )
        .bind(PENDING)
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(IndexError::from)
    }

    /// Remove a pending upload; returns its parts' keys.
    pub async fn delete_upload(&self, image_uuid: &str) -> Result<Vec<String>, IndexError> {
        let chunks = self.upload_chunks(image_uuid).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM offline_upload_chunks WHERE image_uuid = $1")
            .bind(image_uuid)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM offline_uploads WHERE image_uuid = $1 AND state = $2")
            .bind(image_uuid)
            .bind(PENDING)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(chunks.into_iter().map(|c| c.object_key).collect())
    }

    pub async fn pending_uploads(&self) -> Result<i64, IndexError> {
        let row = sqlx::query("SELECT COUNT(*) FROM offline_uploads WHERE state = $1")
            .bind(PENDING)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Register or update an order; true when it is new.
    pub async fn put_order(&self, o: &Order) -> Result<bool, IndexError> {
        let now = now_millis();
        let existed = self.order(&o.order_id).await?.is_some();
        sqlx::query(
            "INSERT INTO radiology_orders (order_id, accession_number, patient_id, patient_name, \
             patient_birth_date, patient_sex, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$7) \
             ON CONFLICT (order_id) DO UPDATE SET accession_number = excluded.accession_number, \
             patient_id = excluded.patient_id, patient_name = excluded.patient_name, \
             patient_birth_date = excluded.patient_birth_date, patient_sex = excluded.patient_sex, \
             updated_at = excluded.updated_at",
        )
        .bind(&o.order_id)
        .bind(&o.accession_number)
        .bind(&o.patient_id)
        .bind(&o.patient_name)
        .bind(&o.patient_birth_date)
        .bind(&o.patient_sex)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(!existed)
    }

    pub async fn order(&self, order_id: &str) -> Result<Option<Order>, IndexError> {
        let row = sqlx::query(
            "SELECT order_id, accession_number, patient_id, patient_name, patient_birth_date, patient_sex \
             FROM radiology_orders WHERE order_id = $1",
        )
        .bind(order_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(Order {
            order_id: r.try_get(0)?,
            accession_number: r.try_get(1)?,
            patient_id: r.try_get(2)?,
            patient_name: r.try_get(3)?,
            patient_birth_date: r.try_get(4)?,
            patient_sex: r.try_get(5)?,
        }))
    }

    /// The order's studies: linked by an offline upload, or stored (C-STORE, STOW-RS) with
    /// the order's accession number.
    pub async fn order_studies(&self, order: &Order) -> Result<Vec<StudySummary>, IndexError> {
        let accession = order.accession_number.clone().unwrap_or_default();
        let rows = sqlx::query(
            "SELECT st.id, st.study_uid, st.study_date, st.study_description, st.accession_number, \
             st.modalities, st.num_series, st.num_instances, \
             CASE WHEN so.order_id IS NULL THEN 'accession_number' ELSE 'upload' END \
             FROM studies st LEFT JOIN study_orders so ON so.study_uid = st.study_uid AND so.order_id = $1 \
             WHERE so.order_id IS NOT NULL OR ($2 <> '' AND st.accession_number = $2) \
             ORDER BY st.study_date, st.id",
        )
        .bind(&order.order_id)
        .bind(&accession)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StudySummary {
                    study_id: r.try_get(0)?,
                    study_instance_uid: r.try_get(1)?,
                    study_date: r.try_get(2)?,
                    study_description: r.try_get(3)?,
                    accession_number: r.try_get(4)?,
                    modalities: r.try_get(5)?,
                    number_of_series: r.try_get(6)?,
                    number_of_instances: r.try_get(7)?,
                    linked_by: r.try_get(8)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(IndexError::from)
    }
}
