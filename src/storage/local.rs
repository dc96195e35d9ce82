//! Durable puts on the local filesystem, and the spool directory's claim.

use std::path::{Path, PathBuf};

use super::{DirSyncs, SpooledFile, StorageError};

/// Give this process its own spool directory under `base`, locked while it runs, and
/// remove the directories of processes that are gone (what a crash left behind).
pub(super) fn claim_spool(base: &Path) -> Result<(PathBuf, std::fs::File), StorageError> {
    create_dir(base)?;
    for (dir, _lock) in gone_processes(base) {
        tracing::info!(dir = %dir.display(), "removing the spool of a process that is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
    claim_dir(base)
}

/// The directories under `base` of processes that are gone (their `.lock` not held), each
/// with its lock, now held by the caller.
pub(super) fn gone_processes(base: &Path) -> Vec<(PathBuf, std::fs::File)> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let dir = entry.path();
            let lock = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join(".lock"))
                .ok()?;
            lock.try_lock().is_ok().then_some((dir, lock))
        })
        .collect()
}

/// A new directory of this process's under `base`, its `.lock` held while it runs.
pub(super) fn claim_dir(base: &Path) -> Result<(PathBuf, std::fs::File), StorageError> {
    let dir = base.join(uuid::Uuid::new_v4().simple().to_string());
    create_dir(&dir)?;
    let lock_path = dir.join(".lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| StorageError::io("creating", &lock_path, e))?;
    lock.try_lock().map_err(|e| {
        StorageError::io("locking", &lock_path, std::io::Error::other(e.to_string()))
    })?;
    Ok((dir, lock))
}

pub(super) fn create_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("creating directory", dir, e))
}

/// Put a spooled object at `target`: its bytes durable (unless `flush` is false: the
/// journal holds them), linked (or renamed) under its name. A file renamed over an
/// existing one is flushed first whatever `flush` says: it replaces an object that may be
/// durable and acknowledged (a re-sent instance, an orphan being re-indexed). The directories to fsync
/// before it counts as durable come back (see [`DirSyncs`]): at most up to the directory
/// holding the store's `root`.
pub(super) fn put(
    spooled: SpooledFile,
    target: &Path,
    root: &Path,
    flush: bool,
) -> Result<DirSyncs, StorageError> {
    let parent = target.parent().expect("object keys have a directory");
    let write = |e| StorageError::io("writing", target, e);
    // The study's directory usually exists: try first, create it when missing.
    let mut created = false;
    let linked = match spooled.bytes() {
        Some(bytes) => match link_new(parent, target, bytes, flush, None) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_parents(parent)?;
                created = true;
                link_new(parent, target, bytes, flush, None).map_err(write)?
            }
            other => other.map_err(write)?,
        },
        None => false,
    };
    if !linked {
        if !created {
            create_parents(parent)?;
        }
        let file = spooled.into_file()?;
        file.as_file()
            .sync_data()
            .map_err(|e| StorageError::io("fsyncing spool file", file.path(), e))?;
        file.persist(target)
            .map_err(|e| StorageError::io("renaming spool file to", target, e.error))?;
    }
    Ok(DirSyncs::for_entry_in(
        parent,
        root.parent().unwrap_or(root),
    ))
}

/// Create `dir` and its missing parents; those created are forgotten as durable (a
/// directory removed behind this process's back and made again is new).
fn create_parents(dir: &Path) -> Result<(), StorageError> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_owned());
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    // Forgotten first: a concurrent put that finds the new directory must not take its
    // entry for durable.
    DirSyncs::forget(&missing);
    create_dir(dir)?;
    Ok(())
}

/// Write `bytes` as the new file `target` in `dir` without a temporary name: an unnamed
/// file in `dir` (O_TMPFILE), its data fsynced, then linked under its name. Only the
/// target directory changes (one directory to fsync, not the spool's as well), and a crash
/// before the link leaves nothing behind. False when this filesystem has no O_TMPFILE.
/// False as well when `target` exists: the caller then puts a fresh copy over it by rename,
/// as it always did — the existing file may be an orphan that `verify` is about to sweep
/// by its age, or damaged.
fn link_new(
    dir: &Path,
    target: &Path,
    bytes: &[u8],
    flush: bool,
    modified: Option<std::time::SystemTime>,
) -> std::io::Result<bool> {
    use rustix::fs::{linkat, openat, AtFlags, Mode, OFlags, CWD};
    use rustix::io::Errno;
    use std::io::Write;
    let fd = match openat(
        CWD,
        dir,
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => fd,
        Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    if let Some(time) = modified {
        file.set_modified(time)?;
    }
    if flush {
        file.sync_data()?;
    }
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
    match linkat(
        CWD,
        proc_path.as_str(),
        CWD,
        target,
        AtFlags::SYMLINK_FOLLOW,
    ) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        // No /proc: fall back to a named temporary file.
        Err(Errno::NOENT) if !Path::new("/proc/self/fd").exists() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Write `bytes` as `target` again (from the journal, after a crash), flushed, with the
/// modification time of its last record (ms since the epoch), set before the file gets its
/// name. The directory entry is made durable by the caller.
pub(super) fn restore(target: &Path, bytes: &[u8], written_ms: i64) -> Result<(), StorageError> {
    let parent = target.parent().expect("object keys have a directory");
    let write = |e| StorageError::io("restoring", target, e);
    match std::fs::remove_file(target) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(write(e)),
        _ => {}
    }
    create_parents(parent)?;
    let when = millis_time(written_ms);
    if !link_new(parent, target, bytes, true, Some(when)).map_err(write)? {
        let mut file = tempfile::NamedTempFile::new_in(parent).map_err(write)?;
        std::io::Write::write_all(&mut file, bytes).map_err(write)?;
        file.as_file().set_modified(when).map_err(write)?;
        file.as_file().sync_data().map_err(write)?;
        file.persist(target).map_err(|e| write(e.error))?;
    }
    Ok(())
}

/// Make an existing object's modification time at least `written_ms` (a later record of
/// the same bytes: the time recovery compares with deletes).
pub(super) fn touch_at_least(target: &Path, written_ms: i64) -> Result<(), StorageError> {
    let write = |e| StorageError::io("setting the time of", target, e);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(target)
        .map_err(write)?;
    let when = millis_time(written_ms);
    if file.metadata().and_then(|m| m.modified()).map_err(write)? < when {
        file.set_modified(when).map_err(write)?;
    }
    Ok(())
}

fn millis_time(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64)
}
