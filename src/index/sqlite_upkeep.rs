//! The SQLite index writer's upkeep: its transactions, how its connection waits for a
//! write lock another connection holds, and the checkpoints, on a thread of their own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::IndexError;

/// A transaction on the writer's connection, rolled back unless committed (on an error
/// or a panic too, so that the connection is never left inside it).
pub(super) struct Tx<'c>(Option<&'c Connection>);

impl<'c> Tx<'c> {
    pub(super) fn begin(conn: &'c Connection) -> rusqlite::Result<Tx<'c>> {
        if !conn.is_autocommit() {
            // Left inside a transaction by a rollback that failed: not every batch after.
            run(conn, "ROLLBACK")?;
        }
        run(conn, "BEGIN IMMEDIATE")?;
        Ok(Tx(Some(conn)))
    }

    pub(super) fn commit(mut self) -> rusqlite::Result<()> {
        if let Some(conn) = self.0 {
            run(conn, "COMMIT")?;
            self.0 = None;
        }
        Ok(())
    }

    pub(super) fn rollback(mut self) -> rusqlite::Result<()> {
        match self.0.take() {
            Some(conn) => run(conn, "ROLLBACK"),
            None => Ok(()),
        }
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            if !conn.is_autocommit() {
                let _ = run(conn, "ROLLBACK");
            }
        }
    }
}

/// A statement without parameters or rows, from the statement cache.
pub(super) fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.raw_execute().map(|_| ())
}

/// The writer's wait for a write lock another connection holds (a pool connection
/// writing an upload's state, a forwarding job's, a deletion), in place of
/// `busy_timeout`'s: that one sleeps 1, 2, 5, 10 ms and more between looks, which a
/// commit of a fraction of a millisecond turns into milliseconds on the path of every
/// acknowledgement. Here: 100 µs steps for the first 20 ms, then 1 ms steps, 30 s in all.
pub(super) fn busy(tries: i32) -> bool {
    let step = match tries {
        0..200 => Duration::from_micros(100),
        200..30_000 => Duration::from_millis(1),
        _ => return false,
    };
    std::thread::sleep(step);
    true
}

/// How often the checkpoint thread looks for new commits.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Checkpoints (WAL pages copied into the database file, with an fsync of each) on a
/// connection and thread of their own, passive: they never hold the writer up. Run by the
/// writer itself, as SQLite does by default, each one stalled every association for the
/// copy and both fsyncs (≈ 10 % of the four-association C-STORE rate). In relaxed mode this
/// is also when the WAL reaches the disk. The thread ends with the writer.
pub(super) fn spawn_checkpointer(
    path: &str,
    relaxed: bool,
    commits: Weak<AtomicU64>,
) -> Result<(), IndexError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let sync = if relaxed { "NORMAL" } else { "FULL" };
    conn.execute_batch(&format!(
        "PRAGMA busy_timeout = 30000; PRAGMA synchronous = {sync};"
    ))?;
    std::thread::Builder::new()
        .name("index-checkpoint".into())
        .spawn(move || {
            let mut seen = 0;
            loop {
                std::thread::sleep(CHECKPOINT_EVERY);
                let Some(count) = commits.upgrade().map(|c| c.load(Ordering::Relaxed)) else {
                    return;
                };
                if count == seen {
                    continue;
                }
                seen = count;
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "index checkpoint failed");
                }
            }
        })
        .map_err(|e| IndexError::Sqlite(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(())
}
