//! The audit trail, the change feed, and deleting studies, series and instances.

use tokio::sync::mpsc;

use super::read::{InstanceLocation, Scope};
use super::{Index, IndexError};
use crate::model::clock::now_millis;
use crate::model::{ObjectKey, Uid};

/// One audited action.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct AuditEvent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub at: i64,
    /// Principal name, AE title, or `signed-url`.
    pub who: String,
    /// api-key, jwt, study-token, loopback, dimse, signed-url, upload…
    pub via: String,
    pub address: Option<String>,
    /// store, read, query, delete.
    pub action: String,
    pub study_uid: Option<String>,
    pub detail: Option<String>,
}

impl AuditEvent {
    pub fn new(who: &str, via: &str, address: Option<String>, action: &str) -> Self {
        AuditEvent {
            id: None,
            at: now_millis(),
            who: who.to_owned(),
            via: via.to_owned(),
            address,
            action: action.to_owned(),
            study_uid: None,
            detail: None,
        }
    }

    pub fn study(mut self, uid: impl Into<String>) -> Self {
        self.study_uid = Some(uid.into());
        self
    }

    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }
}

/// Which audit events to list.
#[derive(Debug, Default, serde::Deserialize)]
pub struct AuditFilter {
    pub study: Option<String>,
    pub who: Option<String>,
    pub action: Option<String>,
    /// Events after this id (paging).
    pub after: Option<i64>,
    pub limit: Option<i64>,
}

/// One change feed entry.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Change {
    pub sequence: i64,
    pub at: i64,
    pub action: String,
    pub study_uid: Uid,
    pub series_uid: Uid,
    pub sop_instance_uid: Uid,
    /// current (stored now), replaced (stored again since) or deleted.
    pub state: String,
    /// The instance's metadata while it is stored (absent once deleted).
    pub metadata_json: Option<String>,
}

/// The queue of audit events and the count of those not written yet.
#[derive(Clone)]
pub(super) struct AuditQueue {
    tx: mpsc::Sender<AuditEvent>,
    unwritten: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// How long the audit writer gathers events before it writes them.
const AUDIT_GATHER_MS: u64 = 50;

/// Where audit rows are written: through the pool, or on SQLite by the index writer's own
/// connection ([`super::sqlite_writer::Writer::write_audit`]). A pool connection there
/// would take SQLite's write lock from the storing threads, and SQLite makes a connection
/// that finds the lock taken sleep a millisecond or more before it looks again: on the
/// path of every acknowledgement, while the pool's commit waited for its fsync.
pub(super) enum AuditSink {
    Pool(sqlx::AnyPool),
    Sqlite(std::sync::Arc<super::sqlite_writer::Writer>),
}

/// Audit events wait here for the batch writer.
pub(super) fn spawn_audit_writer(sink: AuditSink) -> AuditQueue {
    let (tx, mut rx) = mpsc::channel::<AuditEvent>(16_384);
    let unwritten = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = unwritten.clone();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(256);
        while rx.recv_many(&mut batch, 256).await > 0 {
            // A moment to gather what follows: a burst of reads (a viewer opening a study)
            // costs one commit, one fsync, not one each. Nothing waits for these rows.
            tokio::time::sleep(std::time::Duration::from_millis(AUDIT_GATHER_MS)).await;
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            let n = batch.len();
            let result = match &sink {
                AuditSink::Pool(pool) => insert_audit(pool, &batch).await.map_err(IndexError::from),
                AuditSink::Sqlite(writer) => {
                    let writer = writer.clone();
                    let events = std::mem::take(&mut batch);
                    tokio::task::spawn_blocking(move || write_audit(&writer, &events))
                        .await
                        .unwrap_or(Err(IndexError::WriterGone))
                }
            };
            if let Err(e) = result {
                tracing::error!(error = %e, lost = n, "writing audit events failed");
            }
            counter.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
            batch.clear();
        }
    });
    AuditQueue { tx, unwritten }
}

/// Audit rows go in statements of these many rows (largest first): few round trips to the
/// database per batch, and few distinct statements to prepare.
const AUDIT_ROWS: [usize; 4] = [64, 16, 4, 1];

/// `events` cut into the statements that write them: each chunk with its [`audit_insert_sql`].
pub(super) fn audit_chunks(
    mut rest: &[AuditEvent],
) -> impl Iterator<Item = (&'static str, &[AuditEvent])> {
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = AUDIT_ROWS
            .into_iter()
            .find(|&n| n <= rest.len())
            .unwrap_or(1);
        let (chunk, after) = rest.split_at(n);
        rest = after;
        Some((audit_insert_sql(n), chunk))
    })
}

async fn insert_audit(pool: &sqlx::AnyPool, events: &[AuditEvent]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for (sql, chunk) in audit_chunks(events) {
        let mut q = sqlx::query(sql);
        for e in chunk {
            q = q
                .bind(e.at)
                .bind(&e.who)
                .bind(&e.via)
                .bind(&e.address)
                .bind(&e.action)
                .bind(&e.study_uid)
                .bind(&e.detail);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// [`insert_audit`] on the SQLite writer's connection (blocking).
fn write_audit(
    writer: &super::sqlite_writer::Writer,
    events: &[AuditEvent],
) -> Result<(), IndexError> {
    writer.transaction(|tx| {
        for (sql, chunk) in audit_chunks(events) {
            let values: Vec<&dyn rusqlite::ToSql> = chunk
                .iter()
                .flat_map(|e| -> [&dyn rusqlite::ToSql; 7] {
                    [
                        &e.at,
                        &e.who,
                        &e.via,
                        &e.address,
                        &e.action,
                        &e.study_uid,
                        &e.detail,
                    ]
                })
                .collect();
            tx.prepare_cached(sql)?.execute(values.as_slice())?;
        }
        Ok(())
    })
}

/// The INSERT of `rows` audit events (one of [`AUDIT_ROWS`]), built once.
fn audit_insert_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        AUDIT_ROWS
            .iter()
            .map(|&n| {
                let values: Vec<String> = (0..n)
                    .map(|r| {
                        let p: Vec<String> = (1..=7).map(|c| format!("${}", r * 7 + c)).collect();
                        format!("({})", p.join(","))
                    })
                    .collect();
                format!(
                    "INSERT INTO audit_events (at, who, via, address, action, study_uid, detail) VALUES {}",
                    values.join(", ")
                )
            })
            .collect()
    });
    let i = AUDIT_ROWS
        .iter()
        .position(|&n| n == rows)
        .unwrap_or(AUDIT_ROWS.len() - 1);
    &all[i]
}

impl Index {
    /// Record an audit event (written in the background, in batches).
    pub fn audit(&self, event: AuditEvent) {
        use std::sync::atomic::Ordering;
        self.audit.unwritten.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.audit.tx.try_send(event) {
            self.audit.unwritten.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(error = %e, "audit queue full; event dropped");
        }
    }

    /// [`Index::audit`] for an event that must not be dropped (an instance stored): when
    /// the queue is full, wait for room.
    pub async fn audit_kept(&self, event: AuditEvent) {
        use std::sync::atomic::Ordering;
        // Room first, then counted: a caller cancelled while it waits leaves no count.
        match self.audit.tx.reserve().await {
            Ok(room) => {
                self.audit.unwritten.fetch_add(1, Ordering::AcqRel);
                room.send(event);
            }
            Err(_) => tracing::warn!("audit writer stopped; store event dropped"),
        }
    }

    /// Wait (up to 2 s) until the audit events queued so far are written.
    pub async fn flush_audit(&self) {
        for _ in 0..400 {
            if self
                .audit
                .unwritten
                .load(std::sync::atomic::Ordering::Acquire)
                == 0
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub async fn audit_events(&self, f: &AuditFilter) -> Result<Vec<AuditEvent>, IndexError> {
        let mut sql = String::from(
            "SELECT id, at, who, via, address, action, study_uid, detail FROM audit_events WHERE id > $1",
        );
        let mut args: Vec<String> = Vec::new();
        for (col, v) in [
            ("study_uid", &f.study),
            ("who", &f.who),
            ("action", &f.action),
        ] {
            if let Some(v) = v {
                args.push(v.clone());
                sql.push_str(&format!(" AND {col} = ${}", args.len() + 1));
            }
        }
        sql.push_str(&format!(
            " ORDER BY id LIMIT {}",
            f.limit.unwrap_or(1000).clamp(1, 10_000)
        ));
        let mut q = sqlx::query_as(&sql).bind(f.after.unwrap_or(0));
        for a in &args {
            q = q.bind(a);
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// Change feed entries after `offset`, oldest first. An instance's entries alternate
    /// creation and deletion (a stored instance is never created again), so an entry of an
    /// instance that exists now was replaced if it is a deletion, or a creation that a
    /// deletion followed: only deletions are indexed by SOP Instance UID.
    pub async fn changefeed(
        &self,
        offset: i64,
        limit: i64,
        with_metadata: bool,
    ) -> Result<Vec<Change>, IndexError> {
        let meta = if with_metadata {
            "i.metadata_json"
        } else {
            "NULL"
        };
        Ok(sqlx::query_as(&format!(
            "SELECT c.sequence, c.at, c.action, c.study_uid, c.series_uid, c.sop_instance_uid, \
             {meta} AS metadata_json, CASE WHEN i.id IS NULL THEN 'deleted' \
             WHEN c.action = 'delete' OR EXISTS (SELECT 1 FROM changefeed l \
                 WHERE l.sop_instance_uid = c.sop_instance_uid AND l.action = 'delete' \
                 AND l.sequence > c.sequence) THEN 'replaced' ELSE 'current' END AS state \
             FROM changefeed c LEFT JOIN instances i ON i.sop_instance_uid = c.sop_instance_uid \
             WHERE c.sequence > $1 ORDER BY c.sequence LIMIT $2"
        ))
        .bind(offset)
        .bind(limit.clamp(1, 10_000))
        .fetch_all(&self.pool)
        .await?)
    }

    /// The newest change feed sequence number (0 when empty).
    pub async fn changefeed_latest(&self) -> Result<i64, IndexError> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(sequence), 0) FROM changefeed")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Delete the instances in scope (and series and studies left empty) in one
    /// transaction, with a change feed entry each. Returns the deleted instances'
    /// (SOP Instance UID, object key); the caller deletes the objects afterwards (an object
    /// left behind by a crash is an orphan that `verify` sweeps).
    pub async fn delete_scope(&self, scope: &Scope) -> Result<Vec<(Uid, ObjectKey)>, IndexError> {
        let located = self.locate(scope).await?;
        if located.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let mut study_pks = Vec::new();
        for loc in &located {
            if let Some(study_pk) = delete_instance(&mut tx, loc, now).await? {
                if !study_pks.contains(&study_pk) {
                    study_pks.push(study_pk);
                }
            }
        }
        for study_pk in study_pks {
            settle_study(&mut tx, study_pk, now).await?;
        }
        tx.commit().await?;
        Ok(located
            .into_iter()
            .map(|l| (l.sop_instance_uid, l.object_key))
            .collect())
    }
}

pub(super) type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

/// Delete one instance row and its forwarding jobs, count it out of its series and record
/// the change; its study's key, or `None` when another transaction deleted it first.
pub(super) async fn delete_instance(
    tx: &mut Tx<'_>,
    loc: &InstanceLocation,
    now: i64,
) -> Result<Option<i64>, IndexError> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "DELETE FROM instances WHERE sop_instance_uid = $1 RETURNING study_pk, series_pk",
    )
    .bind(&loc.sop_instance_uid)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((study_pk, series_pk)) = row else {
        return Ok(None);
    };
    sqlx::query("UPDATE series SET num_instances = num_instances - 1 WHERE id = $1")
        .bind(series_pk)
        .execute(&mut **tx)
        .await?;
    // Its forwarding jobs go with it: nothing is sent of a deleted instance, and one
    // stored again later is forwarded again.
    sqlx::query("DELETE FROM forward_jobs WHERE sop_instance_uid = $1")
        .bind(&loc.sop_instance_uid)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO changefeed (at, action, study_uid, series_uid, sop_instance_uid) \
         VALUES ($1, 'delete', $2, $3, $4)",
    )
    .bind(now)
    .bind(&loc.study_uid)
    .bind(&loc.series_uid)
    .bind(&loc.sop_instance_uid)
    .execute(&mut **tx)
    .await?;
    Ok(Some(study_pk))
}

/// After deletes in a study: drop its empty series, and the study itself when nothing is
/// left, else bring its counts and sets up to date.
pub(super) async fn settle_study(
    tx: &mut Tx<'_>,
    study_pk: i64,
    now: i64,
) -> Result<(), IndexError> {
    sqlx::query("DELETE FROM series WHERE study_pk = $1 AND num_instances <= 0")
        .bind(study_pk)
        .execute(&mut **tx)
        .await?;
    let (instances, series): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM instances WHERE study_pk = $1), \
         (SELECT COUNT(*) FROM series WHERE study_pk = $1)",
    )
    .bind(study_pk)
    .fetch_one(&mut **tx)
    .await?;
    if instances == 0 {
        sqlx::query("DELETE FROM studies WHERE id = $1")
            .bind(study_pk)
            .execute(&mut **tx)
            .await?;
        return Ok(());
    }
    let modalities = distinct(
        tx,
        "SELECT DISTINCT modality FROM series WHERE study_pk = $1 AND modality IS NOT NULL",
        study_pk,
    )
    .await?;
    let classes = distinct(
        tx,
        "SELECT DISTINCT sop_class_uid FROM instances WHERE study_pk = $1",
        study_pk,
    )
    .await?;
    sqlx::query(
        "UPDATE studies SET num_instances = $2, num_series = $3, modalities = $4, \
         sop_classes = $5, updated_at = $6 WHERE id = $1",
    )
    .bind(study_pk)
    .bind(instances)
    .bind(series)
    .bind(modalities)
    .bind(classes)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A sorted, `\`-joined list of distinct values (the format of the study's set columns).
async fn distinct(tx: &mut Tx<'_>, sql: &str, pk: i64) -> Result<String, IndexError> {
    let rows: Vec<Option<String>> = sqlx::query_scalar(sql)
        .bind(pk)
        .fetch_all(&mut **tx)
        .await?;
    let mut values: Vec<String> = rows
        .into_iter()
        .flatten()
        .filter(|v| !v.is_empty())
        .collect();
    values.sort();
    values.dedup();
    Ok(values.join("\\"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Audit events written by the writer's connection, in statements of several rows,
    /// wait for a write lock another connection holds (in the writer's short steps) and
    /// are all kept, fields and order.
    #[tokio::test]
    async fn audit_events_wait_for_the_lock_and_are_all_written() {
        let (_dir, path, index) = crate::index::records::migrated_sqlite().await;
        let writer = super::super::sqlite_writer::open(path.to_str().unwrap(), true).unwrap();
        let mut other = rusqlite::Connection::open(&path).unwrap();
        let held = other
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        let events: Vec<AuditEvent> = (0..70)
            .map(|i| {
                AuditEvent::new("ae", "dimse", Some(format!("10.0.0.{i}")), "store")
                    .study(format!("1.2.{i}"))
            })
            .collect();
        let started = std::time::Instant::now();
        let (done, result) = std::thread::scope(|s| {
            let w = s.spawn(|| write_audit(&writer, &events));
            std::thread::sleep(std::time::Duration::from_millis(30));
            held.commit().unwrap();
            let result = w.join().unwrap();
            (started.elapsed(), result)
        });
        result.unwrap();
        assert!(
            done >= std::time::Duration::from_millis(30),
            "wrote while the lock was held"
        );
        let rows: Vec<(String, String)> = other
            .prepare(
                "SELECT address, study_uid FROM audit_events WHERE action = 'store' ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 70);
        assert_eq!(rows[69], ("10.0.0.69".into(), "1.2.69".into()));
        drop(index);
    }

    /// A batch of any size is written whole and in order, in statements of several rows.
    #[tokio::test]
    async fn audit_batches_keep_every_event_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("index.sqlite").display());
        let index = Index::open(&url, 2).await.unwrap();
        // 64 + 64 + 16 + 4 + 1 + 1 + 1 rows, then one alone.
        let event = |i: i64| AuditEvent {
            id: None,
            at: i,
            who: format!("who{i}"),
            via: "loopback".into(),
            address: (i % 2 == 0).then(|| "127.0.0.1".into()),
            action: "read".into(),
            study_uid: Some(format!("1.{i}")),
            detail: None,
        };
        insert_audit(&index.pool, &(0..151).map(event).collect::<Vec<_>>())
            .await
            .unwrap();
        insert_audit(&index.pool, &[event(151)]).await.unwrap();
        let filter = AuditFilter {
            study: None,
            who: None,
            action: None,
            after: None,
            limit: Some(10_000),
        };
        let rows = index.audit_events(&filter).await.unwrap();
        let got: Vec<(i64, String, Option<String>, Option<String>)> = rows
            .into_iter()
            .map(|e| (e.at, e.who, e.address, e.study_uid))
            .collect();
        let want: Vec<_> = (0..152)
            .map(|i| {
                let e = event(i);
                (e.at, e.who, e.address, e.study_uid)
            })
            .collect();
        assert_eq!(got, want);
    }
}
