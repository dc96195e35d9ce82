//! Reading objects: whole or by byte range, streamed or into a local file for the few
//! readers that need one; hashing them; listing the store and the recently written study
//! directories (start-up recovery). Every read of an object's bytes goes through here.

use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use opendal::ErrorKind;
use sha2::Digest;

use super::{StorageError, Store};
use crate::model::{ObjectKey, Sha256, Uid};

impl Store {
    /// The object's size, or `None` when it does not exist.
    pub async fn size(&self, key: &ObjectKey) -> Result<Option<u64>, StorageError> {
        match self.op.stat(key.as_str()).await {
            Ok(meta) => Ok(Some(meta.content_length())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stream the whole object (or a byte range of it) in chunks.
    pub async fn stream(
        &self,
        key: &ObjectKey,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, StorageError> {
        if let Some(root) = &self.fs_root {
            return file_stream(root.join(key.as_str()), key, range).await;
        }
        let reader = self
            .op
            .reader_with(key.as_str())
            .chunk(1 << 20)
            .await
            .map_err(|e| not_found(e, key))?;
        let stream = match range {
            Some(r) => reader.into_bytes_stream(r).await,
            None => reader.into_bytes_stream(..).await,
        }
        .map_err(|e| not_found(e, key))?;
        Ok(stream
            .map_err(|e| StorageError::Io {
                what: "reading object",
                path: PathBuf::new(),
                source: e,
            })
            .boxed())
    }

    /// The whole object read into memory after `head` (for small objects: one read, on
    /// the filesystem one blocking call for open and read together).
    pub async fn read_after(&self, key: &ObjectKey, head: Vec<u8>) -> Result<Bytes, StorageError> {
        let Some(root) = &self.fs_root else {
            let body = self
                .op
                .read(key.as_str())
                .await
                .map_err(|e| not_found(e, key))?;
            let mut all = head;
            all.reserve(body.len());
            for chunk in body {
                all.extend_from_slice(&chunk);
            }
            return Ok(Bytes::from(all));
        };
        let (path, name) = (root.join(key.as_str()), key.to_string());
        if let Some(all) = cached_whole(&path, &head) {
            return Ok(Bytes::from(all));
        }
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut file = open_object(&path, name)?;
            let mut all = head;
            let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
            all.reserve_exact(len);
            file.read_to_end(&mut all)
                .map_err(|e| StorageError::io("reading object", &path, e))?;
            Ok(Bytes::from(all))
        })
        .await
        .map_err(|e| StorageError::Internal(e.to_string()))?
    }

    /// Read a byte range into memory (for frames and headers: small by construction).
    pub async fn read_range(
        &self,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<Bytes, StorageError> {
        if let Some(root) = &self.fs_root {
            // Cached: here. Else one blocking call for open and read (not one per file
            // operation).
            let (path, name) = (root.join(key.as_str()), key.to_string());
            if let Some(bytes) = cached_range(&path, &range) {
                return Ok(Bytes::from(bytes));
            }
            return tokio::task::spawn_blocking(move || read_at(&path, name, range))
                .await
                .map_err(|e| StorageError::Internal(e.to_string()))?;
        }
        let buf = self
            .op
            .read_with(key.as_str())
            .range(range)
            .await
            .map_err(|e| not_found(e, key))?;
        Ok(buf.to_bytes())
    }

    /// Copy an object into a temporary file in the spool (removed when dropped), for the
    /// few readers that need a whole file (rendering, non-pixel bulk data).
    pub async fn fetch_to_temp(
        &self,
        key: &ObjectKey,
    ) -> Result<tempfile::NamedTempFile, StorageError> {
        let tmp = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempfile_in(&self.spool_dir)
            .map_err(|e| StorageError::io("creating a temporary file in", &self.spool_dir, e))?;
        let path = tmp.path().to_owned();
        let mut file = tokio::fs::File::from_std(
            tmp.reopen()
                .map_err(|e| StorageError::io("opening", &path, e))?,
        );
        let mut stream = self.stream(key, None).await?;
        while let Some(chunk) = stream.next().await {
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk?)
                .await
                .map_err(|e| StorageError::io("writing", &path, e))?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| StorageError::io("writing", &path, e))?;
        Ok(tmp)
    }

    /// Every object in the store. Files that do not have our key shape (stray files,
    /// temporary files) come back as `Err(raw path)` so callers can report them.
    pub async fn list(
        &self,
    ) -> Result<impl Stream<Item = Result<Result<ObjectKey, String>, StorageError>>, StorageError>
    {
        let lister = self.op.lister_with("").recursive(true).await?;
        Ok(lister.filter_map(|entry| async move {
            match entry {
                Err(e) => Some(Err(StorageError::from(e))),
                Ok(entry) if entry.metadata().is_dir() => None,
                Ok(entry) => {
                    let path = entry.path().trim_start_matches('/').to_owned();
                    Some(Ok(ObjectKey::parse(&path).ok_or(path)))
                }
            }
        }))
    }

    /// When the object was last written, in seconds since the Unix epoch, if known.
    pub async fn modified(&self, key: &ObjectKey) -> Result<Option<i64>, StorageError> {
        match self.op.stat(key.as_str()).await {
            Ok(meta) => Ok(meta.last_modified().map(|t| t.timestamp())),
            Err(e) => Err(not_found(e, key)),
        }
    }
    /// Run blocking work (decoding, rendering, parsing) on a local file holding the object:
    /// the object's own file on the filesystem, a temporary copy in the spool otherwise.
    pub async fn with_local_file<T, F>(&self, key: &ObjectKey, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Path) -> T + Send + 'static,
    {
        let join = |e: tokio::task::JoinError| StorageError::Internal(e.to_string());
        if let Some(root) = &self.fs_root {
            let path = root.join(key.as_str());
            if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
                return Err(StorageError::NotFound(key.to_string()));
            }
            return tokio::task::spawn_blocking(move || work(&path))
                .await
                .map_err(join);
        }
        let tmp = self.fetch_to_temp(key).await?;
        tokio::task::spawn_blocking(move || work(tmp.path()))
            .await
            .map_err(join)
    }

    /// The SHA-256 and the size of the object's bytes as the store holds them now.
    pub async fn digest(&self, key: &ObjectKey) -> Result<(Sha256, u64), StorageError> {
        let mut stream = self.stream(key, None).await?;
        let mut hasher = sha2::Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            len += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((hasher.finalize().into(), len))
    }

    /// When the object was last written, to the millisecond (since the Unix epoch): known
    /// on the filesystem; `None` elsewhere (S3 keeps whole seconds, too coarse to order an
    /// object against the deletes of its instance).
    pub async fn written_at(&self, key: &ObjectKey) -> Result<Option<i64>, StorageError> {
        let Some(root) = &self.fs_root else {
            return Ok(None);
        };
        let path = root.join(key.as_str());
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Some(modified_millis(&meta))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::NotFound(key.to_string()))
            }
            Err(e) => Err(StorageError::io("reading", &path, e)),
        }
    }

    /// The objects (key, when written in milliseconds since the epoch) of every study
    /// directory modified at or after `since` (seconds since the epoch), for start-up
    /// recovery: a study directory gets a new entry, and a new modification time, for each
    /// object put in it. Empty for stores without directories (S3).
    pub async fn recent_study_objects(
        &self,
        since: i64,
    ) -> Result<Vec<StudyObjects>, StorageError> {
        let Some(root) = self.fs_root.clone() else {
            return Ok(Vec::new());
        };
        tokio::task::spawn_blocking(move || recent_study_dirs(&root, since))
            .await
            .map_err(|e| StorageError::Internal(format!("recovery listing failed: {e}")))?
    }
}

/// Stream a file from one blocking task reading ahead in 1 MiB chunks (rather than a
/// blocking hop per chunk): local objects are served at disk or page-cache speed.
async fn file_stream(
    path: PathBuf,
    key: &ObjectKey,
    range: Option<Range<u64>>,
) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, StorageError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = tokio::task::spawn_blocking({
        let (path, key) = (path.clone(), key.to_string());
        move || open_object(&path, key)
    })
    .await
    .map_err(|e| StorageError::Internal(e.to_string()))??;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, StorageError>>(4);
    tokio::task::spawn_blocking(move || {
        let (start, mut left) = match &range {
            Some(r) => (r.start, r.end.saturating_sub(r.start)),
            None => (0, u64::MAX),
        };
        if start > 0 {
            if let Err(e) = file.seek(SeekFrom::Start(start)) {
                let _ = tx.blocking_send(Err(StorageError::io("seeking object", &path, e)));
                return;
            }
        }
        // No more than the file holds: buffers are sized to what is read, never zeroed.
        if let Ok(meta) = file.metadata() {
            left = left.min(meta.len().saturating_sub(start));
        }
        while left > 0 {
            let want = left.min(1 << 20);
            let mut buf = Vec::with_capacity(want as usize);
            match (&mut file).take(want).read_to_end(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    left -= n as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return; // the client went away
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(StorageError::io("reading object", &path, e)));
                    return;
                }
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

/// Open the object file at `path` (`NotFound` names the key). Blocking.
fn open_object(path: &Path, key: String) -> Result<std::fs::File, StorageError> {
    std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => StorageError::NotFound(key),
        _ => StorageError::io("opening object", path, e),
    })
}

/// The file at `path` opened only if every directory on the way is in the dentry cache
/// (`openat2` with `RESOLVE_CACHED`): never waits for the disk. None otherwise (or on a
/// kernel without it, or on any error: the blocking path then reads, and reports).
pub(super) fn open_cached(path: &Path) -> Option<rustix::fd::OwnedFd> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
    let flags = OFlags::RDONLY | OFlags::CLOEXEC;
    openat2(CWD, path, flags, Mode::empty(), ResolveFlags::CACHED).ok()
}

/// Fill `buf` from `offset` with what the page cache holds (`preadv2` with `RWF_NOWAIT`):
/// false as soon as a read would wait for the disk, or the file ends first.
fn read_nowait(fd: &rustix::fd::OwnedFd, buf: &mut [u8], mut offset: u64) -> bool {
    use rustix::io::{preadv2, ReadWriteFlags};
    let mut at = 0;
    while at < buf.len() {
        let mut slices = [std::io::IoSliceMut::new(&mut buf[at..])];
        match preadv2(fd, &mut slices, offset, ReadWriteFlags::NOWAIT) {
            Ok(n) if n > 0 => {
                at += n;
                offset += n as u64;
            }
            _ => return false,
        }
    }
    true
}

/// A small object's bytes after `head`, read here when the kernel has them cached (see
/// [`open_cached`], [`read_nowait`]): a retrieval of a cached object then costs no thread
/// hand-off, whose two wake-ups (0.1–0.2 ms each on a virtual machine) were most of a
/// small object's answer time. Never blocks; None sends the read to the blocking pool.
fn cached_whole(path: &Path, head: &[u8]) -> Option<Vec<u8>> {
    let fd = open_cached(path)?;
    let len = usize::try_from(rustix::fs::fstat(&fd).ok()?.st_size).ok()?;
    let mut all = Vec::with_capacity(head.len() + len);
    all.extend_from_slice(head);
    all.resize(head.len() + len, 0);
    read_nowait(&fd, &mut all[head.len()..], 0).then_some(all)
}

/// `range` of the file at `path` when the kernel has it cached (as [`cached_whole`]).
fn cached_range(path: &Path, range: &Range<u64>) -> Option<Vec<u8>> {
    let fd = open_cached(path)?;
    let mut buf = vec![0u8; usize::try_from(range.end.checked_sub(range.start)?).ok()?];
    read_nowait(&fd, &mut buf, range.start).then_some(buf)
}

/// `range` of the file at `path`; a file that ends first is an error. Blocking.
fn read_at(path: &Path, key: String, range: Range<u64>) -> Result<Bytes, StorageError> {
    use std::os::unix::fs::FileExt;
    let file = open_object(path, key)?;
    let mut buf = vec![0u8; range.end.saturating_sub(range.start) as usize];
    file.read_exact_at(&mut buf, range.start)
        .map_err(|e| StorageError::io("reading object (shorter than its index says?)", path, e))?;
    Ok(Bytes::from(buf))
}

fn not_found(e: opendal::Error, key: &ObjectKey) -> StorageError {
    if e.kind() == ErrorKind::NotFound {
        StorageError::NotFound(key.to_string())
    } else {
        e.into()
    }
}

/// A study directory's objects: (key, when written in milliseconds since the epoch).
pub type StudyObjects = (Uid, Vec<(ObjectKey, i64)>);

/// The objects of each study directory of `root` modified at or after `since` (seconds
/// since the epoch). Blocking.
fn recent_study_dirs(root: &Path, since: i64) -> Result<Vec<StudyObjects>, StorageError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |e| StorageError::io(what, &path, e)
    };
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(StorageError::io("listing", root, e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("listing", root))?;
        let Some(study) = entry.file_name().to_str().and_then(|n| Uid::parse(n).ok()) else {
            continue;
        };
        let dir = entry.path();
        let meta = entry.metadata().map_err(io("reading", &dir))?;
        if !meta.is_dir() || modified_millis(&meta).saturating_div(1000) < since {
            continue;
        }
        found.push((study.clone(), study_objects(&study, &dir)?));
    }
    Ok(found)
}

/// The objects in one study directory, with when each was written.
fn study_objects(study: &Uid, dir: &Path) -> Result<Vec<(ObjectKey, i64)>, StorageError> {
    let mut keys = Vec::new();
    let listing = std::fs::read_dir(dir).map_err(|e| StorageError::io("listing", dir, e))?;
    for file in listing {
        let file = file.map_err(|e| StorageError::io("listing", dir, e))?;
        let name = file.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(key) = ObjectKey::parse(&format!("{study}/{name}")) {
            let meta = file
                .metadata()
                .map_err(|e| StorageError::io("reading", dir, e))?;
            keys.push((key, modified_millis(&meta)));
        }
    }
    Ok(keys)
}

/// A file's modification time in milliseconds since the epoch (the far future if unknown:
/// such a file counts as recent).
fn modified_millis(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(i64::MAX, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file just written is in the page cache: read here, whole or in part; what the
    /// kernel cannot give at once (a missing file, a range past the end) is left to the
    /// blocking path, which reports it.
    #[test]
    fn cached_reads_never_guess() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object.dcm");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let whole = cached_whole(&path, b"head").expect("a file just written is cached");
        assert_eq!(&whole[..4], b"head");
        assert_eq!(&whole[4..], &data[..]);
        assert_eq!(
            cached_range(&path, &(1000..1010)).unwrap(),
            &data[1000..1010]
        );
        assert_eq!(cached_range(&path, &(10..10)).unwrap(), Vec::<u8>::new());
        assert!(cached_range(&path, &(299_990..300_010)).is_none());
        assert!(cached_whole(&dir.path().join("missing.dcm"), b"").is_none());
    }
}
