//! Modality Performed Procedure Steps in the index: created once (N-CREATE), updated while
//! in progress (N-SET), and each moving its order on in the same transaction.

use sqlx::Row;

use super::{Index, IndexError};
use crate::model::clock::now_millis;
use crate::model::{OrderId, OrderStatus, Uid};

/// A performed procedure step as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mpps {
    pub sop_instance_uid: Uid,
    pub order_id: Option<OrderId>,
    /// PerformedProcedureStepStatus: IN PROGRESS, COMPLETED or DISCONTINUED.
    pub status: String,
    pub station_ae: Option<String>,
    pub performed_series: Vec<String>,
    /// The data set (Explicit VR Little Endian) as created and last set.
    pub data_set: Vec<u8>,
    pub updated_at: i64,
}

/// An MPPS as the orders API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MppsSummary {
    pub sop_instance_uid: String,
    pub status: String,
    pub station_ae: Option<String>,
    pub performed_series: Vec<String>,
}

fn series_list(s: Option<String>) -> Vec<String> {
    s.map(|s| {
        s.split('\\')
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

impl Index {
    /// The order a performed step is for: by the order's Study Instance UID, else by its
    /// accession number (the newest open order with it).
    pub async fn order_for_step(
        &self,
        study_uid: Option<&str>,
        accession: Option<&str>,
    ) -> Result<Option<OrderId>, IndexError> {
        Ok(sqlx::query_scalar(
            "SELECT order_id FROM radiology_orders WHERE ($1 <> '' AND study_uid = $1) \
             OR ($2 <> '' AND accession_number = $2) \
             ORDER BY CASE WHEN study_uid = $1 THEN 0 ELSE 1 END, updated_at DESC LIMIT 1",
        )
        .bind(study_uid.unwrap_or(""))
        .bind(accession.unwrap_or(""))
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Record a new performed step (IN PROGRESS) and start its order; false when one with
    /// this SOP Instance UID exists (nothing changed).
    pub async fn create_mpps(&self, m: &Mpps) -> Result<bool, IndexError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO mpps (sop_instance_uid, order_id, status, station_ae, performed_series, \
             data_set, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$7) \
             ON CONFLICT (sop_instance_uid) DO NOTHING",
        )
        .bind(m.sop_instance_uid.as_str())
        .bind(&m.order_id)
        .bind(&m.status)
        .bind(&m.station_ae)
        .bind(m.performed_series.join("\\"))
        .bind(&m.data_set)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(order) = &m.order_id {
            sqlx::query(
                "UPDATE radiology_orders SET status = 'in_progress', updated_at = $1 \
                 WHERE order_id = $2 AND status = 'scheduled'",
            )
            .bind(now)
            .bind(order)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn mpps(&self, uid: &Uid) -> Result<Option<Mpps>, IndexError> {
        let row = sqlx::query(
            "SELECT sop_instance_uid, order_id, status, station_ae, performed_series, data_set, \
             updated_at FROM mpps WHERE sop_instance_uid = $1",
        )
        .bind(uid.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(Mpps {
            sop_instance_uid: uid.clone(),
            order_id: row.try_get("order_id")?,
            status: row.try_get("status")?,
            station_ae: row.try_get("station_ae")?,
            performed_series: series_list(row.try_get("performed_series")?),
            data_set: row.try_get("data_set")?,
            updated_at: row.try_get("updated_at")?,
        }))
    }

    /// Replace a step read at `read.updated_at` while it is still IN PROGRESS as read;
    /// a final status moves its order to `order_status`. False when it changed meanwhile
    /// (read it again).
    pub async fn set_mpps(
        &self,
        read: &Mpps,
        next: &Mpps,
        order_status: Option<OrderStatus>,
    ) -> Result<bool, IndexError> {
        let now = now_millis().max(read.updated_at + 1);
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE mpps SET status = $1, performed_series = $2, data_set = $3, updated_at = $4 \
             WHERE sop_instance_uid = $5 AND status = 'IN PROGRESS' AND updated_at = $6",
        )
        .bind(&next.status)
        .bind(next.performed_series.join("\\"))
        .bind(&next.data_set)
        .bind(now)
        .bind(read.sop_instance_uid.as_str())
        .bind(read.updated_at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let (Some(order), Some(status)) = (&read.order_id, order_status) {
            sqlx::query(
                "UPDATE radiology_orders SET status = $1, updated_at = $2 \
                 WHERE order_id = $3 AND status IN ('scheduled', 'in_progress')",
            )
            .bind(status.as_str())
            .bind(now)
            .bind(order)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The performed steps of an order, oldest first.
    pub async fn order_mpps(&self, order: &OrderId) -> Result<Vec<MppsSummary>, IndexError> {
        let rows = sqlx::query(
            "SELECT sop_instance_uid, status, station_ae, performed_series FROM mpps \
             WHERE order_id = $1 ORDER BY created_at, sop_instance_uid",
        )
        .bind(order)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MppsSummary {
                    sop_instance_uid: r.try_get("sop_instance_uid")?,
                    status: r.try_get("status")?,
                    station_ae: r.try_get("station_ae")?,
                    performed_series: series_list(r.try_get("performed_series")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(IndexError::from)
    }
}
