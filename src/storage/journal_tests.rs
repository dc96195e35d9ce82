//! Tests of the object journal (`journal.rs`). They open journals without the thread
//! that rotates them every second ([`Journal::open_still`]) and rotate them themselves;
//! one test starts it.

use super::*;

/// How many process journals there are under `root`.
fn journals(root: &Path) -> usize {
    std::fs::read_dir(root)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count()
}

fn key(study: &str, bytes: &[u8]) -> ObjectKey {
    let digest = crate::model::Sha256::of(bytes);
    ObjectKey::new(&crate::model::Uid::parse(study).unwrap(), &digest)
}

/// A temporary directory with the journals' root (not made) and the objects' (made).
fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (root, objects) = (tmp.path().join("journal"), tmp.path().join("objects"));
    std::fs::create_dir_all(&objects).unwrap();
    (tmp, root, objects)
}

/// Record `bytes` under their key in `study` and flush the record.
fn put(journal: &Journal, study: &str, bytes: &[u8]) {
    journal
        .record(&key(study, bytes), bytes)
        .unwrap()
        .flush()
        .unwrap();
}

/// What a crash leaves: the journal's directory, its segments in place, its lock
/// released (no clean stop: the journal is never dropped).
fn crash(journal: Journal) {
    journal.inner._lock.unlock().unwrap();
    std::mem::forget(journal);
}

#[test]
fn replay_restores_missing_and_torn_objects_with_their_time_and_keeps_intact_ones() {
    let (_tmp, root, objects) = dirs();
    let journal = Journal::open_still(&root, &objects).unwrap();
    let blobs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000 + i as usize]).collect();
    let keys: Vec<ObjectKey> = blobs.iter().map(|b| key("1.2.3", b)).collect();
    for (k, b) in keys.iter().zip(&blobs) {
        let entry = journal.record(k, b).unwrap();
        entry.flush().unwrap();
        drop(entry);
        let path = objects.join(k.as_str());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b).unwrap();
    }
    let before_crash = std::time::SystemTime::now();
    crash(journal);
    // Power lost: one object gone, one torn, one intact.
    std::fs::remove_file(objects.join(keys[0].as_str())).unwrap();
    std::fs::write(objects.join(keys[1].as_str()), &blobs[1][..10]).unwrap();
    let report = replay(&root, &objects).unwrap();
    assert_eq!(report.records, 3);
    assert_eq!(
        report.restored,
        vec![keys[0].as_str().to_owned(), keys[1].as_str().to_owned()]
    );
    for (k, b) in keys.iter().zip(&blobs) {
        assert_eq!(&std::fs::read(objects.join(k.as_str())).unwrap(), b);
    }
    let restored = std::fs::metadata(objects.join(keys[0].as_str()))
        .unwrap()
        .modified()
        .unwrap();
    assert!(restored <= before_crash, "the time it was first written");
    assert_eq!(journals(&root), 0, "journal deleted");
    assert_eq!(replay(&root, &objects).unwrap(), ReplayReport::default());
}

#[test]
fn a_torn_tail_ends_the_segment_and_a_live_journal_is_left_alone() {
    let (_tmp, root, objects) = dirs();
    let journal = Journal::open_still(&root, &objects).unwrap();
    let (a, b) = (vec![1u8; 500], vec![2u8; 700]);
    put(&journal, "1.2.3", &a);
    put(&journal, "1.2.4", &b);
    let live = Journal::open_still(&root, &objects).unwrap();
    put(&live, "1.2.5", &a);
    let (segment, end) = {
        let current = journal.inner.current.lock().unwrap();
        let end = current.state.lock().unwrap().end;
        (current.path.clone(), end)
    };
    crash(journal);
    // The second record's last byte never reached the disk: the prepared file's zero.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .write_all_at(&[0], end - 1)
        .unwrap();
    let report = replay(&root, &objects).unwrap();
    assert_eq!(report.restored, vec![key("1.2.3", &a).as_str().to_owned()]);
    assert!(
        !objects.join("1.2.5").exists(),
        "the live journal was not read"
    );
    assert_eq!(journals(&root), 1);
    drop(live);
    assert_eq!(journals(&root), 0, "clean stop");
}

/// Records are written over a prepared segment's zeros, not beyond its end; the spare is
/// prepared to twice what the last segment held, and cut back when longer than a spare is
/// ever prepared to; the zeros after the last record end a replay's scan.
#[test]
fn segments_are_prepared_and_records_do_not_grow_them() {
    let (_tmp, root, objects) = dirs();
    let journal = Journal::open_still(&root, &objects).unwrap();
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    let first = journal.inner.current.lock().unwrap().path.clone();
    assert_eq!(len(&first), PREPARED);
    let blobs: Vec<Vec<u8>> = (1..4u8).map(|i| vec![i; 4000 * i as usize]).collect();
    for blob in &blobs {
        let entry = journal.record(&key("1.2.3", blob), blob).unwrap();
        entry.flush().unwrap();
    }
    assert_eq!(len(&first), PREPARED, "written over, not beyond");
    let held = Journal::rotate(&journal.inner).unwrap();
    let records: usize = blobs
        .iter()
        .map(|b| HEAD + key("1.2.3", b).as_str().len() + b.len())
        .sum();
    assert_eq!(held, records as u64);
    // A segment that held PREPARED bytes retired: its spare is prepared to twice that.
    Journal::prepare_spare(&journal.inner, PREPARED).unwrap();
    assert_eq!(len(&journal.inner.dir.join(SPARE)), 2 * PREPARED);
    assert_eq!(journal.inner.current.lock().unwrap().seq, 1);
    // A spare left longer than the most a spare is prepared to is cut back to it.
    let spare = journal.inner.spare.lock().unwrap().take().unwrap();
    spare.set_len(PREPARED_MAX + (1 << 20)).unwrap();
    *journal.inner.spare.lock().unwrap() = Some(spare);
    Journal::prepare_spare(&journal.inner, PREPARED).unwrap();
    assert_eq!(len(&journal.inner.dir.join(SPARE)), PREPARED_MAX);
    let last = vec![9u8; 100];
    put(&journal, "1.2.3", &last);
    crash(journal);
    let report = replay(&root, &objects).unwrap();
    assert_eq!(
        report.records, 1,
        "segment 0 was retired; segment 1's zeros end its scan"
    );
    assert_eq!(
        report.restored,
        vec![key("1.2.3", &last).as_str().to_owned()]
    );
}

#[test]
fn a_reused_segment_replays_only_its_own_records() {
    let (_tmp, root, objects) = dirs();
    let journal = Journal::open_still(&root, &objects).unwrap();
    let blobs = [vec![1u8; 3000], vec![2u8; 3000], vec![3u8; 100]];
    for (n, blob) in blobs.iter().enumerate() {
        journal
            .record(&key("1.2.3", blob), blob)
            .unwrap()
            .flush()
            .unwrap();
        if n < 2 {
            Journal::rotate(&journal.inner).unwrap();
        }
    }
    // Segment 2 is segment 0's file, written over from its start: the rest of the old
    // record is still there, and segment 1 is the spare.
    let current = journal.inner.current.lock().unwrap().clone();
    assert_eq!(current.seq, 2);
    assert!(std::fs::metadata(&current.path).unwrap().len() > 3000);
    assert!(journal.inner.dir.join(SPARE).exists());
    drop(current);
    crash(journal);
    let report = replay(&root, &objects).unwrap();
    assert_eq!(report.records, 1);
    assert_eq!(
        report.restored,
        vec![key("1.2.3", &blobs[2]).as_str().to_owned()]
    );
}

#[test]
fn concurrent_records_are_all_durable_and_rotation_retires_a_segment_after_its_puts() {
    let (_tmp, root, objects) = dirs();
    let journal = Arc::new(Journal::open_still(&root, &objects).unwrap());
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                for i in 0..25u8 {
                    let blob = vec![t, i, 7];
                    put(&journal, "1.2.3", &blob);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let first = journal.inner.current.lock().unwrap().clone();
    assert_eq!(first.state.lock().unwrap().written, 200);
    // A put still writing its object holds the old segment back.
    let pending = journal.record(&key("1.2.3", b"x"), b"x").unwrap();
    let rotation = {
        let inner = journal.inner.clone();
        std::thread::spawn(move || Journal::rotate(&inner))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(first.path.exists() && !rotation.is_finished());
    drop(pending);
    rotation.join().unwrap().unwrap();
    assert!(
        !first.path.exists(),
        "retired once its objects were flushed"
    );
    let journal = Arc::into_inner(journal).unwrap();
    crash(journal);
    let report = replay(&root, &objects).unwrap();
    assert_eq!(report.records, 0, "the new segment is empty");
}

#[test]
fn replay_gives_an_object_the_time_of_its_last_record() {
    // Stored, deleted, sent again: recovery compares the later record's time with the
    // delete, whether the file survived (with its first time) or has to be written again.
    for file_survived in [true, false] {
        let (_tmp, root, objects) = dirs();
        std::fs::create_dir_all(objects.join("1.2.3")).unwrap();
        let journal = Journal::open_still(&root, &objects).unwrap();
        let blob = vec![9u8; 2000];
        let k = key("1.2.3", &blob);
        journal.record(&k, &blob).unwrap().flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let between = std::time::SystemTime::now();
        std::thread::sleep(Duration::from_millis(10));
        journal.record(&k, &blob).unwrap().flush().unwrap();
        crash(journal);
        let path = objects.join(k.as_str());
        if file_survived {
            std::fs::write(&path, &blob).unwrap();
            let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let report = replay(&root, &objects).unwrap();
        assert_eq!(report.records, 2);
        assert_eq!(report.restored.len(), usize::from(!file_survived));
        let time = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(time >= between, "file survived: {file_survived}");
    }
}

#[test]
fn a_deleted_object_stays_deleted_unless_it_was_put_again() {
    for put_again in [false, true] {
        let (_tmp, root, objects) = dirs();
        let journal = Journal::open_still(&root, &objects).unwrap();
        let blob = vec![5u8; 1500];
        let k = key("1.2.3", &blob);
        journal.record(&k, &blob).unwrap().flush().unwrap();
        drop(journal.forget(&k).unwrap());
        if put_again {
            journal.record(&k, &blob).unwrap().flush().unwrap();
        }
        let other = vec![6u8; 10];
        put(&journal, "1.2.3", &other);
        crash(journal);
        let report = replay(&root, &objects).unwrap();
        assert_eq!(report.deleted, usize::from(!put_again));
        assert_eq!(objects.join(k.as_str()).exists(), put_again);
        assert!(objects.join(key("1.2.3", &other).as_str()).exists());
    }
}

#[test]
fn a_replay_waits_for_one_in_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, objects) = (tmp.path().join("journal"), tmp.path().join("objects"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&objects).unwrap();
    let held = lock_root(&root).unwrap();
    let replaying = std::thread::spawn(move || replay(&root, &objects));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!replaying.is_finished());
    drop(held);
    replaying.join().unwrap().unwrap();
}

#[test]
fn a_segment_that_could_not_be_retired_survives_a_clean_stop() {
    let (_tmp, root, objects) = dirs();
    let journal = Journal::open_still(&root, &objects).unwrap();
    let blob = vec![4u8; 100];
    put(&journal, "1.2.3", &blob);
    // The retirement's rename fails: the segment is gone from under it.
    let segment = journal.inner.current.lock().unwrap().path.clone();
    let moved = segment.with_extension("moved");
    std::fs::rename(&segment, &moved).unwrap();
    assert!(Journal::rotate(&journal.inner).is_err());
    std::fs::rename(&moved, &segment).unwrap();
    drop(journal);
    assert_eq!(journals(&root), 1, "kept for the next start");
    assert_eq!(replay(&root, &objects).unwrap().restored.len(), 1);
}

/// Where the filesystem knows ext4's "top directory" flag, the journals' root has it: each
/// process's journal (and the inodes of its segments) is placed apart from the objects.
/// The journal's thread prepares the spare before the first rotation needs it.
#[test]
fn the_journals_are_set_apart_and_the_spare_is_prepared_ahead() {
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    let (tmp, root, objects) = dirs();
    let probe = std::fs::File::open(tmp.path()).unwrap();
    let supported = ioctl_getflags(&probe)
        .and_then(|flags| ioctl_setflags(&probe, flags | IFlags::TOPDIR))
        .is_ok();
    let journal = Journal::open(&root, &objects).unwrap();
    let flags = ioctl_getflags(std::fs::File::open(&root).unwrap());
    if supported {
        assert!(flags.unwrap().contains(IFlags::TOPDIR));
    } else {
        eprintln!("this filesystem has no top-directory flag: nothing to check");
    }
    let spare = journal.inner.dir.join(SPARE);
    let prepared = || std::fs::metadata(&spare).is_ok_and(|m| m.len() == PREPARED);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !prepared() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(prepared(), "the spare is prepared by the journal's thread");
    drop(journal);
}
