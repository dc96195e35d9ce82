//! The index writer: one task that commits concurrent inserts in one transaction. This one
//! serves PostgreSQL; on SQLite the storing threads write themselves
//! ([`super::sqlite_writer`]), with the same batching and the same statements. On
//! PostgreSQL, where each statement is a round trip to the server, an instance's rows go in
//! two statements that chain the same inserts ([`PG_INSERT_ROWS`], [`PG_RECORD_NEW`]; a
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

/// PostgreSQL: the study, series and instance rows in one statement (a round trip to the
/// server costs more than any of them); `inserted` false when the SOP Instance UID was
/// stored already (the caller then undoes the counters). The study upsert's no-op update
/// locks its row, as [`UPSERT_STUDY`] does.
const PG_INSERT_ROWS: &str = "WITH st AS (\
     INSERT INTO studies (study_uid, patient_name, patient_name_key, patient_id, \
     patient_birth_date, patient_sex, study_date, study_time, accession_number, study_id, \
     study_description, referring_physician_name, referring_physician_key, attrs_json, \
     created_at, updated_at) \
     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$15) \
     ON CONFLICT (study_uid) DO UPDATE SET updated_at = studies.updated_at \
     RETURNING id, modalities, sop_classes), \
     se AS (\
     INSERT INTO series (series_uid, study_pk, modality, series_number, series_description, \
     body_part_examined, performed_start_date, performed_start_time, attrs_json, created_at, \
     num_instances) \
     VALUES ($16,(SELECT id FROM st),$17,$18,$19,$20,$21,$22,$23,$15,1) ON CONFLICT (series_uid) \
     DO UPDATE SET num_instances = series.num_instances + 1 RETURNING id, num_instances), \
     i AS (\
     INSERT INTO instances (sop_instance_uid, series_pk, study_pk, sop_class_uid, \
     instance_number, transfer_syntax, number_of_frames, num_rows, num_columns, object_key, \
     size, sha256, metadata_json, frame_table, origin_kind, origin_who, origin_address, \
     stored_at, attrs_json, part10_prefix) \
     VALUES ($24,(SELECT id FROM se),(SELECT id FROM st),$25,$26,$27,$28,$29,$30,$31,$32,$33,\
     $34,$35,$36,$37,$38,$15,$39,$40) \
     ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id) \
     SELECT st.id, st.modalities, st.sop_classes, se.num_instances, \
     EXISTS (SELECT 1 FROM i) AS inserted FROM st, se";
/// PostgreSQL: the change feed entry and the study's counters of a new instance, in one
/// statement ([`INSERT_CHANGE`], [`UPDATE_STUDY`]). `updated_at` moves only when it is
/// [`UPDATED_AT_STEP`] old (see [`UPDATE_STUDY_COUNTS`]): an update that leaves every indexed
/// column as it was is a HOT update, with no new entry in any of the study's indexes.
const PG_RECORD_NEW: &str = "WITH ch AS (\
     INSERT INTO changefeed (at, action, study_uid, series_uid, sop_instance_uid) \
     VALUES ($5, 'create', $6, $7, $8)) \
     UPDATE studies SET num_instances = num_instances + 1, num_series = num_series + $2, \
     modalities = $3, sop_classes = $4, \
     updated_at = CASE WHEN $5 >= updated_at + 1000 THEN $5 ELSE updated_at END WHERE id = $1";

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
    let mut tx = pool.begin().await?;
    if let [record] = records {
        // One row: the transaction itself is the unit to keep or undo.
        let outcome = write_one(&mut tx, backend, record).await?;
        match outcome {
            InsertOutcome::Inserted => tx.commit().await?,
            InsertOutcome::Existing(_) => tx.rollback().await?,
        }
        return Ok(vec![outcome]);
    }
    let mut outcomes = Vec::with_capacity(records.len());
    for record in records {
        let mut sp = sqlx::Acquire::begin(&mut tx).await?;
        let outcome = write_one(&mut sp, backend, record).await?;
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
    backend: Backend,
    r: &InstanceRecord,
) -> Result<InsertOutcome, IndexError> {
    if backend == Backend::Postgres {
        return write_one_pg(tx, r).await;
    }
    let study = upsert_study(tx, backend, &r.study, r.stored_at).await?;
    let (series_pk, new_series) = upsert_series(tx, study.pk, &r.series, r.stored_at).await?;
    if !insert_instance(tx, study.pk, series_pk, r).await? {
        // Stored before (by us or another process).
        let existing = existing(tx, &r.sop_instance_uid).await?;
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
    sqlx::query(UPDATE_STUDY)
        .bind(study.pk)
        .bind(i64::from(new_series))
        .bind(merge_set(&study.modalities, r.series.modality.as_deref()))
        .bind(merge_set(
            &study.sop_classes,
            Some(r.sop_class_uid.as_str()),
        ))
        .bind(r.stored_at)
        .execute(&mut **tx)
        .await?;
    Ok(InsertOutcome::Inserted)
}

/// [`PG_INSERT_ROWS`] for `r`: the study's id, modalities and SOP classes, the series'
/// count, and whether the instance row was inserted.
async fn insert_rows_pg(
    tx: &mut Transaction<'_, Any>,
    r: &InstanceRecord,
) -> Result<sqlx::any::AnyRow, IndexError> {
    let (st, se) = (&r.study, &r.series);
    let q = bind_study(sqlx::query(PG_INSERT_ROWS), st)
        .bind(r.stored_at)
        .bind(&se.series_uid);
    let q = bind_instance(bind_series(q, se).bind(&r.sop_instance_uid), r);
    Ok(q.bind(&r.attrs_json)
        .bind(r.part10_prefix)
        .fetch_one(&mut **tx)
        .await?)
}

/// [`write_one`] on PostgreSQL: the same rows in two statements instead of seven (and one
/// per forwarding destination).
async fn write_one_pg(
    tx: &mut Transaction<'_, Any>,
    r: &InstanceRecord,
) -> Result<InsertOutcome, IndexError> {
    let (st, se) = (&r.study, &r.series);
    let row = insert_rows_pg(tx, r).await?;
    if !row.try_get::<bool, _>("inserted")? {
        // Stored before (by us or another process).
        return existing(tx, &r.sop_instance_uid)
            .await?
            .map(InsertOutcome::Existing)
            .ok_or_else(|| IndexError::Db(sqlx::Error::RowNotFound));
    }
    let study_pk: i64 = row.try_get("id")?;
    let modalities: String = row.try_get("modalities")?;
    let sop_classes: String = row.try_get("sop_classes")?;
    let new_series = row.try_get::<i64, _>("num_instances")? == 1;
    sqlx::query(PG_RECORD_NEW)
        .bind(study_pk)
        .bind(i64::from(new_series))
        .bind(merge_set(&modalities, se.modality.as_deref()))
        .bind(merge_set(&sop_classes, Some(r.sop_class_uid.as_str())))
        .bind(r.stored_at)
        .bind(&st.study_uid)
        .bind(&se.series_uid)
        .bind(&r.sop_instance_uid)
        .execute(&mut **tx)
        .await?;
    for destination in &r.forward_to {
        sqlx::query(INSERT_FORWARD_JOB)
            .bind(destination)
            .bind(&r.sop_instance_uid)
            .bind(&st.study_uid)
            .bind(r.stored_at)
            .execute(&mut **tx)
            .await?;
    }
    Ok(InsertOutcome::Inserted)
}

/// The study row (created from this instance if new), locked for update on PostgreSQL.
struct StudyRow {
    pk: i64,
    modalities: String,
    sop_classes: String,
}

/// Insert or find the study row in one statement; on PostgreSQL the (no-op) update locks
/// the row, so concurrent processes update its counters one after the other.
async fn upsert_study(
    tx: &mut Transaction<'_, Any>,
    _backend: Backend,
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
/// [`PG_INSERT_ROWS`]).
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

async fn existing(
    tx: &mut Transaction<'_, Any>,
    sop: &Uid,
) -> Result<Option<StoredInstance>, IndexError> {
    Ok(sqlx::query_as(&format!(
        "{} WHERE i.sop_instance_uid = $1",
        super::STORED_SELECT
    ))
    .bind(sop)
    .fetch_optional(&mut **tx)
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

    /// PostgreSQL's chained statements insert the same columns as the statements the
    /// other writers use.
    #[test]
    fn postgres_statements_keep_the_columns() {
        for (table, one) in [
            ("studies", UPSERT_STUDY),
            ("series", UPSERT_SERIES),
            ("instances", INSERT_INSTANCE),
        ] {
            assert_eq!(
                columns(PG_INSERT_ROWS, table),
                columns(one, table),
                "{table}"
            );
        }
        assert_eq!(
            columns(PG_RECORD_NEW, "changefeed"),
            columns(INSERT_CHANGE, "changefeed")
        );
        let counts = UPDATE_STUDY_COUNTS.trim_end_matches(" WHERE id = $1");
        assert!(PG_RECORD_NEW.contains(&format!(
            "{counts}, updated_at = CASE WHEN $5 >= updated_at + {UPDATED_AT_STEP} THEN $5 \
             ELSE updated_at END WHERE id = $1"
        )));
        assert_eq!(
            format!("{counts}, updated_at = $5 WHERE id = $1"),
            UPDATE_STUDY
        );
        assert!(UPDATE_STUDY.ends_with(
            "UPDATE studies SET num_instances = num_instances + 1, num_series = num_series + $2, \
             modalities = $3, sop_classes = $4, updated_at = $5 WHERE id = $1"
        ));
    }

    #[test]
    fn merge_set_keeps_a_sorted_distinct_list() {
        assert_eq!(merge_set("", Some("MR")), "MR");
        assert_eq!(merge_set("MR", Some("CT")), "CT\\MR");
        assert_eq!(merge_set("CT\\MR", Some("MR")), "CT\\MR");
        assert_eq!(merge_set("CT", None), "CT");
    }
}
