//! The outbox of store-and-forward: one job per (destination, instance), inserted by the
//! writers in the transaction that indexes the instance (so no instance is acknowledged
//! without its jobs). Processes claim due jobs under a lease (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL, so two processes never take the same job); a lease whose process died
//! expires and the job is claimed again. Every state change checks the lease is still ours.

use super::{Backend, Index, IndexError};
use crate::model::clock::now_millis;
use crate::model::Uid;

/// A job claimed for delivery.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ForwardJob {
    pub id: i64,
    pub sop_instance_uid: Uid,
    pub study_uid: Uid,
    pub attempts: i64,
}

/// A job refused for good.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct FailedJob {
    pub sop_instance_uid: Uid,
    pub study_uid: Uid,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// One destination's outbox, by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxStatus {
    pub destination: String,
    pub pending: i64,
    /// Pending jobs under a live lease: being sent now.
    pub in_flight: i64,
    /// Stored by the peer, waiting for its storage commitment report.
    pub awaiting_commitment: i64,
    pub delivered: i64,
    pub failed: i64,
    /// When the oldest pending job was created (ms since the epoch).
    pub oldest_pending_at: Option<i64>,
    pub last_delivered_at: Option<i64>,
    /// The last error of a pending or failed job, and when that job was last tried.
    pub last_error: Option<String>,
}

/// destination, state, jobs, jobs under a live lease, oldest created, last delivered.
type StateCount = (String, String, i64, i64, Option<i64>, Option<i64>);

const DUE: &str = "SELECT id FROM forward_jobs WHERE destination = $3 AND state = 'pending' \
     AND not_before <= $4 AND (lease_until IS NULL OR lease_until < $4) \
     ORDER BY study_uid, id LIMIT $5";

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Index {
    /// Claim up to `limit` due jobs of `destination` for `owner` for `lease_ms`, in study
    /// order (then in the order they were stored).
    pub async fn claim_forward_jobs(
        &self,
        destination: &str,
        owner: &str,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<ForwardJob>, IndexError> {
        let now = now_millis();
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE forward_jobs SET lease_owner = $1, lease_until = $2 WHERE id IN ({DUE}{lock}) \
             RETURNING id, sop_instance_uid, study_uid, attempts"
        );
        let mut jobs: Vec<ForwardJob> = sqlx::query_as(&sql)
            .bind(owner)
            .bind(now + lease_ms)
            .bind(destination)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        jobs.sort_by(|a, b| (&a.study_uid, a.id).cmp(&(&b.study_uid, b.id)));
        Ok(jobs)
    }

    /// How many of `destination`'s jobs are due and unclaimed now.
    pub async fn due_forward_jobs(&self, destination: &str) -> Result<i64, IndexError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM forward_jobs WHERE destination = $1 AND state = 'pending' \
             AND not_before <= $2 AND (lease_until IS NULL OR lease_until < $2)",
        )
        .bind(destination)
        .bind(now_millis())
        .fetch_one(&self.pool)
        .await?)
    }

    /// Extend the leases `owner` holds on `destination`'s pending jobs to `lease_ms` from now.
    pub async fn renew_forward_leases(
        &self,
        destination: &str,
        owner: &str,
        lease_ms: i64,
    ) -> Result<(), IndexError> {
        sqlx::query(
            "UPDATE forward_jobs SET lease_until = $3 WHERE destination = $1 AND lease_owner = $2 \
             AND state = 'pending'",
        )
        .bind(destination)
        .bind(owner)
        .bind(now_millis() + lease_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The peer has these instances (and, with commitment, confirmed them): recorded in
    /// one statement per batch (a crash before it means they are sent again, which an
    /// upstream keeping one copy per SOP Instance UID absorbs).
    pub async fn forward_delivered(&self, ids: &[i64], owner: &str) -> Result<(), IndexError> {
        for chunk in ids.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
            let sql = format!(
                "UPDATE forward_jobs SET state = 'delivered', delivered_at = $2, \
                 attempts = attempts + 1, last_error = NULL, lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner = $1 AND id IN ({})",
                list.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(owner).bind(now_millis());
            for id in chunk {
                q = q.bind(id);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// The peer has stored these jobs' instances (`(id, UID as sent)`) and is about to be
    /// asked to commit them under `transaction` (recorded first, so that a report arriving
    /// at once finds them): they wait for its report until `deadline` (ms since the
    /// epoch), then go again. `owner` keeps its claim until the request is answered.
    pub async fn forward_committing(
        &self,
        jobs: &[(i64, String)],
        owner: &str,
        transaction: &str,
        deadline: i64,
    ) -> Result<(), IndexError> {
        let mut tx = self.pool.begin().await?;
        for (id, sent) in jobs {
            sqlx::query(
                "UPDATE forward_jobs SET state = 'committing', commit_txn = $3, sent_uid = $4, \
                 attempts = attempts + 1, last_error = NULL, lease_until = $5 \
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(id)
            .bind(owner)
            .bind(transaction)
            .bind(sent)
            .bind(deadline)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The peer did not take the commitment request: the jobs are `owner`'s pending ones
    /// again (their outcome is recorded next, as for any failed attempt).
    pub async fn forward_commit_undo(
        &self,
        ids: &[i64],
        owner: &str,
        transaction: &str,
    ) -> Result<(), IndexError> {
        for id in ids {
            sqlx::query(
                "UPDATE forward_jobs SET state = 'pending', commit_txn = NULL, \
                 attempts = attempts - 1 WHERE id = $1 AND lease_owner = $2 AND commit_txn = $3 \
                 AND state = 'committing'",
            )
            .bind(id)
            .bind(owner)
            .bind(transaction)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// A storage commitment report: the `committed` instances (by UID as sent) of
    /// `transaction` are delivered — returned as (destination, study) — and the `failed`
    /// ones (with why) go again, counted.
    pub async fn forward_commitment(
        &self,
        transaction: &str,
        committed: &[String],
        failed: &[(String, String)],
    ) -> Result<(Vec<(String, Uid)>, u64), IndexError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let mut delivered = Vec::new();
        for uid in committed {
            let done: Option<(String, Uid)> = sqlx::query_as(
                "UPDATE forward_jobs SET state = 'delivered', delivered_at = $3, lease_until = NULL, \
                 lease_owner = NULL WHERE commit_txn = $1 AND sent_uid = $2 AND state = 'committing' \
                 RETURNING destination, study_uid",
            )
            .bind(transaction)
            .bind(uid)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            delivered.extend(done);
        }
        let mut again = 0;
        for (uid, why) in failed {
            let done = sqlx::query(
                "UPDATE forward_jobs SET state = 'pending', not_before = $3, last_error = $4, \
                 lease_until = NULL, lease_owner = NULL \
                 WHERE commit_txn = $1 AND sent_uid = $2 AND state = 'committing'",
            )
            .bind(transaction)
            .bind(uid)
            .bind(now)
            .bind(why)
            .execute(&mut *tx)
            .await?;
            again += done.rows_affected();
        }
        tx.commit().await?;
        Ok((delivered, again))
    }

    /// Jobs of `destination` whose commitment report did not come in time go again; how
    /// many.
    pub async fn forward_commitment_expired(&self, destination: &str) -> Result<u64, IndexError> {
        let now = now_millis();
        let done = sqlx::query(
            "UPDATE forward_jobs SET state = 'pending', not_before = $2, lease_until = NULL, \
             lease_owner = NULL, last_error = 'no storage commitment report in time; sent again' \
             WHERE destination = $1 AND state = 'committing' AND lease_until < $2",
        )
        .bind(destination)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Give a job back, to be claimed again at `not_before` (ms since the epoch); `error`
    /// says what went wrong. `attempted`: whether it counts as an attempt (it does not
    /// when the destination could not be reached and nothing was sent).
    pub async fn forward_later(
        &self,
        id: i64,
        owner: &str,
        not_before: i64,
        error: &str,
        attempted: bool,
    ) -> Result<(), IndexError> {
        sqlx::query(
            "UPDATE forward_jobs SET attempts = attempts + $5, not_before = $3, last_error = $4, \
             lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .bind(not_before)
        .bind(error)
        .bind(i64::from(attempted))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A refusal that will not change: the job stops, with the peer's reason.
    pub async fn forward_failed(
        &self,
        id: i64,
        owner: &str,
        error: &str,
    ) -> Result<(), IndexError> {
        sqlx::query(
            "UPDATE forward_jobs SET state = 'failed', attempts = attempts + 1, last_error = $3, \
             lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every destination's outbox.
    pub async fn outbox_status(&self) -> Result<Vec<OutboxStatus>, IndexError> {
        let now = now_millis();
        let rows: Vec<StateCount> = sqlx::query_as(
            "SELECT destination, state, COUNT(*), \
             SUM(CASE WHEN lease_until IS NOT NULL AND lease_until >= $1 THEN 1 ELSE 0 END), \
             MIN(created_at), MAX(delivered_at) FROM forward_jobs GROUP BY destination, state",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<OutboxStatus> = Vec::new();
        for (destination, state, count, leased, oldest, last) in rows {
            let at = match out.iter().position(|s| s.destination == destination) {
                Some(i) => i,
                None => {
                    out.push(OutboxStatus {
                        destination: destination.clone(),
                        ..Default::default()
                    });
                    out.len() - 1
                }
            };
            let s = &mut out[at];
            match state.as_str() {
                "pending" => {
                    s.pending = count;
                    s.in_flight = leased;
                    s.oldest_pending_at = earliest(s.oldest_pending_at, oldest);
                }
                "delivered" => {
                    s.delivered = count;
                    s.last_delivered_at = last;
                }
                "committing" => {
                    s.awaiting_commitment = count;
                    s.oldest_pending_at = earliest(s.oldest_pending_at, oldest);
                }
                _ => s.failed = count,
            }
        }
        for s in &mut out {
            s.last_error = sqlx::query_scalar(
                "SELECT last_error FROM forward_jobs WHERE destination = $1 AND state <> 'delivered' \
                 AND last_error IS NOT NULL ORDER BY not_before DESC LIMIT 1",
            )
            .bind(&s.destination)
            .fetch_optional(&self.pool)
            .await?;
        }
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        Ok(out)
    }

    /// `destination`'s failed jobs (at most `limit`), by study.
    pub async fn failed_forward_jobs(
        &self,
        destination: &str,
        limit: i64,
    ) -> Result<Vec<FailedJob>, IndexError> {
        Ok(sqlx::query_as(
            "SELECT sop_instance_uid, study_uid, attempts, last_error FROM forward_jobs \
             WHERE destination = $1 AND state = 'failed' ORDER BY study_uid, id LIMIT $2",
        )
        .bind(destination)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Queue `destination`'s failed jobs again, as new; how many.
    pub async fn retry_failed_forward_jobs(&self, destination: &str) -> Result<u64, IndexError> {
        let done = sqlx::query(
            "UPDATE forward_jobs SET state = 'pending', attempts = 0, not_before = $2 \
             WHERE destination = $1 AND state = 'failed'",
        )
        .bind(destination)
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        self.outbox.notify_waiters();
        Ok(done.rows_affected())
    }

    /// Queue every instance of `study` for `destination` now, delivered before or not (a
    /// job being sent keeps its lease); how many instances.
    pub async fn queue_study_forward(
        &self,
        destination: &str,
        study: &Uid,
    ) -> Result<u64, IndexError> {
        let done = sqlx::query(
            "INSERT INTO forward_jobs (destination, sop_instance_uid, study_uid, not_before, created_at) \
             SELECT $1, i.sop_instance_uid, st.study_uid, $2, $2 FROM instances i \
             JOIN studies st ON st.id = i.study_pk WHERE st.study_uid = $3 \
             ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET state = 'pending', \
             attempts = 0, not_before = excluded.not_before, last_error = NULL",
        )
        .bind(destination)
        .bind(now_millis())
        .bind(study)
        .execute(&self.pool)
        .await?;
        self.outbox.notify_waiters();
        Ok(done.rows_affected())
    }

    /// Pending jobs of `destination` and when the oldest was created (for the gauges).
    pub async fn forward_backlog(
        &self,
        destination: &str,
    ) -> Result<(i64, Option<i64>), IndexError> {
        Ok(sqlx::query_as(
            "SELECT COUNT(*), MIN(created_at) FROM forward_jobs \
             WHERE destination = $1 AND state IN ('pending', 'committing')",
        )
        .bind(destination)
        .fetch_one(&self.pool)
        .await?)
    }
}
