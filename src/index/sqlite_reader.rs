//! Hot reads of a SQLite index on the calling thread: the lookups every WADO-RS retrieval
//! starts with.
//!
//! Through sqlx each SQLite query is a round trip to its connection's worker thread: two
//! thread wake-ups (0.1–0.2 ms on a virtual machine) around a lookup that itself takes a
//! few microseconds on a cached index. For the few queries on the path of every
//! retrieval, a small pool of plain connections answers on the async thread instead.
//!
//! These connections never wait: no busy timeout, so a lock held elsewhere (a checkpoint
//! resetting the WAL, a connection recovering it) is an error at once, and every error
//! sends the caller back to the sqlx pool, which waits as usual and reports the error
//! there. What can still take long is a page the operating system no longer caches: a
//! cold index is read from the disk on the async thread, as a cold page of the sqlx
//! worker's would be — the trade taken for the hand-offs saved on every warm request.

use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

/// At most this many idle connections are kept (no more are ever in use at once than
/// the runtime has threads, since a read does not yield).
const MAX_IDLE: usize = 8;

/// Read connections to one database file.
pub(super) struct Readers {
    path: String,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(super) fn new(path: &str) -> Readers {
        Readers {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// `f` on a read connection, on this thread; `None` when it could not answer at once
    /// (any error: the caller asks the sqlx pool, which reports it).
    pub(super) fn read<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Option<R> {
        // Taken, then the lock released: a new connection is opened without it.
        let idle = self.idle.lock().ok()?.pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open().ok()?,
        };
        let answer = f(&conn);
        // A connection that SQLite itself failed on is not kept; a value that did not
        // convert says nothing against it.
        if !matches!(answer, Err(rusqlite::Error::SqliteFailure(..))) {
            if let Ok(mut idle) = self.idle.lock() {
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
            }
        }
        match answer {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(error = %e, "index read on the calling thread failed; the pool answers");
                None
            }
        }
    }

    /// Idle connections (a read that answered gives its connection back).
    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::ZERO)?;
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA case_sensitive_like = ON;")?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(conn)
    }
}

/// A text column as one of the model's checked types (a value that does not parse is an
/// error, so the pool's answer is used).
pub(super) fn text<T: TryFrom<String>>(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T> {
    let s: String = row.get(i)?;
    T::try_from(s).map_err(|_| {
        rusqlite::Error::InvalidColumnType(i, format!("column {i}"), rusqlite::types::Type::Text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db").to_str().unwrap().to_owned();
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('1.2.3');",
        )
        .unwrap();
        (dir, path)
    }

    #[test]
    fn reads_reuse_connections_and_errors_answer_none() {
        let (_dir, path) = database();
        let r = Readers::new(&path);
        let read = |r: &Readers| {
            r.read(|c| {
                c.query_row("SELECT v FROM t", [], |row| {
                    text::<crate::model::Uid>(row, 0)
                })
            })
        };
        assert_eq!(read(&r).unwrap().as_str(), "1.2.3");
        assert_eq!(r.idle.lock().unwrap().len(), 1);
        assert_eq!(read(&r).unwrap().as_str(), "1.2.3");
        assert_eq!(r.idle.lock().unwrap().len(), 1);
        // A value that is not a UID, a missing table, a write: each is None, not a guess.
        assert!(r
            .read(
                |c| c.query_row("SELECT 'not a uid'", [], |row| text::<crate::model::Uid>(
                    row, 0
                ))
            )
            .is_none());
        // A value that did not convert leaves the connection usable: it is kept.
        assert_eq!(r.idle.lock().unwrap().len(), 1);
        assert!(r
            .read(|c| c.query_row("SELECT v FROM nowhere", [], |row| row.get::<_, String>(0)))
            .is_none());
        assert!(r
            .read(|c| c.execute("INSERT INTO t VALUES ('x')", []))
            .is_none());
        // A connection SQLite failed on (no such table; a write on a read-only one) is not
        // kept.
        assert_eq!(r.idle.lock().unwrap().len(), 0);
    }

    #[test]
    fn a_write_lock_held_elsewhere_is_not_waited_for() {
        let (_dir, path) = database();
        let r = Readers::new(&path);
        // An exclusive lock (as during a WAL reset) held by another connection.
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
            .unwrap();
        let t0 = std::time::Instant::now();
        assert!(r
            .read(|c| c.query_row("SELECT count(*) FROM t", [], |row| row.get::<_, i64>(0)))
            .is_none());
        assert!(t0.elapsed() < std::time::Duration::from_secs(1));
        other.execute_batch("COMMIT;").unwrap();
        drop(other);
        assert_eq!(
            r.read(|c| c.query_row("SELECT count(*) FROM t", [], |row| row.get::<_, i64>(0))),
            Some(1)
        );
    }
}
