//! The object journal: small objects made durable by one shared flush.
//!
//! A durable put of its own costs two flushes in order — the file's data, then the entry
//! in its directory — and concurrent puts into different study directories cannot share
//! them. Objects held in memory by the spool (up to 1 MiB: nearly every image) take
//! another way on the filesystem: the bytes are appended, with their key and the time, to
//! this process's journal, the object is written under its key without a flush of its own,
//! and the journal is flushed (`fdatasync`) for every put waiting at that moment at once
//! (group commit). Once a second, a background thread starts a new journal segment, waits
//! for the puts still writing objects of the old one, flushes the objects' whole
//! filesystem (`syncfs`, on a file opened once: it reports each writeback error once per
//! open file) and retires the old segment. A segment that cannot be retired stays for the
//! next start.
//!
//! What is acknowledged is therefore always on disk: in its object file, or in a segment
//! not yet retired. After a crash, [`replay`] (at start-up, before anything reads the
//! store; one process at a time) restores from the segments every object whose file is
//! missing or does not hold the bytes its key names, with the time of its last record
//! (start-up recovery compares it with deletes: an instance deleted and sent again has two
//! records), sets the time of their directories (recovery looks into recently modified
//! ones), flushes the filesystem and then deletes the segments. A segment is only read by
//! a process that holds its directory's lock, so a running process's journal is never
//! touched.
//!
//! Record layout (little endian): magic `PJR1`, key length (u16), flags (u16: 1 for a
//! tombstone, the record of a deletion, without data), data
//! length (u64), written at (ms since the epoch, i64), the segment's number (u64), key,
//! data. A record is valid when it carries the number its segment's file name has and its
//! data hash to the SHA-256 its key names (a tombstone: its key is an object key). Records are written in order under one lock,
//! and a flush covers every record written before it, so the first invalid record ends a
//! segment: nothing after it was acknowledged. A retired segment is kept as the spare and
//! renamed into the next segment but one: its blocks are allocated and written already, so
//! a flush of records written over them carries no change of the file's size or block map
//! (on ext4 one write less per flush); its old records, numbered otherwise, end a scan.
//!
//! Deletions of objects (admin deletes, the losing copy of a conflict, orphans swept by
//! `verify`) append a tombstone, so that a replay does not bring the object back; a key
//! whose last record is a tombstone is left alone.

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::StorageError;
use crate::model::ObjectKey;

const MAGIC: &[u8; 4] = b"PJR1";
/// The retired segment kept for reuse: not a segment's name, never replayed.
const SPARE: &str = "spare";
const HEAD: usize = 32;
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
    /// The objects' root, opened once: `syncfs` reports a writeback error once per open
    /// file since it was opened, so a file opened afresh for each flush could miss one.
    objects: std::fs::File,
    /// A segment could not be retired: it stays on disk for the next start to replay.
    kept: AtomicBool,
    current: Mutex<Arc<Segment>>,
    /// A retired segment, to be reused by the next rotation (see the module doc).
    spare: Mutex<Option<std::fs::File>>,
    /// Held by a rotation (the thread's, or the last one when the journal is dropped).
    rotating: Mutex<()>,
    _lock: std::fs::File,
}

struct Segment {
    seq: u64,
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
        // No replay may take the new directory for a dead process's before it is locked.
        let _replays = lock_root(root)?;
        let (dir, lock) = super::local::claim_dir(root)?;
        let segment = Segment::create(&dir, 0, None)?;
        // The segment's directory entry is durable (`create`); so are the journal's own.
        for d in [Some(root), root.parent()].into_iter().flatten() {
            super::dirsync::sync_dir(d).map_err(|e| StorageError::io("fsyncing", d, e))?;
        }
        let objects =
            std::fs::File::open(objects).map_err(|e| StorageError::io("opening", objects, e))?;
        let inner = Arc::new(Inner {
            dir,
            objects,
            kept: AtomicBool::new(false),
            current: Mutex::new(segment),
            spare: Mutex::new(None),
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
        self.write(key, bytes, false)
    }

    /// Record that the object under `key` is being deleted (a tombstone: a replay does not
    /// bring it back unless a later record puts it again). Not flushed: a tombstone lost in
    /// a crash leaves a copy that start-up recovery handles. Drop the entry once deleted.
    pub fn forget(&self, key: &ObjectKey) -> Result<Entry, StorageError> {
        self.write(key, &[], true)
    }

    fn write(&self, key: &ObjectKey, bytes: &[u8], tombstone: bool) -> Result<Entry, StorageError> {
        let segment = {
            // Counted in flight before the segment can be swapped out: the rotation waits
            // for this put's object before it flushes and deletes the segment.
            let current = self.inner.current.lock().expect("journal");
            current.state.lock().expect("journal segment").in_flight += 1;
            current.clone()
        };
        let mut entry = Entry { segment, ticket: 0 };
        entry.ticket = entry.segment.append(key, bytes, tombstone)?;
        Ok(entry)
    }

    /// Start a new segment, and retire the old one once its objects are on disk.
    fn rotate(inner: &Inner) -> Result<(), StorageError> {
        let _rotating = inner.rotating.lock().expect("journal rotation");
        let result = Journal::retire(inner);
        if result.is_err() {
            inner.kept.store(true, Ordering::SeqCst);
        }
        result
    }

    fn retire(inner: &Inner) -> Result<(), StorageError> {
        let old = {
            let current = inner.current.lock().expect("journal");
            if current.state.lock().expect("journal segment").end == 0 {
                return Ok(());
            }
            current.clone()
        };
        let spare = inner.spare.lock().expect("journal spare").take();
        let segment = Segment::create(&inner.dir, old.seq + 1, spare)?;
        *inner.current.lock().expect("journal") = segment;
        {
            let mut state = old.state.lock().expect("journal segment");
            while state.in_flight > 0 {
                state = old.changed.wait(state).expect("journal segment");
            }
        }
        rustix::fs::syncfs(&inner.objects)
            .map_err(|e| StorageError::io("syncfs", &inner.dir, e.into()))?;
        // Renamed out of the segments' names: replay no longer reads it (if this rename is
        // lost in a crash, replay writes objects that are on disk already).
        let spare_path = inner.dir.join(SPARE);
        std::fs::rename(&old.path, &spare_path)
            .map_err(|e| StorageError::io("renaming", &old.path, e))?;
        let file = old
            .file
            .try_clone()
            .map_err(|e| StorageError::io("reopening", &spare_path, e))?;
        *inner.spare.lock().expect("journal spare") = Some(file);
        Ok(())
    }
}

impl Drop for Journal {
    /// A clean stop leaves nothing to replay: the objects are flushed, the journal deleted
    /// — unless a segment could not be retired, which the next start replays.
    fn drop(&mut self) {
        match Journal::rotate(&self.inner) {
            Ok(()) if !self.inner.kept.load(Ordering::SeqCst) => {
                let _ = std::fs::remove_dir_all(&self.inner.dir);
            }
            Ok(()) => {
                tracing::error!(dir = %self.inner.dir.display(), "object journal kept for the next start: a segment could not be retired")
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
    /// Segment `seq`, empty, its directory entry durable: the spare renamed, or a new file.
    fn create(
        dir: &Path,
        seq: u64,
        spare: Option<std::fs::File>,
    ) -> Result<Arc<Segment>, StorageError> {
        let path = dir.join(format!("{seq:016}.log"));
        let file = match spare {
            Some(file) => {
                let spare = dir.join(SPARE);
                std::fs::rename(&spare, &path)
                    .map_err(|e| StorageError::io("renaming", &spare, e))?;
                file
            }
            None => std::fs::OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StorageError::io("creating", &path, e))?,
        };
        super::dirsync::sync_dir(dir)
            .map_err(|e| StorageError::io("fsyncing directory", dir, e))?;
        Ok(Arc::new(Segment {
            seq,
            path,
            file,
            state: Mutex::new(SegmentState::default()),
            changed: Condvar::new(),
        }))
    }

    /// Write a record (not flushed yet); its number comes back.
    fn append(&self, key: &ObjectKey, bytes: &[u8], tombstone: bool) -> Result<u64, StorageError> {
        let key = key.as_str().as_bytes();
        let mut head = [0u8; HEAD];
        head[..4].copy_from_slice(MAGIC);
        head[4..6].copy_from_slice(&(key.len() as u16).to_le_bytes());
        head[6..8].copy_from_slice(&u16::from(tombstone).to_le_bytes());
        head[8..16].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        head[16..24].copy_from_slice(&crate::model::clock::now_millis().to_le_bytes());
        head[24..32].copy_from_slice(&self.seq.to_le_bytes());
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
        let number = state.written;
        drop(state);
        start_writeback(&self.file, at, len);
        Ok(number)
    }
}

/// Records from this size on start their writeback when written (a large one is then
/// written while its object file is); on a virtual disk each start is a request and an
/// exit to the host (64x64 C-STORE, 4 associations: server CPU 0.52 → 0.48 ms each).
const EARLY_WRITEBACK_AT: i64 = 64 << 10;

/// Start writing a large record's whole pages (not the last, which the next record fills)
/// now; smaller ones wait for their group's flush. A hint only: the flush writes them.
fn start_writeback(file: &std::fs::File, at: u64, len: usize) {
    use std::os::fd::AsRawFd;
    let whole = (at + len as u64) / 4096 * 4096;
    let (Ok(start), Ok(len)) = (i64::try_from(at), i64::try_from(whole.saturating_sub(at))) else {
        return;
    };
    if len >= EARLY_WRITEBACK_AT {
        // SAFETY: `sync_file_range` reads no memory of ours; the descriptor is open, owned
        // by `file` for the length of the call.
        unsafe { libc::sync_file_range(file.as_raw_fd(), start, len, libc::SYNC_FILE_RANGE_WRITE) };
    }
}

/// At start-up: put back what the journals of processes that are gone hold, before
/// anything reads the store; then start this process's journal if `journaled` (blocking).
pub fn start(
    root: &Path,
    objects: &Path,
    journaled: bool,
) -> Result<Option<Journal>, StorageError> {
    let replayed = replay(root, objects)?;
    if replayed.records > 0 {
        tracing::warn!(
            records = replayed.records,
            restored = replayed.restored.len(),
            deleted = replayed.deleted,
            "object journal replayed: objects a crash left unflushed are on disk again"
        );
    }
    journaled.then(|| Journal::open(root, objects)).transpose()
}

/// What [`replay`] found in the journals of processes that are gone.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records read; keys whose last record is a deletion (left alone); the objects
    /// written again (missing or damaged).
    pub records: usize,
    pub deleted: usize,
    pub restored: Vec<String>,
}

/// Restore the objects recorded in the journals under `root` of processes that are gone,
/// make them durable and delete those journals (blocking; see the module documentation).
pub fn replay(root: &Path, objects: &Path) -> Result<ReplayReport, StorageError> {
    let mut report = ReplayReport::default();
    if !root.exists() {
        return Ok(report);
    }
    // One replay at a time: a process starting meanwhile waits until the objects are back.
    let _replays = lock_root(root)?;
    let objects_root =
        std::fs::File::open(objects).map_err(|e| StorageError::io("opening", objects, e))?;
    // Journals of live processes are locked: left alone.
    for (dir, _lock) in super::local::gone_processes(root) {
        tracing::info!(dir = %dir.display(), "replaying the object journal of a process that is gone");
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| StorageError::io("listing", &dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        segments.sort();
        // The last record of each key: the time a restored object gets (an instance
        // deleted and sent again has two records; recovery compares the later one with
        // the delete).
        // Records are in order within a journal: the last one of a key decides.
        let mut last: HashMap<ObjectKey, (usize, u64, i64, bool)> = HashMap::new();
        for (n, segment) in segments.iter().enumerate() {
            scan_segment(segment, |record, at| {
                report.records += 1;
                last.insert(record.key, (n, at, record.written, record.tombstone));
            })?;
        }
        let mut keys: Vec<_> = last.into_iter().collect();
        keys.sort_by_key(|(_, place)| *place); // oldest first, as they were written
        let mut touched = std::collections::HashSet::new();
        for (key, (n, at, written, tombstone)) in keys {
            if tombstone {
                report.deleted += 1;
                continue;
            }
            let target = objects.join(key.as_str());
            // Start-up recovery looks into directories modified lately; a journaled put
            // did not flush its directory's time.
            let study = target.parent().expect("object keys have a directory");
            if study.exists() && touched.insert(study.to_owned()) {
                std::fs::File::open(study)
                    .and_then(|d| d.set_modified(std::time::SystemTime::now()))
                    .map_err(|e| StorageError::io("setting the time of", study, e))?;
            }
            if holds(&target, &key) {
                super::local::touch_at_least(&target, written)?;
            } else {
                let data = read_data(&segments[n], at, &key)?;
                super::local::restore(&target, &data, written)?;
                report.restored.push(key.as_str().to_owned());
            }
        }
        if !segments.is_empty() {
            rustix::fs::syncfs(&objects_root)
                .map_err(|e| StorageError::io("syncfs", objects, e.into()))?;
        }
        std::fs::remove_dir_all(&dir).map_err(|e| StorageError::io("removing", &dir, e))?;
    }
    Ok(report)
}

/// Call `each(record, offset)` for every valid record of a segment, in order.
fn scan_segment(path: &Path, mut each: impl FnMut(Record, u64)) -> Result<(), StorageError> {
    let read = |e| StorageError::io("reading", path, e);
    let Some(seq) = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return Ok(()); // not one of ours
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let len = file.metadata().map_err(read)?.len();
    let mut at = 0u64;
    while let Some(record) = next_record(&file, seq, at, len).map_err(read)? {
        let size = record.size;
        each(record, at);
        at += size;
    }
    Ok(())
}

/// The data of the (valid) record of `key` at `at`.
fn read_data(path: &Path, at: u64, key: &ObjectKey) -> Result<Vec<u8>, StorageError> {
    let read = |e| StorageError::io("reading", path, e);
    let file = std::fs::File::open(path).map_err(read)?;
    let mut head = [0u8; HEAD];
    file.read_exact_at(&mut head, at).map_err(read)?;
    let data_len = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let mut data = vec![0u8; data_len as usize];
    file.read_exact_at(&mut data, at + (HEAD + key.as_str().len()) as u64)
        .map_err(read)?;
    Ok(data)
}

/// Exclusive use of the journals' directory (blocking): replays, and the creation of a
/// process's journal.
fn lock_root(root: &Path) -> Result<std::fs::File, StorageError> {
    let path = root.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::io("opening", &path, e))?;
    file.lock()
        .map_err(|e| StorageError::io("locking", &path, e))?;
    Ok(file)
}

/// The record at `at`, if it is whole and valid.
fn next_record(
    file: &std::fs::File,
    seq: u64,
    at: u64,
    len: u64,
) -> std::io::Result<Option<Record>> {
    if at + HEAD as u64 > len {
        return Ok(None);
    }
    let mut head = [0u8; HEAD];
    file.read_exact_at(&mut head, at)?;
    let key_len = u16::from_le_bytes([head[4], head[5]]) as u64;
    let data_len = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let written = i64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
    let numbered = u64::from_le_bytes(head[24..32].try_into().expect("8 bytes"));
    let tombstone = match u16::from_le_bytes([head[6], head[7]]) {
        0 => false,
        1 if data_len == 0 => true,
        _ => return Ok(None),
    };
    if &head[..4] != MAGIC
        || numbered != seq
        || data_len > MAX_RECORD
        || at + HEAD as u64 + key_len + data_len > len
    {
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
    let size = HEAD as u64 + key_len + data_len;
    if tombstone {
        return Ok(Some(Record {
            key,
            written,
            size,
            tombstone,
        }));
    }
    let mut data = vec![0u8; data_len as usize];
    file.read_exact_at(&mut data, at + HEAD as u64 + key_len)?;
    if key.sha256() != Some(crate::model::Sha256::of(&data)) {
        return Ok(None);
    }
    Ok(Some(Record {
        key,
        written,
        size,
        tombstone,
    }))
}

/// A valid record, as a scan reports it (the data are read again when needed).
struct Record {
    key: ObjectKey,
    written: i64,
    size: u64,
    tombstone: bool,
}

/// Whether `target` exists and holds the bytes `key` names.
fn holds(target: &Path, key: &ObjectKey) -> bool {
    let mut hasher = Sha256::new();
    std::fs::File::open(target)
        .and_then(|mut file| std::io::copy(&mut file, &mut hasher))
        .is_ok_and(|_| key.sha256() == Some(hasher.finalize().into()))
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
