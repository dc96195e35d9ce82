//! What local cache mode may delete: studies whose every instance has forwarding jobs and
//! all of them delivered (with storage commitment: confirmed), with their size and when
//! they were last used — stored to, or read as the audit trail records it.

use super::admin::{delete_instance, settle_study};
use super::read::Scope;
use super::{Index, IndexError};
use crate::model::clock::now_millis;
use crate::model::{ObjectKey, Uid};

/// A study that every destination its rules name has received in full.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Delivered {
    pub study_uid: Uid,
    pub instances: i64,
    pub bytes: i64,
    /// The later of its last store and its last recorded read (ms since the epoch).
    pub last_used_at: i64,
}

/// Instances of study `$1` (by key) not yet delivered everywhere, or sent nowhere.
const UNDELIVERED: &str = "SELECT COUNT(*) FROM instances u WHERE u.study_pk = $1 AND ( \
     NOT EXISTS (SELECT 1 FROM forward_jobs j WHERE j.sop_instance_uid = u.sop_instance_uid) \
     OR EXISTS (SELECT 1 FROM forward_jobs j WHERE j.sop_instance_uid = u.sop_instance_uid \
                AND j.state <> 'delivered'))";

impl Index {
    /// Every fully delivered study, least recently used first.
    pub async fn delivered_studies(&self) -> Result<Vec<Delivered>, IndexError> {
        let sql = format!(
            "SELECT st.study_uid, COUNT(*) AS instances, CAST(SUM(i.size) AS BIGINT) AS bytes, \
             MAX(st.updated_at) AS updated_at, \
             COALESCE((SELECT MAX(a.at) FROM audit_events a WHERE a.study_uid = st.study_uid \
                       AND a.action = 'read'), 0) AS read_at \
             FROM studies st JOIN instances i ON i.study_pk = st.id \
             WHERE ({}) = 0 GROUP BY st.id, st.study_uid",
            UNDELIVERED.replace("$1", "st.id")
        );
        let rows: Vec<(Uid, i64, i64, i64, i64)> =
            sqlx::query_as(&sql).fetch_all(&self.pool).await?;
        let mut out: Vec<Delivered> = rows
            .into_iter()
            .map(|(study_uid, instances, bytes, updated, read)| Delivered {
                study_uid,
                instances,
                bytes,
                last_used_at: updated.max(read),
            })
            .collect();
        out.sort_by(|a, b| (a.last_used_at, &a.study_uid).cmp(&(b.last_used_at, &b.study_uid)));
        Ok(out)
    }

    /// The bytes of every stored instance.
    pub async fn stored_bytes(&self) -> Result<i64, IndexError> {
        Ok(
            sqlx::query_scalar("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM instances")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Delete `study` if it is still fully delivered, in one transaction with its change
    /// feed entries (as an admin delete): the instances deleted, none when it no longer
    /// qualifies (an instance arrived or was queued again meanwhile).
    pub async fn delete_delivered_study(
        &self,
        study: &Uid,
    ) -> Result<Vec<(Uid, ObjectKey)>, IndexError> {
        let scope = Scope {
            study: study.clone(),
            series: None,
            instance: None,
        };
        let located = self.locate(&scope).await?;
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let pk: Option<i64> = sqlx::query_scalar("SELECT id FROM studies WHERE study_uid = $1")
            .bind(study)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(pk) = pk else {
            return Ok(Vec::new());
        };
        let undelivered: i64 = sqlx::query_scalar(UNDELIVERED)
            .bind(pk)
            .fetch_one(&mut *tx)
            .await?;
        if undelivered > 0 || located.is_empty() {
            return Ok(Vec::new());
        }
        for loc in &located {
            delete_instance(&mut tx, loc, now).await?;
        }
        settle_study(&mut tx, pk, now).await?;
        tx.commit().await?;
        Ok(located
            .into_iter()
            .map(|l| (l.sop_instance_uid, l.object_key))
            .collect())
    }
}
