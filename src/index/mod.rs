//! The index: studies, series and instances in SQLite or PostgreSQL, through sqlx.
//!
//! Owns every SQL statement in pacs-lite. Both backends run the same statements through
//! sqlx's `Any` driver (`$n` placeholders work on both); only the DDL differs, in
//! `migrations/sqlite` and `migrations/postgres`, applied at start.
//!
//! Writes go through one writer per process ([`writer`] on PostgreSQL, a thread with its
//! own synchronous connection on SQLite, [`sqlite_writer`]) that commits the rows of
//! concurrent ingests in one transaction (group commit); an ingest is answered only
//! after the transaction holding its row has committed.

pub mod admin;
pub mod compress;
mod conditions;
pub mod forward;
#[cfg(test)]
mod migrate_tests;
pub mod mpps;
pub mod orders;
pub mod query;
pub mod read;
mod records;
pub mod retention;
mod sqlite_reader;
mod sqlite_upkeep;
mod sqlite_writer;
mod types;
pub mod uploads;
pub mod worklist;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use tokio::sync::{mpsc, oneshot};

#[cfg(test)]
pub(crate) use records::sample;
pub use records::{InstanceRecord, SeriesAttributes, StudyAttributes};

use crate::model::{ObjectKey, Sha256, Uid};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("index migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported index URL {0:?}: use sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    #[error("index database: {0}")]
    Sqlite(String),
    #[error("the index writer has stopped")]
    WriterGone,
}

impl From<rusqlite::Error> for IndexError {
    fn from(e: rusqlite::Error) -> Self {
        IndexError::Sqlite(e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What the index holds for one instance, enough to decide idempotency and to read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredInstance {
    pub sop_instance_uid: Uid,
    pub sop_class_uid: Uid,
    pub study_uid: Uid,
    pub series_uid: Uid,
    pub object_key: ObjectKey,
    pub sha256: Sha256,
    #[sqlx(try_from = "i64")]
    pub size: u64,
    pub stored_at: i64,
}

/// The answer to an insert: the row was new, or one already held the SOP Instance UID.
#[derive(Debug, Clone)]
pub enum InsertOutcome {
    Inserted,
    Existing(StoredInstance),
}

/// Where instance rows are written: PostgreSQL's writer task, or SQLite's connection,
/// written by the storing threads themselves ([`sqlite_writer`]).
#[derive(Clone)]
enum Writer {
    Task(mpsc::Sender<writer::Job>),
    Sqlite(Arc<sqlite_writer::Writer>),
}

#[derive(Clone)]
pub struct Index {
    pool: AnyPool,
    backend: Backend,
    writer: Writer,
    audit: admin::AuditQueue,
    relaxed: bool,
    /// SQLite only: the lookups of every retrieval, answered on the calling thread.
    readers: Option<Arc<sqlite_reader::Readers>>,
    /// Signalled when forwarding jobs become due (stored with an instance, or queued).
    outbox: std::sync::Arc<tokio::sync::Notify>,
}

impl Index {
    /// Connect, apply migrations and start the writer task; every commit durable.
    pub async fn open(url: &str, max_connections: u32) -> Result<Index, IndexError> {
        Self::open_with(url, max_connections, false).await
    }

    /// [`Index::open`]; with `relaxed`, a SQLite file's instance inserts commit without an
    /// fsync each (`synchronous=NORMAL`): only for an object store that start-up recovery
    /// can re-index from after a power failure (see [`Index::commits_relaxed`]).
    pub async fn open_with(
        url: &str,
        max_connections: u32,
        relaxed: bool,
    ) -> Result<Index, IndexError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(IndexError::UnsupportedUrl(url.to_owned()));
        };
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON; \
                             PRAGMA case_sensitive_like = ON;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        let readers = sqlite_file(&url)
            .filter(|_| backend == Backend::Sqlite)
            .map(|path| Arc::new(sqlite_reader::Readers::new(path)));
        let (writer, relaxed, audit) = match sqlite_file(&url) {
            Some(path) if backend == Backend::Sqlite => {
                let w = Arc::new(sqlite_writer::open(path, relaxed)?);
                let sink = admin::AuditSink::Sqlite(w.clone());
                (Writer::Sqlite(w), relaxed, sink)
            }
            _ => (
                Writer::Task(writer::spawn(pool.clone(), backend)),
                false,
                admin::AuditSink::Pool(pool.clone()),
            ),
        };
        let audit = admin::spawn_audit_writer(audit);
        Ok(Index {
            pool,
            backend,
            writer,
            audit,
            relaxed,
            readers,
            outbox: Default::default(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Do instance inserts commit without an fsync each (a power failure may lose the
    /// last ones, to be recovered from the object store)?
    pub fn commits_relaxed(&self) -> bool {
        self.relaxed
    }

    /// Is the database reachable?
    pub async fn check(&self) -> Result<(), IndexError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Insert one instance with its study and series, committed before this returns.
    pub async fn insert(&self, record: InstanceRecord) -> Result<InsertOutcome, IndexError> {
        let forwarded = !record.forward_to.is_empty();
        let outcome = match &self.writer {
            Writer::Task(tx) => {
                let (reply, answer) = oneshot::channel();
                tx.send(writer::Job { record, reply })
                    .await
                    .map_err(|_| IndexError::WriterGone)?;
                answer.await.map_err(|_| IndexError::WriterGone)?
            }
            Writer::Sqlite(w) => {
                let w = w.clone();
                tokio::task::spawn_blocking(move || w.write(record))
                    .await
                    .map_err(|_| IndexError::WriterGone)?
            }
        };
        if forwarded {
            self.outbox.notify_waiters();
        }
        outcome
    }

    /// Resolves when forwarding jobs may have become due (a wake-up, not a promise).
    pub async fn outbox_changed(&self) {
        self.outbox.notified().await
    }

    /// [`Index::insert`] for several instances, from a blocking thread (a group made
    /// durable together): their outcomes, in order. On SQLite the rows are written (and
    /// committed) by this thread, in one transaction unless they are more than a batch; on
    /// PostgreSQL they are queued for the writer task, which batches what it finds.
    pub fn insert_blocking(
        &self,
        records: Vec<InstanceRecord>,
    ) -> Vec<Result<InsertOutcome, IndexError>> {
        let forwarded = records.iter().any(|r| !r.forward_to.is_empty());
        let outcomes = match &self.writer {
            Writer::Task(tx) => {
                let answers: Vec<_> = records
                    .into_iter()
                    .map(|record| {
                        let (reply, answer) = oneshot::channel();
                        tx.blocking_send(writer::Job { record, reply }).ok()?;
                        Some(answer)
                    })
                    .collect();
                answers
                    .into_iter()
                    .map(|answer| match answer.map(|a| a.blocking_recv()) {
                        Some(Ok(outcome)) => outcome,
                        _ => Err(IndexError::WriterGone),
                    })
                    .collect()
            }
            Writer::Sqlite(w) => w.write_all(records),
        };
        if forwarded {
            self.outbox.notify_waiters();
        }
        outcomes
    }

    /// Every instance, in insertion order (for `verify`).
    pub fn all_instances(&self) -> impl Stream<Item = Result<StoredInstance, IndexError>> + '_ {
        sqlx::query_as(STORED_SELECT_ORDERED)
            .fetch(&self.pool)
            .map(|r| r.map_err(IndexError::from))
    }

    /// Does any instance row point at this object key?
    pub async fn key_is_referenced(&self, key: &ObjectKey) -> Result<bool, IndexError> {
        let row = sqlx::query("SELECT 1 FROM instances WHERE object_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Counts of studies, series and instances.
    pub async fn counts(&self) -> Result<(i64, i64, i64), IndexError> {
        Ok(sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM studies), (SELECT COUNT(*) FROM series), \
             (SELECT COUNT(*) FROM instances)",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn close(&self) {
        // Audit events queued by this process are written before the pool goes.
        self.flush_audit().await;
        self.pool.close().await;
    }
}

/// The columns of [`StoredInstance`], for look-ups by SOP Instance UID and for `verify`.
macro_rules! stored_select {
    () => {
        "SELECT i.sop_instance_uid, i.sop_class_uid, st.study_uid, se.series_uid, i.object_key, \
         i.sha256, i.size, i.stored_at FROM instances i JOIN series se ON se.id = i.series_pk \
         JOIN studies st ON st.id = i.study_pk"
    };
}
const STORED_SELECT: &str = stored_select!();
const STORED_SELECT_ORDERED: &str = concat!(stored_select!(), " ORDER BY i.id");

/// Make sure the SQLite file's directory exists and that the file is created on demand.
fn prepare_sqlite_url(url: &str) -> Result<String, IndexError> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:" && !path.is_empty() {
        if let Some(parent) = std::path::Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
            }
        }
    }
    let query = if query.contains("mode=") {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// The database file of a SQLite URL made by [`prepare_sqlite_url`] (None for `:memory:`).
fn sqlite_file(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite://")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    // Names the writer's own connection could not open as sqlx does (in-memory databases,
    // percent-encoded paths) keep the sqlx writer.
    let plain = path != ":memory:" && !path.is_empty() && !path.contains('%');
    (plain && !query.contains("mode=memory")).then_some(path)
}
