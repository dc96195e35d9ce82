//! The SQLite index writer: a synchronous connection, written by the threads that store.
//!
//! Same batching, statements and outcomes as [`super::writer`], which serves PostgreSQL.
//! Through sqlx every SQLite statement is a round trip to the connection's worker thread
//! — eight or more per instance, each a pair of thread wake-ups that cost more than the
//! statement — so on SQLite the batch runs on one connection of its own, and on the
//! thread that asked for it: the blocking thread that has just made an object durable
//! writes its row itself. Group commit without a thread of its own: whoever finds no
//! batch being written takes every row waiting (its own among them) and writes them in
//! one transaction (a savepoint per instance); the others wait until a batch has answered
//! theirs or the writing is free for them to take. A lone association so commits its
//! instance with no thread hand-off at all (a sleeping thread's wake-up costs 0.1–0.2 ms
//! on a virtual machine, on the path of every acknowledgement). Checkpoints run on a
//! thread of their own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rusqlite::{Connection, OpenFlags, Statement, ToSql};
use tokio::sync::oneshot;

use super::sqlite_upkeep::{run, Tx};
use super::writer::{
    merge_set, Job, INSERT_CHANGE, INSERT_FORWARD_JOB, INSERT_INSTANCE, MAX_BATCH, UPDATED_AT_STEP,
    UPDATE_STUDY, UPDATE_STUDY_COUNTS, UPSERT_SERIES, UPSERT_STUDY,
};
use super::{
    IndexError, InsertOutcome, InstanceRecord, SeriesAttributes, StoredInstance, StudyAttributes,
    STORED_SELECT,
};
use crate::model::Uid;

/// The writer: its connection, and the rows waiting for a batch.
pub(super) struct Writer {
    conn: Mutex<Connection>,
    state: Mutex<State>,
    /// Signalled when a batch has been written (and answered).
    written: Condvar,
    /// Commits so far, for the checkpoint thread (which ends when this is dropped).
    commits: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    waiting: Vec<Job>,
    /// A thread is writing a batch.
    writing: bool,
}

/// Open the database file (already migrated) for writing, and start the checkpoint thread.
pub(super) fn open(path: &str, relaxed: bool) -> Result<Writer, IndexError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The pool's settings (durable commits: WAL, fsync at each commit; waits rather than
    // fails while another connection writes, though in shorter steps: [`busy`]), and the
    // savepoints' journals in memory: as files they cost a file created and deleted per batch.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
         PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;",
    )?;
    if relaxed {
        // Commits are not fsynced (the WAL is, before each checkpoint): a power failure
        // may lose the last ones, never consistency. Their objects were durable before
        // they were acknowledged, and start-up recovery re-indexes them
        // (`verify::recover_recent`).
        conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
    }
    conn.busy_handler(Some(super::sqlite_upkeep::busy))?;
    conn.set_prepared_statement_cache_capacity(32);
    let commits = Arc::new(AtomicU64::new(0));
    match super::sqlite_upkeep::spawn_checkpointer(path, relaxed, Arc::downgrade(&commits)) {
        // Checkpoints happen there; the writer checkpoints only if the WAL grows large
        // all the same (under a sustained load a passive checkpoint cannot finish, and
        // only a finished one lets the WAL start over).
        Ok(()) => conn.execute_batch("PRAGMA wal_autocheckpoint = 8192;")?,
        Err(e) => tracing::warn!(error = %e, "no checkpoint thread; the index writer checkpoints"),
    }
    Ok(Writer {
        conn: Mutex::new(conn),
        state: Mutex::default(),
        written: Condvar::new(),
        commits,
    })
}

impl Writer {
    /// Insert one instance with its study and series, committed before this returns
    /// (blocking: call it from a blocking thread).
    pub(super) fn write(&self, record: InstanceRecord) -> Result<InsertOutcome, IndexError> {
        self.write_all(vec![record])
            .pop()
            .unwrap_or(Err(IndexError::WriterGone))
    }

    /// [`Writer::write`] for several instances at once (a group the caller made durable
    /// together): their outcomes, in order.
    pub(super) fn write_all(
        &self,
        records: Vec<InstanceRecord>,
    ) -> Vec<Result<InsertOutcome, IndexError>> {
        let gone = |n| (0..n).map(|_| Err(IndexError::WriterGone)).collect();
        let Ok(mut state) = self.state.lock() else {
            return gone(records.len());
        };
        let mut answers = Vec::with_capacity(records.len());
        for record in records {
            let (reply, answer) = oneshot::channel();
            state.waiting.push(Job { record, reply });
            answers.push(answer);
        }
        let mut outcomes: Vec<Option<Result<InsertOutcome, IndexError>>> =
            answers.iter().map(|_| None).collect();
        loop {
            for (outcome, answer) in outcomes.iter_mut().zip(answers.iter_mut()) {
                if outcome.is_none() {
                    *outcome = match answer.try_recv() {
                        Ok(result) => Some(result),
                        Err(oneshot::error::TryRecvError::Closed) => {
                            Some(Err(IndexError::WriterGone))
                        }
                        Err(oneshot::error::TryRecvError::Empty) => None,
                    };
                }
            }
            if outcomes.iter().all(Option::is_some) {
                return outcomes.into_iter().flatten().collect();
            }
            if state.writing {
                state = match self.written.wait(state) {
                    Ok(state) => state,
                    Err(_) => return gone(outcomes.len()),
                };
                continue;
            }
            state.writing = true;
            let take = state.waiting.len().min(MAX_BATCH);
            let batch: Vec<Job> = state.waiting.drain(..take).collect();
            drop(state);
            // Released however the batch ends (a panic included), so no one waits forever.
            let _free = Free(self);
            self.write_jobs(batch);
            drop(_free);
            state = match self.state.lock() {
                Ok(state) => state,
                Err(_) => return gone(outcomes.len()),
            };
        }
    }

    /// Write a batch in one transaction and answer each job; when it fails as a whole,
    /// each job alone, so that one bad row cannot fail its neighbours.
    fn write_jobs(&self, mut batch: Vec<Job>) {
        let Ok(mut conn) = self.conn.lock() else {
            return; // poisoned: the jobs' senders drop, their writers see WriterGone
        };
        super::writer::order(&mut batch);
        let records: Vec<&InstanceRecord> = batch.iter().map(|j| &j.record).collect();
        let result = write_batch(&mut conn, &records);
        for job in super::writer::settle(&mut batch, result) {
            let result = write_batch(&mut conn, &[&job.record]).map(|mut o| o.remove(0));
            let _ = job.reply.send(result);
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
    }
}

impl Writer {
    /// Run `f` in one IMMEDIATE transaction on this connection and commit it, under the
    /// connection's lock (blocking): for other rows written beside the instances' (the
    /// audit trail's, [`super::admin::AuditSink`]), so that a batch of instances waits for
    /// them on that lock, not in SQLite's busy wait.
    pub(super) fn transaction<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, IndexError>,
    ) -> Result<R, IndexError> {
        let Ok(conn) = self.conn.lock() else {
            return Err(IndexError::WriterGone);
        };
        let tx = Tx::begin(&conn)?;
        let result = f(&conn)?;
        tx.commit()?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(result)
    }
}

/// Ends a batch: the writing is free again, and the waiting threads look at their answers.
struct Free<'w>(&'w Writer);

impl Drop for Free<'_> {
    fn drop(&mut self) {
        if let Ok(mut state) = self.0.state.lock() {
            state.writing = false;
        }
        self.0.written.notify_all();
    }
}

/// Write `records` in one transaction: each in a savepoint of its own, undone when its
/// SOP Instance UID was stored already; a lone record needs none (its transaction is
/// rolled back instead). The transaction's statements are cached like the others:
/// rusqlite's `Transaction` and `Savepoint` parse theirs anew each time, and a savepoint
/// copies every page it changes into its statement journal.
fn write_batch(
    conn: &mut Connection,
    records: &[&InstanceRecord],
) -> Result<Vec<InsertOutcome>, IndexError> {
    let conn: &Connection = conn;
    // IMMEDIATE: take the write lock now, not on the first write (no upgrade deadlock
    // with another connection's read transaction).
    let tx = Tx::begin(conn)?;
    if let [record] = records {
        let outcome = write_one(conn, record)?;
        match outcome {
            InsertOutcome::Inserted => tx.commit()?,
            // Undone, with any study or series row it created.
            InsertOutcome::Existing(_) => tx.rollback()?,
        }
        return Ok(vec![outcome]);
    }
    let mut outcomes = Vec::with_capacity(records.len());
    for record in records {
        run(conn, "SAVEPOINT one")?;
        let outcome = write_one(conn, record)?;
        if let InsertOutcome::Existing(_) = outcome {
            run(conn, "ROLLBACK TO one")?;
        }
        run(conn, "RELEASE one")?;
        outcomes.push(outcome);
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Write one instance with its study and series (see [`super::writer`]); the caller
/// undoes it (a savepoint, or the whole transaction) when the SOP Instance UID was already stored.
fn write_one(conn: &Connection, r: &InstanceRecord) -> Result<InsertOutcome, IndexError> {
    let study = upsert_study(conn, &r.study, r.stored_at)?;
    let (series_pk, new_series) = upsert_series(conn, study.pk, &r.series, r.stored_at)?;
    if !insert_instance(conn, study.pk, series_pk, r)? {
        // Stored before (by us or another process).
        let existing = existing(conn, &r.sop_instance_uid)?;
        return existing
            .map(InsertOutcome::Existing)
            .ok_or(IndexError::Sqlite("the stored instance vanished".into()));
    }
    let (st, se, now) = (&r.study, &r.series, r.stored_at);
    execute(
        conn,
        INSERT_CHANGE,
        &[&now, &st.study_uid, &se.series_uid, &r.sop_instance_uid],
    )?;
    for destination in &r.forward_to {
        execute(
            conn,
            INSERT_FORWARD_JOB,
            &[destination, &r.sop_instance_uid, &st.study_uid, &now],
        )?;
    }
    let modalities = merge_set(&study.modalities, se.modality.as_deref());
    let classes = merge_set(&study.sop_classes, Some(r.sop_class_uid.as_str()));
    let counts: [&dyn ToSql; 4] = [&study.pk, &i64::from(new_series), &modalities, &classes];
    if now >= study.updated_at + UPDATED_AT_STEP {
        execute(
            conn,
            UPDATE_STUDY,
            &[counts[0], counts[1], counts[2], counts[3], &now],
        )?;
    } else {
        execute(conn, UPDATE_STUDY_COUNTS, &counts)?;
    }
    Ok(InsertOutcome::Inserted)
}

/// The study row: its key and the set columns this instance may add to.
struct StudyRow {
    pk: i64,
    modalities: String,
    sop_classes: String,
    updated_at: i64,
}

fn upsert_study(conn: &Connection, st: &StudyAttributes, now: i64) -> rusqlite::Result<StudyRow> {
    let values: [&dyn ToSql; 15] = [
        &st.study_uid,
        &st.patient_name,
        &st.patient_name_key,
        &st.patient_id,
        &st.patient_birth_date,
        &st.patient_sex,
        &st.study_date,
        &st.study_time,
        &st.accession_number,
        &st.study_id,
        &st.study_description,
        &st.referring_physician_name,
        &st.referring_physician_key,
        &st.attrs_json,
        &now,
    ];
    one_row(conn, UPSERT_STUDY, &values, |row| {
        Ok(StudyRow {
            pk: row.get("id")?,
            modalities: row.get("modalities")?,
            sop_classes: row.get("sop_classes")?,
            updated_at: row.get("updated_at")?,
        })
    })?
    .ok_or(rusqlite::Error::QueryReturnedNoRows)
}

/// The series' key, and whether this instance created it.
fn upsert_series(
    conn: &Connection,
    study_pk: i64,
    se: &SeriesAttributes,
    now: i64,
) -> rusqlite::Result<(i64, bool)> {
    let values: [&dyn ToSql; 10] = [
        &se.series_uid,
        &study_pk,
        &se.modality,
        &se.series_number,
        &se.series_description,
        &se.body_part_examined,
        &se.performed_start_date,
        &se.performed_start_time,
        &se.attrs_json,
        &now,
    ];
    let (pk, count): (i64, i64) = one_row(conn, UPSERT_SERIES, &values, |row| {
        Ok((row.get("id")?, row.get("num_instances")?))
    })?
    .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok((pk, count == 1))
}

/// Insert the instance row; false when the SOP Instance UID is already there.
fn insert_instance(
    conn: &Connection,
    study_pk: i64,
    series_pk: i64,
    r: &InstanceRecord,
) -> rusqlite::Result<bool> {
    let values: [&dyn ToSql; 20] = [
        &r.sop_instance_uid,
        &series_pk,
        &study_pk,
        &r.sop_class_uid,
        &r.instance_number,
        &r.transfer_syntax,
        &r.number_of_frames,
        &r.rows,
        &r.columns,
        &r.object_key,
        &r.size,
        &r.sha256,
        &r.metadata_json,
        &r.frame_table,
        &r.origin.kind.as_str(),
        &r.origin.who,
        &r.origin.address,
        &r.stored_at,
        &r.attrs_json,
        &r.part10_prefix,
    ];
    let inserted: Option<i64> = one_row(conn, INSERT_INSTANCE, &values, |row| row.get("id"))?;
    Ok(inserted.is_some())
}

fn existing(conn: &Connection, sop: &Uid) -> Result<Option<StoredInstance>, IndexError> {
    let sql = format!("{STORED_SELECT} WHERE i.sop_instance_uid = $1");
    Ok(one_row(conn, &sql, &[sop], |row| {
        Ok(StoredInstance {
            sop_instance_uid: row.get("sop_instance_uid")?,
            sop_class_uid: row.get("sop_class_uid")?,
            study_uid: row.get("study_uid")?,
            series_uid: row.get("series_uid")?,
            object_key: row.get("object_key")?,
            sha256: row.get("sha256")?,
            size: row.get("size")?,
            stored_at: row.get("stored_at")?,
        })
    })?)
}

/// `$1`…`$20`: the statements' placeholders, which SQLite reads as named parameters.
const PLACEHOLDERS: [&str; 20] = [
    "$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9", "$10", "$11", "$12", "$13", "$14", "$15",
    "$16", "$17", "$18", "$19", "$20",
];

/// A cached statement with `values[n]` bound to `$n+1`, wherever it first appears.
fn prepare<'c>(
    conn: &'c Connection,
    sql: &str,
    values: &[&dyn ToSql],
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    let mut st = conn.prepare_cached(sql)?;
    bind(&mut st, values)?;
    Ok(st)
}

fn bind(st: &mut Statement<'_>, values: &[&dyn ToSql]) -> rusqlite::Result<()> {
    if st.parameter_count() != values.len() {
        return Err(rusqlite::Error::InvalidParameterCount(
            values.len(),
            st.parameter_count(),
        ));
    }
    for (value, name) in values.iter().zip(PLACEHOLDERS) {
        let index = st
            .parameter_index(name)?
            .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_owned()))?;
        st.raw_bind_parameter(index, value)?;
    }
    Ok(())
}

fn execute(conn: &Connection, sql: &str, values: &[&dyn ToSql]) -> rusqlite::Result<usize> {
    prepare(conn, sql, values)?.raw_execute()
}

/// The first row of a statement's answer (run to completion).
fn one_row<T>(
    conn: &Connection,
    sql: &str,
    values: &[&dyn ToSql],
    read: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    let mut st = prepare(conn, sql, values)?;
    let mut rows = st.raw_query();
    let first = match rows.next()? {
        Some(row) => Some(read(row)?),
        None => return Ok(None),
    };
    while rows.next()?.is_some() {}
    Ok(first)
}

#[cfg(test)]
#[path = "sqlite_writer_tests.rs"]
mod tests;
