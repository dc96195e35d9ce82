//! The index writer: one task that commits concurrent inserts in one transaction. This one
//! serves PostgreSQL; on SQLite the storing threads write themselves
//! ([`super::sqlite_writer`]), with the same batching and the same statements. On
//! PostgreSQL, where each statement is a round trip to the server, an instance's rows go in
//! one call of the function `pacs_record_instance` (migration 0008, the same inserts; a
//! test keeps their columns the same).
//!
//! Jobs queue on a channel; the task takes all that are waiting (up to a cap), writes them
//! in one transaction with a savepoint per instance, commits, and only then answers each
//! job. If the batch fails as a whole, every job is retried alone so that one bad row
//! cannot fail its neighbours. Batches are sorted by study and series UID so that
//! processes sharing a PostgreSQL database take row locks in the same order.

use sqlx::{Any, AnyPool, Row, Transaction};

use crate::model::Uid;
use tokio::sync::{mpsc, oneshot};

use super::{
    Backend, IndexError, InsertOutcome, InstanceRecord, SeriesAttributes, StoredInstance,
    StudyAttributes,
};

pub(super) const MAX_BATCH: usize = 256;

/// The statements of an insert, shared by this writer and the SQLite one
/// ([`super::sqlite_writer`]); `$n` placeholders work on both backends.
pub(super) const UPSERT_STUDY: &str =
    "INSERT INTO studies (study_uid, patient_name, patient_name_key, patient_id, \
     patient_birth_date, patient_sex, study_date, study_time, accession_number, study_id, \
     study_description, referring_physician_name, referring_physician_key, attrs_json, \
     created_at, updated_at) \
     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$15) \
     ON CONFLICT (study_uid) DO UPDATE SET num_instances = studies.num_instances \
     RETURNING id, modalities, sop_classes, updated_at";
pub(super) const UPSERT_SERIES: &str =
    "INSERT INTO series (series_uid, study_pk, modality, series_number, series_description, \
     body_part_examined, performed_start_date, performed_start_time, attrs_json, created_at, \
     num_instances) \
     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,1) ON CONFLICT (series_uid) \
     DO UPDATE SET num_instances = series.num_instances + 1 RETURNING id, num_instances";
pub(super) const INSERT_INSTANCE: &str =
    "INSERT INTO instances (sop_instance_uid, series_pk, study_pk, sop_class_uid, \
     instance_number, transfer_syntax, number_of_frames, num_rows, num_columns, object_key, \
     size, sha256, metadata_json, frame_table, origin_kind, origin_who, origin_address, stored_at, \
     attrs_json, part10_prefix) \
     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20) \
     ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id";
pub(super) const INSERT_CHANGE: &str =
    "INSERT INTO changefeed (at, action, study_uid, series_uid, sop_instance_uid) \
     VALUES ($1, 'create', $2, $3, $4)";
/// An outbox job per destination the instance is forwarded to (no commit of its own).
pub(super) const INSERT_FORWARD_JOB: &str =
    "INSERT INTO forward_jobs (destination, sop_instance_uid, study_uid, not_before, created_at) \
     VALUES ($1, $2, $3, $4, $4) ON CONFLICT (destination, sop_instance_uid) DO NOTHING";
pub(super) const UPDATE_STUDY: &str =
    "UPDATE studies SET num_instances = num_instances + 1, num_series = num_series + $2, \
     modalities = $3, sop_classes = $4, updated_at = $5 WHERE id = $1";
/// [`UPDATE_STUDY`] without the study's `updated_at` (the time it last gained an instance),
/// for a study updated less than [`UPDATED_AT_STEP`] ago: a column in the SET list has its
/// index entry rewritten, same value or not, and so one more page in every commit. (The
/// no-op update of [`UPSERT_STUDY`], which locks an existing study's row, sets a column no
/// index holds, for the same reason.)
pub(super) const UPDATE_STUDY_COUNTS: &str =
    "UPDATE studies SET num_instances = num_instances + 1, num_series = num_series + $2, \
     modalities = $3, sop_classes = $4 WHERE id = $1";
/// How stale a study's `updated_at` may be (ms): what reads it (retention, compression at
/// rest) measures quiet periods in minutes and days.
pub(super) const UPDATED_AT_STEP: i64 = 1000;

/// PostgreSQL: every row of a new instance in one call (migration 0008): false when the
/// SOP Instance UID was stored already, and nothing changed.
const PG_RECORD_INSTANCE: &str = "SELECT pacs_record_instance($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,\
     $11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$25,$26,$27,$28,$29,$30,$31,$32,\
     $33,$34,$35,$36,$37,$38,$39,$40,$41) AS inserted";
/// The function's text, for the test that keeps its columns those of the statements here.
#[cfg(test)]
const PG_MIGRATION: &str = include_str!("../../migrations/postgres/0008_record_instance.sql");

pub(super) struct Job {
    pub record: InstanceRecord,
    pub reply: oneshot::Sender<Result<InsertOutcome, IndexError>>,
}

pub(super) fn spawn(pool: AnyPool, backend: Backend) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(run(pool, backend, rx));
    tx
}

async fn run(pool: AnyPool, backend: Backend, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        order(&mut batch);
        let records: Vec<&InstanceRecord> = batch.iter().map(|j| &j.record).collect();
        let result = write_batch(&pool, backend, &records).await;
        for job in settle(&mut batch, result) {
            let result = write_batch(&pool, backend, &[&job.record])
                .await
                .map(|mut o| o.remove(0));
            let _ = job.reply.send(result);
        }
    }
}

/// Answer a batch's jobs from the batch's result. When a batch of several failed as a
/// whole, its jobs are returned, to be retried one by one so that one bad row cannot
/// fail its neighbours.
pub(super) fn settle(
    batch: &mut Vec<Job>,
    result: Result<Vec<InsertOutcome>, IndexError>,
) -> Vec<Job> {
    match result {
        Ok(outcomes) => {
            for (job, outcome) in batch.drain(..).zip(outcomes) {
                let _ = job.reply.send(Ok(outcome));
            }
            Vec::new()
        }
        Err(e) if batch.len() > 1 => {
            tracing::warn!(error = %e, size = batch.len(), "index batch failed; retrying one by one");
            std::mem::take(batch)
        }
        Err(e) => {
            if let Some(job) = batch.pop() {
                let _ = job.reply.send(Err(e));
            }
            Vec::new()
        }
    }
}

/// Sort a batch by study and series UID: processes sharing a database take row locks in
/// the same order.
pub(super) fn order(batch: &mut [Job]) {
    batch.sort_by(|a, b| {
        (&a.record.study.study_uid, &a.record.series.series_uid)
            .cmp(&(&b.record.study.study_uid, &b.record.series.series_uid))
    });
}

async fn write_batch(
    pool: &AnyPool,
    backend: Backend,
    records: &[&InstanceRecord],
) -> Result<Vec<InsertOutcome>, IndexError> {
    if backend == Backend::Postgres {
        return write_batch_pg(pool, records).await;
    }
    let mut tx = pool.begin().await?;
    if let [record] = records {
        // One row: the transaction itself is the unit to keep or undo.
        let outcome = write_one(&mut tx, record).await?;
        match outcome {
            InsertOutcome::Inserted => tx.commit().await?,
            InsertOutcome::Existing(_) => tx.rollback().await?,
        }
        return Ok(vec![outcome]);
    }
    let mut outcomes = Vec::with_capacity(records.len());
    for record in records {
        let mut sp = sqlx::Acquire::begin(&mut tx).await?;
        let outcome = write_one(&mut sp, record).await?;
        match outcome {
            InsertOutcome::Inserted => sp.commit().await?,
            InsertOutcome::Existing(_) => sp.rollback().await?,
        }
        outcomes.push(outcome);
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Write one instance with its study and series. When the SOP Instance UID is already
/// stored the caller undoes everything this did (savepoint or transaction rollback), so the
/// counters and any study or series row created on the way are not kept.
async fn write_one(
    tx: &mut Transaction<'_, Any>,
    r: &InstanceRecord,
) -> Result<InsertOutcome, IndexError> {
    let study = upsert_study(tx, &r.study, r.stored_at).await?;
    let (series_pk, new_series) = upsert_series(tx, study.pk, &r.series, r.stored_at).await?;
    if !insert_instance(tx, study.pk, series_pk, r).await? {
        // Stored before (by us or another process).
        let existing = existing(&mut **tx, &r.sop_instance_uid).await?;
        return existing
            .map(InsertOutcome::Existing)
            .ok_or_else(|| IndexError::Db(sqlx::Error::RowNotFound));
    }
    sqlx::query(INSERT_CHANGE)
        .bind(r.stored_at)
        .bind(&r.study.study_uid)
        .bind(&r.series.series_uid)
        .bind(&r.sop_instance_uid)
        .execute(&mut **tx)
        .await?;
    for destination in &r.forward_to {
        sqlx::query(INSERT_FORWARD_JOB)
            .bind(destination)
            .bind(&r.sop_instance_uid)
            .bind(&r.study.study_uid)
            .bind(r.stored_at)
            .execute(&mut **tx)
            .await?;
    }
    let moved = r.stored_at >= study.updated_at + UPDATED_AT_STEP;
    let q = sqlx::query(if moved {
        UPDATE_STUDY
    } else {
        UPDATE_STUDY_COUNTS
    })
    .bind(study.pk)
    .bind(i64::from(new_series))
    .bind(merge_set(&study.modalities, r.series.modality.as_deref()))
    .bind(merge_set(
        &study.sop_classes,
        Some(r.sop_class_uid.as_str()),
    ));
    if moved { q.bind(r.stored_at) } else { q }
        .execute(&mut **tx)
        .await?;
    Ok(InsertOutcome::Inserted)
}

/// PostgreSQL: each instance in one call of `pacs_record_instance`
/// ([`PG_RECORD_INSTANCE`]). Alone, the call is its own transaction: one round trip. Several
/// go in one transaction, which a failure undoes whole (the caller then retries them one
/// by one). A duplicate changes nothing; the instance stored is looked up in the same
/// transaction (alone: after the call, which committed nothing).
async fn write_batch_pg(
    pool: &AnyPool,
    records: &[&InstanceRecord],
) -> Result<Vec<InsertOutcome>, IndexError> {
    if let [r] = records {
        let new = match record_pg(pool, r).await {
            // The same SOP Instance UID committed by another process meanwhile.
            Err(sqlx::Error::Database(e)) if e.constraint() == Some(PG_SOP_UNIQUE) => false,
            other => other?,
        };
        return Ok(vec![outcome_pg(pool, r, new).await?]);
    }
    let mut tx = pool.begin().await?;
    let mut outcomes = Vec::with_capacity(records.len());
    for r in records {
        let new = record_pg(&mut *tx, r).await?;
        outcomes.push(outcome_pg(&mut *tx, r, new).await?);
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// The unique constraint on instances' SOP Instance UID (PostgreSQL's name for it).
const PG_SOP_UNIQUE: &str = "instances_sop_instance_uid_key";

/// Inserted, or the instance stored already under `r`'s SOP Instance UID.
async fn outcome_pg<'e, E>(
    ex: E,
    r: &InstanceRecord,
    new: bool,
) -> Result<InsertOutcome, IndexError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    if new {
        return Ok(InsertOutcome::Inserted);
    }
    existing(ex, &r.sop_instance_uid)
        .await?
        .map(InsertOutcome::Existing)
        .ok_or(IndexError::Db(sqlx::Error::RowNotFound))
}

/// One call of [`PG_RECORD_INSTANCE`]: whether the instance was recorded. Forwarding
/// destinations go one per line (configured names: [`crate::config`] refuses empty ones
/// and control characters).
async fn record_pg<'e, E>(ex: E, r: &InstanceRecord) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let (st, se) = (&r.study, &r.series);
    let q = bind_study(sqlx::query(PG_RECORD_INSTANCE), st)
        .bind(r.stored_at)
        .bind(&se.series_uid);
    let q = bind_instance(bind_series(q, se).bind(&r.sop_instance_uid), r);
    q.bind(&r.attrs_json)
        .bind(r.part10_prefix)
        .bind(r.forward_to.join("\n"))
        .fetch_one(ex)
        .await?
        .try_get("inserted")
}

/// The study row (created from this instance if new).
struct StudyRow {
    pk: i64,
    modalities: String,
    sop_classes: String,
    updated_at: i64,
}

/// Insert or find the study row in one statement.
async fn upsert_study(
    tx: &mut Transaction<'_, Any>,
    st: &StudyAttributes,
    now: i64,
) -> Result<StudyRow, IndexError> {
    let row = bind_study(sqlx::query(UPSERT_STUDY), st)
        .bind(now)
        .fetch_one(&mut **tx)
        .await?;
    Ok(StudyRow {
        pk: row.try_get("id")?,
        modalities: row.try_get("modalities")?,
        sop_classes: row.try_get("sop_classes")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// The series' primary key, and whether this instance created it: the row is inserted with
/// one instance or its count incremented, in one statement.
async fn upsert_series(
    tx: &mut Transaction<'_, Any>,
    study_pk: i64,
    se: &SeriesAttributes,
    now: i64,
) -> Result<(i64, bool), IndexError> {
    let q = sqlx::query(UPSERT_SERIES)
        .bind(&se.series_uid)
        .bind(study_pk);
    let row = bind_series(q, se).bind(now).fetch_one(&mut **tx).await?;
    let count: i64 = row.try_get("num_instances")?;
    Ok((row.try_get("id")?, count == 1))
}

/// Insert the instance row; false when the SOP Instance UID is already there.
async fn insert_instance(
    tx: &mut Transaction<'_, Any>,
    study_pk: i64,
    series_pk: i64,
    r: &InstanceRecord,
) -> Result<bool, IndexError> {
    let q = sqlx::query(INSERT_INSTANCE)
        .bind(&r.sop_instance_uid)
        .bind(series_pk)
        .bind(study_pk);
    let inserted = bind_instance(q, r)
        .bind(r.stored_at)
        .bind(&r.attrs_json)
        .bind(r.part10_prefix)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(inserted.is_some())
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

/// The study's columns of [`UPSERT_STUDY`], `study_uid` to `attrs_json`, in order (shared by
/// [`PG_RECORD_INSTANCE`]).
fn bind_study<'q>(q: AnyQuery<'q>, st: &'q StudyAttributes) -> AnyQuery<'q> {
    q.bind(&st.study_uid)
        .bind(&st.patient_name)
        .bind(&st.patient_name_key)
        .bind(&st.patient_id)
        .bind(&st.patient_birth_date)
        .bind(&st.patient_sex)
        .bind(&st.study_date)
        .bind(&st.study_time)
        .bind(&st.accession_number)
        .bind(&st.study_id)
        .bind(&st.study_description)
        .bind(&st.referring_physician_name)
        .bind(&st.referring_physician_key)
        .bind(&st.attrs_json)
}

/// The series' columns of [`UPSERT_SERIES`] after its UID and study key, `modality` to
/// `attrs_json`, in order.
fn bind_series<'q>(q: AnyQuery<'q>, se: &'q SeriesAttributes) -> AnyQuery<'q> {
    q.bind(&se.modality)
        .bind(se.series_number)
        .bind(&se.series_description)
        .bind(&se.body_part_examined)
        .bind(&se.performed_start_date)
        .bind(&se.performed_start_time)
        .bind(&se.attrs_json)
}

/// The instance's columns of [`INSERT_INSTANCE`] after its UID and keys, `sop_class_uid` to
/// `origin_address`, in order.
fn bind_instance<'q>(q: AnyQuery<'q>, r: &'q InstanceRecord) -> AnyQuery<'q> {
    q.bind(&r.sop_class_uid)
        .bind(r.instance_number)
        .bind(&r.transfer_syntax)
        .bind(r.number_of_frames)
        .bind(r.rows)
        .bind(r.columns)
        .bind(&r.object_key)
        .bind(i64::try_from(r.size).unwrap_or(i64::MAX))
        .bind(r.sha256)
        .bind(&r.metadata_json)
        .bind(r.frame_table.clone())
        .bind(r.origin.kind.as_str())
        .bind(&r.origin.who)
        .bind(&r.origin.address)
}

async fn existing<'e, E>(ex: E, sop: &Uid) -> Result<Option<StoredInstance>, IndexError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    Ok(sqlx::query_as(&format!(
        "{} WHERE i.sop_instance_uid = $1",
        super::STORED_SELECT
    ))
    .bind(sop)
    .fetch_optional(ex)
    .await?)
}

/// Add `value` to a backslash-separated, sorted set of values.
pub(super) fn merge_set(current: &str, value: Option<&str>) -> String {
    let mut items: Vec<&str> = current.split('\\').filter(|s| !s.is_empty()).collect();
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        if !items.contains(&v) {
            items.push(v);
            items.sort_unstable();
        }
    }
    items.join("\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The column list after `INSERT INTO {table} (` in `sql`.
    fn columns<'a>(sql: &'a str, table: &str) -> &'a str {
        let start = sql
            .find(&format!("INSERT INTO {table} ("))
            .unwrap_or_else(|| panic!("no insert into {table}"))
            + table.len()
            + 14;
        let len = sql[start..].find(')').unwrap();
        &sql[start..start + len]
    }

    /// The statement-per-row path (an in-memory SQLite index's writer task) writes the rows
    /// and keeps a duplicate from moving counters.
    #[tokio::test]
    async fn the_pool_writer_writes_rows_and_undoes_a_duplicate() {
        use crate::index::records::sample as record;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("index.sqlite").display());
        let index = crate::index::Index::open(&url, 2).await.unwrap();
        let (a, b) = (
            record("1.1", "1.1.1", "1.1.1.1", "CT"),
            record("1.1", "1.1.2", "1.1.2.1", "PR"),
        );
        let dup = record("1.2", "1.2.1", "1.1.1.1", "MR");
        let outcomes = write_batch(&index.pool, Backend::Sqlite, &[&a, &b, &dup])
            .await
            .unwrap();
        assert!(matches!(
            outcomes[..],
            [
                InsertOutcome::Inserted,
                InsertOutcome::Inserted,
                InsertOutcome::Existing(_)
            ]
        ));
        assert_eq!(index.counts().await.unwrap(), (1, 2, 2));
        let row: (i64, i64, String, String, i64, Vec<u8>) = sqlx::query_as(
            "SELECT st.num_series, st.num_instances, st.modalities, i.object_key, i.size, i.frame_table \
             FROM studies st JOIN instances i ON i.study_pk = st.id WHERE i.sop_instance_uid = '1.1.1.1'",
        )
        .fetch_one(&index.pool)
        .await
        .unwrap();
        assert_eq!(
            row,
            (
                2,
                2,
                "CT\\PR".to_owned(),
                a.object_key.to_string(),
                1000,
                vec![1, 2, 3]
            )
        );
    }

    /// PostgreSQL's function (migration 0008) inserts the same columns as the statements
    /// the other writers use, moves `updated_at` by the same step, and is called with every
    /// parameter it declares.
    #[test]
    fn postgres_function_keeps_the_columns() {
        let names =
            |list: &str| -> Vec<String> { list.split(',').map(|c| c.trim().to_owned()).collect() };
        for (table, one) in [
            ("studies", UPSERT_STUDY),
            ("series", UPSERT_SERIES),
            ("instances", INSERT_INSTANCE),
            ("changefeed", INSERT_CHANGE),
            ("forward_jobs", INSERT_FORWARD_JOB),
        ] {
            assert_eq!(
                names(columns(PG_MIGRATION, table)),
                names(columns(one, table)),
                "{table}"
            );
        }
        let counts = UPDATE_STUDY_COUNTS.trim_end_matches(" WHERE id = $1");
        assert_eq!(
            format!("{counts}, updated_at = $5 WHERE id = $1"),
            UPDATE_STUDY
        );
        assert!(PG_MIGRATION.contains(&format!(
            "CASE WHEN p_now >= v_updated_at + {UPDATED_AT_STEP} THEN p_now"
        )));
        let declared = PG_MIGRATION
            .split("CREATE FUNCTION pacs_record_instance(")
            .nth(1)
            .and_then(|rest| rest.split(") RETURNS").next())
            .unwrap()
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("p_"))
            .count();
        assert_eq!(declared, 41);
        assert!(PG_RECORD_INSTANCE.contains("$41)") && !PG_RECORD_INSTANCE.contains("$42"));
    }

    #[test]
    fn merge_set_keeps_a_sorted_distinct_list() {
        assert_eq!(merge_set("", Some("MR")), "MR");
        assert_eq!(merge_set("MR", Some("CT")), "CT\\MR");
        assert_eq!(merge_set("CT\\MR", Some("MR")), "CT\\MR");
        assert_eq!(merge_set("CT", None), "CT");
    }
}
