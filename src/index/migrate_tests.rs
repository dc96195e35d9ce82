//! Migrations applied to a database that already holds rows (the other tests start empty).

use rusqlite::Connection;

/// The SQLite migrations numbered in `numbers`, in order.
fn migrate(conn: &Connection, numbers: std::ops::RangeInclusive<u32>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if numbers.contains(&name[..4].parse().unwrap()) {
            conn.execute_batch(&std::fs::read_to_string(&file).unwrap())
                .unwrap();
        }
    }
}

/// The change feed rebuilt without AUTOINCREMENT keeps every entry and its sequence, and
/// goes on from the last one; deletions are found by SOP Instance UID through the new
/// partial index.
#[test]
fn the_change_feed_keeps_its_entries_and_goes_on_numbering() {
    let conn = Connection::open_in_memory().unwrap();
    migrate(&conn, 1..=8);
    let insert = "INSERT INTO changefeed (at, action, study_uid, series_uid, sop_instance_uid) \
                  VALUES (?1, ?2, '1.2', '1.2.3', ?3)";
    for (at, action, sop) in [
        (1, "create", "1.1"),
        (2, "create", "1.2"),
        (3, "delete", "1.1"),
    ] {
        conn.execute(insert, rusqlite::params![at, action, sop])
            .unwrap();
    }
    migrate(&conn, 9..=u32::MAX);
    let rows: Vec<(i64, i64, String, String)> = conn
        .prepare("SELECT sequence, at, action, sop_instance_uid FROM changefeed ORDER BY sequence")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let kept: Vec<_> = rows
        .iter()
        .map(|(s, at, a, u)| (*s, *at, a.as_str(), u.as_str()))
        .collect();
    assert_eq!(
        kept,
        [
            (1, 1, "create", "1.1"),
            (2, 2, "create", "1.2"),
            (3, 3, "delete", "1.1")
        ]
    );
    conn.execute(insert, rusqlite::params![4, "create", "1.1"])
        .unwrap();
    let last: i64 = conn
        .query_row("SELECT MAX(sequence) FROM changefeed", [], |r| r.get(0))
        .unwrap();
    assert_eq!(last, 4);
    let plan: String = conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT MAX(at) FROM changefeed \
             WHERE sop_instance_uid = '1.1' AND action = 'delete'",
            [],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("changefeed_deletes"), "{plan}");
    let sequences: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_sequence WHERE name = 'changefeed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        sequences, 0,
        "no AUTOINCREMENT counter is kept for the change feed"
    );
}
