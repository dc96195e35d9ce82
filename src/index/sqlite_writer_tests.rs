//! Tests of the SQLite index writer (`sqlite_writer.rs`).

use super::*;
use crate::index::records::{migrated_sqlite, sample as record};
use crate::index::Index;

#[tokio::test]
async fn a_batch_keeps_each_instance_apart() {
    // This test writes batches on a connection of its own.
    let (_dir, path, index) = migrated_sqlite().await;
    let mut conn = Connection::open(&path).unwrap();
    let a = record("1.1", "1.1.1", "1.1.1.1", "CT");
    let b = record("1.1", "1.1.2", "1.1.2.1", "PR");
    // The same SOP Instance UID claiming another study: its study and series must not
    // be left behind, nor any counter moved.
    let dup = record("1.2", "1.2.1", "1.1.1.1", "MR");
    let outcomes = write_batch(&mut conn, &[&a, &b, &dup]).unwrap();
    assert!(matches!(outcomes[0], InsertOutcome::Inserted));
    assert!(matches!(outcomes[1], InsertOutcome::Inserted));
    match &outcomes[2] {
        InsertOutcome::Existing(e) => {
            assert_eq!(
                (e.study_uid.as_str(), e.sha256),
                ("1.1", crate::model::Sha256::of(b"1.1.1.1"))
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(index.counts().await.unwrap(), (1, 2, 2));
    let study: (i64, i64, String, Vec<u8>) = conn
        .query_row(
            "SELECT st.num_series, st.num_instances, st.modalities, i.frame_table \
             FROM studies st JOIN instances i ON i.study_pk = st.id \
             WHERE i.sop_instance_uid = '1.1.1.1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(study, (2, 2, "CT\\PR".to_owned(), vec![1, 2, 3]));
    let (changes, audits): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM changefeed), (SELECT COUNT(*) FROM audit_events)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // The audit trail's store events come from ingest, through the audit writer.
    assert_eq!((changes, audits), (2, 0));
    // Through the writer: the stored copy is found again.
    let again = index
        .insert(record("1.1", "1.1.1", "1.1.1.1", "CT"))
        .await
        .unwrap();
    assert!(matches!(again, InsertOutcome::Existing(_)));
    assert_eq!(index.counts().await.unwrap(), (1, 2, 2));
    // Alone in its batch (no savepoint): its transaction is rolled back, the study and
    // series it claimed with it, and the connection is out of the transaction.
    let lone = write_batch(&mut conn, &[&dup]).unwrap();
    assert!(matches!(lone[..], [InsertOutcome::Existing(_)]));
    assert!(conn.is_autocommit());
    assert_eq!(index.counts().await.unwrap(), (1, 2, 2));
    let c = record("1.3", "1.3.1", "1.3.1.1", "CT");
    assert!(matches!(
        write_batch(&mut conn, &[&c]).unwrap()[..],
        [InsertOutcome::Inserted]
    ));
    assert_eq!(index.counts().await.unwrap(), (2, 3, 3));
}

/// Threads storing at once share the writing: every row is committed once and each
/// thread gets its own row's outcome (a duplicate among them included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_take_turns_and_get_their_own_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.sqlite");
    let url = format!("sqlite://{}", path.display());
    let index = Index::open_with(&url, 2, true).await.unwrap();
    let writer = Arc::new(open(path.to_str().unwrap(), true).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                (0..40)
                    .map(|i| {
                        let (st, se) = (format!("1.{t}"), format!("1.{t}.1"));
                        // Thread 7 sends thread 0's instances again.
                        let sop = format!("1.{}.1.{i}", if t == 7 { 0 } else { t });
                        writer.write(record(&st, &se, &sop, "CT")).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let outcomes: Vec<Vec<InsertOutcome>> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let inserted = |o: &Vec<InsertOutcome>| {
        o.iter()
            .filter(|x| matches!(x, InsertOutcome::Inserted))
            .count()
    };
    for o in &outcomes[1..7] {
        assert_eq!(inserted(o), 40);
    }
    // Of thread 0's instances and thread 7's copies, each stored exactly once.
    assert_eq!(inserted(&outcomes[0]) + inserted(&outcomes[7]), 40);
    assert_eq!(index.counts().await.unwrap().2, 7 * 40);
}

/// A study's `updated_at` (when it last gained an instance) moves when it is a second
/// old, not with every instance; the counters move with every one.
#[tokio::test]
async fn a_study_updated_at_moves_by_the_second() {
    let (_dir, path, _index) = migrated_sqlite().await;
    let mut conn = Connection::open(&path).unwrap();
    let study = |conn: &Connection| -> (i64, i64) {
        conn.query_row(
            "SELECT updated_at, num_instances FROM studies WHERE study_uid = '1.1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    for (n, (sop, at, expected)) in [
        ("1", 5_000, 5_000),
        ("2", 5_999, 5_000),
        ("3", 6_000, 6_000),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = record("1.1", "1.1.1", &format!("1.1.1.{sop}"), "CT");
        r.stored_at = at;
        write_batch(&mut conn, &[&r]).unwrap();
        assert_eq!(study(&conn), (expected, n as i64 + 1), "instance {sop}");
    }
}

/// The checkpoint thread copies committed pages into the database file on its own (the
/// writer's automatic checkpoint is far off), so the WAL does not grow without end.
#[tokio::test]
async fn checkpoints_run_beside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.sqlite");
    let url = format!("sqlite://{}", path.display());
    let index = Index::open_with(&url, 2, true).await.unwrap();
    let size = || std::fs::metadata(&path).unwrap().len();
    let before = size();
    for i in 0..50 {
        let (study, series, sop) = (format!("1.{i}"), format!("1.{i}.1"), format!("1.{i}.1.1"));
        let outcome = index
            .insert(record(&study, &series, &sop, "CT"))
            .await
            .unwrap();
        assert!(matches!(outcome, InsertOutcome::Inserted));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while size() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint in 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(index.commits_relaxed());
    assert_eq!(index.counts().await.unwrap(), (50, 50, 50));
}

/// A connection left inside a transaction (a rollback that failed) does not fail every
/// batch after it: the next batch ends that transaction first.
#[tokio::test]
async fn a_transaction_left_open_is_ended_by_the_next_batch() {
    let (_dir, path, index) = migrated_sqlite().await;
    let mut conn = Connection::open(&path).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    let a = record("1.1", "1.1.1", "1.1.1.1", "CT");
    assert!(matches!(
        write_batch(&mut conn, &[&a]).unwrap()[..],
        [InsertOutcome::Inserted]
    ));
    assert!(conn.is_autocommit());
    assert_eq!(index.counts().await.unwrap(), (1, 1, 1));
}
