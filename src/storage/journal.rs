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
//! segment: nothing after it was acknowledged.
//!
//! A segment's file is prepared before records go into it: written with zeros up to
//! [`PREPARED`] (or twice what its last use held) and flushed, so that a flush of the
//! records written over those blocks carries no change of the file's size or block map —
//! only the data. (On ext4, a flush that changes them writes the inode too, a second write
//! the flush waits for: 64×64 C-STORE on one association, 875 → 1 025 inst/s.) A retired
//! segment is kept as the spare, prepared again by the journal's thread, and renamed into
//! the next segment but one; its old records, numbered otherwise, and the zeros end a scan.
//!
//! Deletions of objects (admin deletes, the losing copy of a conflict, orphans swept by
//! `verify`) append a tombstone, so that a replay does not bring the object back; a key
//! whose last record is a tombstone is left alone.

use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use super::StorageError;
use crate::model::ObjectKey;

mod replay;
pub use replay::{replay, ReplayReport};

const MAGIC: &[u8; 4] = b"PJR1";
/// The retired segment kept for reuse: not a segment's name, never replayed.
const SPARE: &str = "spare";
const HEAD: usize = 32;
/// Records larger than this are not the spool's in-memory objects: a damaged length.
const MAX_RECORD: u64 = 64 << 20;
/// How often a new segment starts and the objects of the old one are flushed.
const ROTATE_EVERY: Duration = Duration::from_secs(1);
/// The length a segment's file is prepared to (see the module documentation): a second of
/// small objects on two cores (about 9 MB at one association, 17 at four).
const PREPARED: u64 = 16 << 20;
/// A spare is prepared to twice what it held, up to this (large objects: their records
/// are large, and a change of the block map is a small part of flushing them).
const PREPARED_MAX: u64 = 256 << 20;

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
        let journal = Journal::open_still(root, objects)?;
        let weak = Arc::downgrade(&journal.inner);
        std::thread::Builder::new()
            .name("object-journal".into())
            .spawn(move || rotate_forever(weak))
            .map_err(|e| StorageError::Internal(format!("cannot start the journal thread: {e}")))?;
        Ok(journal)
    }

    /// [`Journal::open`] without the thread that rotates segments and prepares the spare
    /// (the tests rotate themselves).
    fn open_still(root: &Path, objects: &Path) -> Result<Journal, StorageError> {
        super::local::create_dir(root)?;
        set_apart(root);
        // No replay may take the new directory for a dead process's before it is locked.
        let _replays = lock_root(root)?;
        let (dir, lock) = super::local::claim_dir(root)?;
        let segment = Segment::create(&dir, 0, None)?;
        if let Err(e) = prepare(&segment.file, &segment.path, PREPARED) {
            tracing::warn!(error = %e, "object journal: cannot prepare the first segment");
        }
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

    /// Start a new segment, and retire the old one once its objects are on disk: how many
    /// bytes of records it held comes back (0: nothing retired).
    fn rotate(inner: &Inner) -> Result<u64, StorageError> {
        let _rotating = inner.rotating.lock().expect("journal rotation");
        let result = Journal::retire(inner);
        if result.is_err() {
            inner.kept.store(true, Ordering::SeqCst);
        }
        result
    }

    fn retire(inner: &Inner) -> Result<u64, StorageError> {
        let (old, held) = {
            let current = inner.current.lock().expect("journal");
            let held = current.state.lock().expect("journal segment").end;
            if held == 0 {
                return Ok(0);
            }
            (current.clone(), held)
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
        Ok(held)
    }

    /// Make sure there is a spare, prepared to twice what the last segment retired held
    /// (`held`; see [`PREPARED`]), before the next rotation needs it (which waits for this).
    /// A spare longer than [`PREPARED_MAX`] (a burst of large objects) is cut back to it,
    /// so that the journal does not keep the disk space of its largest second for ever.
    fn prepare_spare(inner: &Inner, held: u64) -> Result<(), StorageError> {
        let _rotating = inner.rotating.lock().expect("journal rotation");
        let path = inner.dir.join(SPARE);
        let taken = inner.spare.lock().expect("journal spare").take();
        let file = match taken {
            Some(file) => file,
            None => std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StorageError::io("creating", &path, e))?,
        };
        let result = cut_back(&file, &path).and_then(|()| {
            prepare(
                &file,
                &path,
                held.saturating_mul(2).clamp(PREPARED, PREPARED_MAX),
            )
        });
        *inner.spare.lock().expect("journal spare") = Some(file);
        result
    }
}

/// Ask the filesystem to place the directories made under `root` (each process's journal)
/// away from the others (ext4's "top directory" flag: their inodes in a block group of
/// their own). On ext4 without its own journal, a file's flush also writes the block of
/// the inode table that holds its inode whenever anything in that block changed: a study
/// directory whose inode shares it changes with every object linked into it, and so every
/// flush of a segment cost a second write (64×64 C-STORE, one association: the inode
/// block written at 500 of 500 flushes, then at 127, when the segment's own time changed).
/// A hint: where the flag is unknown, nothing changes.
fn set_apart(root: &Path) {
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    let set = std::fs::File::open(root).and_then(|dir| {
        let flags = ioctl_getflags(&dir)?;
        if !flags.contains(IFlags::TOPDIR) {
            ioctl_setflags(&dir, flags | IFlags::TOPDIR)?;
        }
        Ok(())
    });
    if let Err(e) = set {
        tracing::debug!(error = %e, dir = %root.display(), "journal directories not set apart");
    }
}

/// Cut a spare longer than [`PREPARED_MAX`] back to that length.
fn cut_back(file: &std::fs::File, path: &Path) -> Result<(), StorageError> {
    let error = |e| StorageError::io("truncating", path, e);
    if file.metadata().map_err(error)?.len() > PREPARED_MAX {
        file.set_len(PREPARED_MAX).map_err(error)?;
    }
    Ok(())
}

/// Write zeros from the end of `file` up to `len`, and flush them (blocking).
fn prepare(file: &std::fs::File, path: &Path, len: u64) -> Result<(), StorageError> {
    let error = |e| StorageError::io("preparing", path, e);
    let mut at = file.metadata().map_err(error)?.len();
    if at >= len {
        return Ok(());
    }
    let zeros = vec![0u8; 1 << 20];
    while at < len {
        let n = (len - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at).map_err(error)?;
        at += n;
    }
    file.sync_data().map_err(error)
}

impl Drop for Journal {
    /// A clean stop leaves nothing to replay: the objects are flushed, the journal deleted
    /// — unless a segment could not be retired, which the next start replays.
    fn drop(&mut self) {
        match Journal::rotate(&self.inner) {
            Ok(_) if !self.inner.kept.load(Ordering::SeqCst) => {
                let _ = std::fs::remove_dir_all(&self.inner.dir);
            }
            Ok(_) => {
                tracing::error!(dir = %self.inner.dir.display(), "object journal kept for the next start: a segment could not be retired")
            }
            Err(e) => {
                tracing::error!(error = %e, "object journal: cannot flush the objects at exit")
            }
        }
    }
}

fn rotate_forever(inner: Weak<Inner>) {
    let mut held = 0;
    loop {
        if let Some(inner) = inner.upgrade() {
            if let Err(e) = Journal::prepare_spare(&inner, held) {
                // Segments still work, written beyond their end: their flushes cost more.
                tracing::warn!(error = %e, "object journal: cannot prepare the next segment");
            }
        }
        std::thread::sleep(ROTATE_EVERY);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match Journal::rotate(&inner) {
            Ok(bytes) => held = bytes,
            // The old segment stays: what it holds is replayed at the next start.
            Err(e) => {
                tracing::error!(error = %e, "object journal: cannot flush the objects of a segment")
            }
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

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
