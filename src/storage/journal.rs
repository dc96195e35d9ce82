//! The object journal: small objects made durable by one shared flush.
//!
//! A durable put of its own costs two flushes in order — the file's data, then the entry
//! in its directory — and concurrent puts into different study directories cannot share
//! them. Objects held in memory by the spool (up to 1 MiB: nearly every image) take
//! another way on the filesystem: the bytes are appended, with their key and the time, to
//! this process's journal, and the journal is flushed (`fdatasync`) for every put waiting
//! at that moment at once (group commit). The object is then written under its key
//! without a flush of its own. Once a second, a background thread starts a new journal
//! segment, waits for the puts still writing objects of the old one, flushes the objects'
//! whole filesystem (`syncfs`: data and directories) and deletes the old segment.
//!
//! What is acknowledged is therefore always on disk: in its object file, or in a segment
//! not yet deleted. After a crash, [`replay`] (at start-up, before anything reads the
//! store) restores from the segments every object whose file is missing or does not hold
//! the bytes its key names, with its original modification time (start-up recovery uses
//! it to tell an instance deleted after it was written), flushes the filesystem and then
//! deletes the segments. A segment is only read by a process that holds its directory's
//! lock, so a running process's journal is never touched.
//!
//! Record layout (little endian): magic `PJR1`, key length (u16), 2 bytes reserved, data
//! length (u64), written at (ms since the epoch, i64), key, data. A record is valid when
//! its data hash to the SHA-256 its key names. Records are written in order under one
//! lock, and a flush covers every record written before it, so the first invalid record
//! ends a segment: nothing after it was acknowledged.

use std::io::{IoSlice, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{ObjectKey, StorageError};

const MAGIC: &[u8; 4] = b"PJR1";
const HEAD: usize = 24;
/// Records larger than this are not the spool's in-memory objects: a damaged length.
const MAX_RECORD: u64 = 64 << 20;
/// How often a new segment starts and the objects of the old one are flushed.
const ROTATE_EVERY: Duration = Duration::from_secs(1);

/// This process's journal (see the module documentation).
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    objects: PathBuf,
    current: Mutex<Current>,
    /// Held by a rotation (the thread's, or the last one when the journal is dropped).
    rotating: Mutex<()>,
    _lock: std::fs::File,
}

struct Current {
    segment: Arc<Segment>,
    seq: u64,
}

struct Segment {
    path: PathBuf,
    file: std::fs::File,
    state: Mutex<SegmentState>,
    changed: Condvar,
}

#[derive(Default)]
struct SegmentState {
    end: u64,
    /// Records written, and the highest one a completed flush covers.
    written: u64,
    covered: u64,
    flushing: bool,
    /// A flush failed: what the file holds is unknown, nothing more is accepted in it.
    failed: bool,
    /// Puts that recorded here and have not finished writing their object yet.
    in_flight: usize,
}

/// A put's record; dropped once its object is written under its key.
pub struct Entry {
    segment: Arc<Segment>,
    /// The record's number in its segment.
    ticket: u64,
}

impl Entry {
    /// Return once the record is on disk. Group commit: one flush at a time; whoever
    /// finds none running flushes every record written so far, the others wait for a
    /// flush that covers theirs.
    pub fn flush(&self) -> Result<(), StorageError> {
        let segment = &self.segment;
        let mut state = segment.state.lock().expect("journal segment");
        loop {
            if state.covered >= self.ticket {
                return Ok(());
            }
            if state.failed {
                return Err(StorageError::Internal(format!(
                    "{}: flush failed",
                    segment.path.display()
                )));
            }
            if !state.flushing {
                state.flushing = true;
                let covers = state.written;
                drop(state);
                let result = segment.file.sync_data();
                state = segment.state.lock().expect("journal segment");
                state.flushing = false;
                match result {
                    Ok(()) => state.covered = state.covered.max(covers),
                    Err(_) => state.failed = true,
                }
                segment.changed.notify_all();
                result.map_err(|e| StorageError::io("fsyncing", &segment.path, e))?;
                continue;
            }
            state = segment.changed.wait(state).expect("journal segment");
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut state = self.segment.state.lock().expect("journal segment");
        state.in_flight -= 1;
        if state.in_flight == 0 {
            self.segment.changed.notify_all();
        }
    }
}

impl Journal {
    /// Start this process's journal in a directory of its own under `root`, locked while
    /// it lives, for objects under `objects`.
    pub fn open(root: &Path, objects: &Path) -> Result<Journal, StorageError> {
        super::local::create_dir(root)?;
        let dir = root.join(uuid::Uuid::new_v4().simple().to_string());
        super::local::create_dir(&dir)?;
        let lock_path = dir.join(".lock");
        let lock = std::fs::File::create(&lock_path)
            .map_err(|e| StorageError::io("creating", &lock_path, e))?;
        lock.try_lock().map_err(|e| {
            StorageError::io("locking", &lock_path, std::io::Error::other(e.to_string()))
        })?;
        let segment = Segment::create(&dir, 0)?;
        let inner = Arc::new(Inner {
            dir,
            objects: objects.to_owned(),
            current: Mutex::new(Current { segment, seq: 0 }),
            rotating: Mutex::new(()),
            _lock: lock,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("object-journal".into())
            .spawn(move || rotate_forever(weak))
            .map_err(|e| StorageError::Internal(format!("cannot start the journal thread: {e}")))?;
        Ok(Journal { inner })
    }

    /// Append `bytes` under `key` (an instance key: one that names their digest). The
    /// record is on disk once [`Entry::flush`] has returned (blocking).
    pub fn record(&self, key: &ObjectKey, bytes: &[u8]) -> Result<Entry, StorageError> {
        let segment = {
            // Counted in flight before the segment can be swapped out: the rotation waits
            // for this put's object before it flushes and deletes the segment.
            let current = self.inner.current.lock().expect("journal");
            current
                .segment
                .state
                .lock()
                .expect("journal segment")
                .in_flight += 1;
            current.segment.clone()
        };
        let mut entry = Entry { segment, ticket: 0 };
        entry.ticket = entry.segment.append(key, bytes)?;
        Ok(entry)
    }

    /// Start a new segment, and retire the old one once its objects are on disk.
    fn rotate(inner: &Inner) -> Result<(), StorageError> {
        let _rotating = inner.rotating.lock().expect("journal rotation");
        let (old, seq) = {
            let current = inner.current.lock().expect("journal");
            if current.segment.state.lock().expect("journal segment").end == 0 {
                return Ok(());
            }
            (current.segment.clone(), current.seq + 1)
        };
        let segment = Segment::create(&inner.dir, seq)?;
        *inner.current.lock().expect("journal") = Current { segment, seq };
        {
            let mut state = old.state.lock().expect("journal segment");
            while state.in_flight > 0 {
                state = old.changed.wait(state).expect("journal segment");
            }
        }
        syncfs(&inner.objects)?;
        std::fs::remove_file(&old.path).map_err(|e| StorageError::io("removing", &old.path, e))
    }
}

impl Drop for Journal {
    /// A clean stop leaves nothing to replay: the objects are flushed, the journal deleted.
    fn drop(&mut self) {
        match Journal::rotate(&self.inner) {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&self.inner.dir);
            }
            Err(e) => {
                tracing::error!(error = %e, "object journal: cannot flush the objects at exit")
            }
        }
    }
}

fn rotate_forever(inner: Weak<Inner>) {
    loop {
        std::thread::sleep(ROTATE_EVERY);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(e) = Journal::rotate(&inner) {
            // The old segment stays: what it holds is replayed at the next start.
            tracing::error!(error = %e, "object journal: cannot flush the objects of a segment");
        }
    }
}

impl Segment {
    /// A new, empty segment file whose directory entry is durable.
    fn create(dir: &Path, seq: u64) -> Result<Arc<Segment>, StorageError> {
        let path = dir.join(format!("{seq:016}.log"));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StorageError::io("creating", &path, e))?;
        super::dirsync::sync_dir(dir)
            .map_err(|e| StorageError::io("fsyncing directory", dir, e))?;
        Ok(Arc::new(Segment {
            path,
            file,
            state: Mutex::new(SegmentState::default()),
            changed: Condvar::new(),
        }))
    }

    /// Write a record (not flushed yet); its number comes back.
    fn append(&self, key: &ObjectKey, bytes: &[u8]) -> Result<u64, StorageError> {
        let key = key.as_str().as_bytes();
        let mut head = [0u8; HEAD];
        head[..4].copy_from_slice(MAGIC);
        head[4..6].copy_from_slice(&(key.len() as u16).to_le_bytes());
        head[8..16].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        head[16..24].copy_from_slice(&crate::index::now_millis().to_le_bytes());
        let write = |e| StorageError::io("writing", &self.path, e);
        let mut state = self.state.lock().expect("journal segment");
        if state.failed {
            return Err(StorageError::Internal(format!(
                "{}: an earlier flush failed",
                self.path.display()
            )));
        }
        // Written under the lock: records lie end to end, in order (see the module doc).
        let (at, len) = (state.end, HEAD + key.len() + bytes.len());
        let parts = [IoSlice::new(&head), IoSlice::new(key), IoSlice::new(bytes)];
        let written = rustix::io::pwritev(&self.file, &parts, at).map_err(|e| write(e.into()))?;
        if written < len {
            let rest = [&head[..], key, bytes].concat();
            self.file
                .write_all_at(&rest[written..], at + written as u64)
                .map_err(write)?;
        }
        state.end = at + len as u64;
        state.written += 1;
        Ok(state.written)
    }
}

/// Flush the whole filesystem that holds `path`: every object written so far, and its
/// directory entries.
fn syncfs(path: &Path) -> Result<(), StorageError> {
    let dir = std::fs::File::open(path).map_err(|e| StorageError::io("opening", path, e))?;
    rustix::fs::syncfs(&dir).map_err(|e| StorageError::io("syncfs", path, e.into()))
}

/// What [`replay`] found in the journals of processes that are gone.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records read, and the objects written again from them (missing or damaged).
    pub records: usize,
    pub restored: Vec<String>,
}

/// Restore the objects recorded in the journals under `root` of processes that are gone,
/// make them durable and delete those journals (blocking; see the module documentation).
pub fn replay(root: &Path, objects: &Path) -> Result<ReplayReport, StorageError> {
    let mut report = ReplayReport::default();
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(report);
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(lock) = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(".lock"))
        else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue; // a live process's journal
        }
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| StorageError::io("listing", &dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        segments.sort();
        for segment in &segments {
            replay_segment(segment, objects, &mut report)?;
        }
        if !segments.is_empty() {
            syncfs(objects)?;
        }
        std::fs::remove_dir_all(&dir).map_err(|e| StorageError::io("removing", &dir, e))?;
    }
    Ok(report)
}

fn replay_segment(
    path: &Path,
    objects: &Path,
    report: &mut ReplayReport,
) -> Result<(), StorageError> {
    let read = |e| StorageError::io("reading", path, e);
    let file = std::fs::File::open(path).map_err(read)?;
    let len = file.metadata().map_err(read)?.len();
    let mut at = 0u64;
    while let Some((key, data, written)) = next_record(&file, at, len).map_err(read)? {
        at += (HEAD + key.as_str().len() + data.len()) as u64;
        report.records += 1;
        let target = objects.join(key.as_str());
        if !holds(&target, &key) {
            super::local::restore(&target, &data, written)?;
            report.restored.push(key.as_str().to_owned());
        }
    }
    Ok(())
}

/// The record at `at`, if it is whole and valid.
fn next_record(
    file: &std::fs::File,
    at: u64,
    len: u64,
) -> std::io::Result<Option<(ObjectKey, Vec<u8>, i64)>> {
    if at + HEAD as u64 > len {
        return Ok(None);
    }
    let mut head = [0u8; HEAD];
    file.read_exact_at(&mut head, at)?;
    let key_len = u16::from_le_bytes([head[4], head[5]]) as u64;
    let data_len = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let written = i64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
    if &head[..4] != MAGIC || data_len > MAX_RECORD || at + HEAD as u64 + key_len + data_len > len {
        return Ok(None);
    }
    let mut key = vec![0u8; key_len as usize];
    file.read_exact_at(&mut key, at + HEAD as u64)?;
    let Some(key) = String::from_utf8(key)
        .ok()
        .and_then(|k| ObjectKey::parse(&k))
    else {
        return Ok(None);
    };
    let mut data = vec![0u8; data_len as usize];
    file.read_exact_at(&mut data, at + HEAD as u64 + key_len)?;
    if hex::encode(Sha256::digest(&data)) != key.sha256_hex() {
        return Ok(None);
    }
    Ok(Some((key, data, written)))
}

/// Whether `target` exists and holds the bytes `key` names.
fn holds(target: &Path, key: &ObjectKey) -> bool {
    let Ok(mut file) = std::fs::File::open(target) else {
        return false;
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(_) => return false,
        }
    }
    hex::encode(hasher.finalize()) == key.sha256_hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(study: &str, bytes: &[u8]) -> ObjectKey {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        ObjectKey::new(&crate::model::Uid::parse(study).unwrap(), &digest)
    }

    /// What a crash leaves: the journal's directory, its segments in place, its lock
    /// released (no clean stop: the journal is never dropped).
    fn crash(journal: Journal) {
        journal.inner._lock.unlock().unwrap();
        std::mem::forget(journal);
    }

    #[test]
    fn replay_restores_missing_and_torn_objects_with_their_time_and_keeps_intact_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, objects) = (tmp.path().join("journal"), tmp.path().join("objects"));
        std::fs::create_dir_all(&objects).unwrap();
        let journal = Journal::open(&root, &objects).unwrap();
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
        assert_eq!(
            std::fs::read_dir(&root).unwrap().count(),
            0,
            "journal deleted"
        );
        assert_eq!(replay(&root, &objects).unwrap(), ReplayReport::default());
    }

    #[test]
    fn a_torn_tail_ends_the_segment_and_a_live_journal_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, objects) = (tmp.path().join("journal"), tmp.path().join("objects"));
        std::fs::create_dir_all(&objects).unwrap();
        let journal = Journal::open(&root, &objects).unwrap();
        let (a, b) = (vec![1u8; 500], vec![2u8; 700]);
        journal
            .record(&key("1.2.3", &a), &a)
            .unwrap()
            .flush()
            .unwrap();
        journal
            .record(&key("1.2.4", &b), &b)
            .unwrap()
            .flush()
            .unwrap();
        let live = Journal::open(&root, &objects).unwrap();
        live.record(&key("1.2.5", &a), &a).unwrap().flush().unwrap();
        let segment = journal.inner.current.lock().unwrap().segment.path.clone();
        crash(journal);
        let len = std::fs::metadata(&segment).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let report = replay(&root, &objects).unwrap();
        assert_eq!(report.restored, vec![key("1.2.3", &a).as_str().to_owned()]);
        assert!(
            !objects.join("1.2.5").exists(),
            "the live journal was not read"
        );
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1);
        drop(live);
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "clean stop");
    }

    #[test]
    fn concurrent_records_are_all_durable_and_rotation_retires_a_segment_after_its_puts() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, objects) = (tmp.path().join("journal"), tmp.path().join("objects"));
        std::fs::create_dir_all(&objects).unwrap();
        let journal = Arc::new(Journal::open(&root, &objects).unwrap());
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    for i in 0..25u8 {
                        let blob = vec![t, i, 7];
                        journal
                            .record(&key("1.2.3", &blob), &blob)
                            .unwrap()
                            .flush()
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let first = journal.inner.current.lock().unwrap().segment.clone();
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
}
