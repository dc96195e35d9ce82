//! The object store: where instance bytes live, outside the index.
//!
//! Owns every call into opendal and every filesystem write of objects. A key is
//! `<StudyInstanceUID>/<sha256 of the bytes>.dcm`: built only from a validated [`Uid`] and
//! a digest, so no input can escape the store's root, and one key always names one byte
//! sequence (two versions of an instance can never overwrite each other). Keys stay
//! short (at most 133 bytes) so that every S3 implementation takes them. Called by `ingest/` (put), the
//! retrieval routes (read) and `verify` (list, read, delete).
//!
//! Durability: on the filesystem an object held in memory (up to 1 MiB) is *recorded in the
//! process's journal → written under its key → durable once the journal is flushed* (one
//! flush for all the puts waiting; the objects themselves are flushed every second, see
//! [`journal`]). With `storage.object_sync = "each"`, and for objects spooled to a file, a
//! put is *write an unnamed file in the object's directory → fsync it → link it under its
//! key → fsync the directory* (or *fsync spool file → rename → fsync directory*), plus the
//! parents whose entries are not known to be durable yet ([`DirSyncs`]; concurrent puts
//! into one directory share its fsync). On S3 a put completes when the upload has. See
//! [`local`].

mod dirsync;
mod journal;
mod local;
mod spool;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use opendal::{services, ErrorKind, Operator};

use crate::config::{Config, ObjectSync, StorageBackend};
use crate::model::ObjectKey;

pub use dirsync::DirSyncs;
pub use journal::{Journal, ReplayReport};
pub use spool::{Spool, SpooledFile};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("object store: {0}")]
    Backend(#[from] opendal::Error),
    #[error("object {0} not found")]
    NotFound(String),
    #[error("more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Internal(String),
}

impl StorageError {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        StorageError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// A handle on the configured object store.
#[derive(Clone)]
pub struct Store {
    op: Operator,
    /// Set for the filesystem backend: puts are renames under this root.
    fs_root: Option<PathBuf>,
    spool_dir: PathBuf,
    /// Held (locked) for the life of the process: marks `spool_dir` as in use.
    _spool_lock: Arc<std::fs::File>,
    /// Filesystem: the journal small objects are made durable through.
    journal: Option<Arc<Journal>>,
    describe: String,
}

impl Store {
    pub async fn open(config: &Config) -> Result<Store, StorageError> {
        let (spool_dir, spool_lock) = local::claim_spool(&config.spool_dir())?;
        let _spool_lock = Arc::new(spool_lock);
        match config.storage.backend {
            StorageBackend::Fs => {
                let root = config.objects_root();
                local::create_dir(&root)?;
                let root = root
                    .canonicalize()
                    .map_err(|e| StorageError::io("resolving", &root, e))?;
                let op =
                    Operator::new(services::Fs::default().root(&root.to_string_lossy()))?.finish();
                let describe = format!("filesystem {}", root.display());
                let journals = config.data_dir.join("journal");
                let journaled = config.storage.object_sync == ObjectSync::Journal;
                let journal = {
                    let root = root.clone();
                    tokio::task::spawn_blocking(move || journal::start(&journals, &root, journaled))
                        .await
                        .map_err(|e| StorageError::Internal(format!("journal start: {e}")))??
                        .map(Arc::new)
                };
                Ok(Store {
                    op,
                    fs_root: Some(root),
                    spool_dir,
                    _spool_lock,
                    journal,
                    describe,
                })
            }
            StorageBackend::S3 => {
                let s3 = &config.storage.s3;
                let mut b = services::S3::default()
                    .bucket(&s3.bucket)
                    .region(if s3.region.is_empty() {
                        "us-east-1"
                    } else {
                        &s3.region
                    })
                    .root(&format!("/{}", s3.prefix.trim_matches('/')));
                if let Some(endpoint) = &s3.endpoint {
                    b = b.endpoint(endpoint);
                }
                if let Some(id) = &s3.access_key_id {
                    b = b.access_key_id(id);
                }
                if let Some(secret) = &s3.secret_access_key {
                    b = b.secret_access_key(secret.expose());
                }
                let op = Operator::new(b)?.finish();
                let describe = format!(
                    "s3 bucket {} at {}",
                    s3.bucket,
                    s3.endpoint.as_deref().unwrap_or("the default endpoint")
                );
                Ok(Store {
                    op,
                    fs_root: None,
                    spool_dir,
                    _spool_lock,
                    journal: None,
                    describe,
                })
            }
        }
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// The objects' directory, for a filesystem store.
    pub fn fs_root(&self) -> Option<&Path> {
        self.fs_root.as_deref()
    }

    pub fn spool_dir(&self) -> &Path {
        &self.spool_dir
    }

    /// Check that the store answers (used at start-up and by readiness checks).
    pub async fn check(&self) -> Result<(), StorageError> {
        self.op.check().await?;
        Ok(())
    }

    /// Durably store a finished spool file under `key`. Returns only when the object would
    /// survive a power failure (filesystem) or the upload has completed (S3).
    pub async fn put(&self, key: &ObjectKey, spooled: SpooledFile) -> Result<(), StorageError> {
        match &self.fs_root {
            Some(root) => {
                let (key, root, journal) = (key.clone(), root.clone(), self.journal.clone());
                tokio::task::spawn_blocking(move || {
                    put_fs(&root, journal.as_deref(), &key, spooled)
                })
                .await
                .map_err(|e| StorageError::Internal(format!("put task failed: {e}")))?
            }
            None => self.upload(key, spooled).await,
        }
    }

    /// [`Store::put`] for callers already on a blocking thread: on the filesystem the object
    /// is made durable here (`Ok(None)`); for S3 the file comes back (`Ok(Some)`) to be
    /// uploaded with [`Store::put`].
    pub fn put_local(
        &self,
        key: &ObjectKey,
        spooled: SpooledFile,
    ) -> Result<Option<SpooledFile>, StorageError> {
        match &self.fs_root {
            Some(root) => {
                put_fs(root, self.journal.as_deref(), key, spooled)?;
                Ok(None)
            }
            None => Ok(Some(spooled)),
        }
    }

    async fn upload(&self, key: &ObjectKey, spooled: SpooledFile) -> Result<(), StorageError> {
        if let Some(bytes) = spooled.bytes() {
            // Small enough to be in memory: one PUT.
            self.op.write(key.as_str(), bytes.to_vec()).await?;
            return Ok(());
        }
        let path = spooled.path().expect("not in memory").to_owned();
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StorageError::io("opening spool file", &path, e))?;
        let mut writer = self
            .op
            .writer_with(key.as_str())
            .chunk(8 << 20)
            .concurrent(2)
            .await?;
        let mut stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StorageError::io("reading spool file", &path, e))?;
            writer.write(chunk).await?;
        }
        writer.close().await?;
        Ok(())
    }

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

    /// Read a byte range into memory (for frames and headers: small by construction).
    pub async fn read_range(
        &self,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<Bytes, StorageError> {
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

    pub async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        // A tombstone first: the journal's replay must not bring the object back.
        let tombstone = match &self.journal {
            Some(journal) if key.is_instance() => Some(journal.forget(key)?),
            _ => None,
        };
        self.op.delete(key.as_str()).await?;
        drop(tombstone);
        Ok(())
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
}

/// A durable put on the filesystem (blocking): through the journal for an object in
/// memory, else with its own flushes.
fn put_fs(
    root: &Path,
    journal: Option<&Journal>,
    key: &ObjectKey,
    spooled: SpooledFile,
) -> Result<(), StorageError> {
    let target = root.join(key.as_str());
    // Only keys that name their bytes' digest (instances, not upload parts): a record is
    // valid when its bytes hash to its key.
    let names_digest = || ObjectKey::parse(key.as_str()).is_some();
    match (journal, spooled.bytes()) {
        (Some(journal), Some(bytes)) if names_digest() => {
            let recorded = journal.record(key, bytes)?;
            // Neither the file nor its directories are flushed here: the journal flushes
            // the filesystem before it lets the record go. Written while an earlier put's
            // flush of the journal may still run; durable once the record is.
            let _synced_by_the_journal = local::put(spooled, &target, root, false)?;
            recorded.flush()
        }
        _ => local::put(spooled, &target, root, true)?.sync(),
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
    let opened = tokio::task::spawn_blocking({
        let path = path.clone();
        move || std::fs::File::open(&path)
    })
    .await
    .map_err(|e| StorageError::Internal(e.to_string()))?;
    let mut file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StorageError::NotFound(key.to_string()))
        }
        Err(e) => return Err(StorageError::io("opening object", &path, e)),
    };
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
        while left > 0 {
            let want = left.min(1 << 20) as usize;
            let mut buf = vec![0u8; want];
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return; // the client went away
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(StorageError::io("reading object", &path, e)));
                    return;
                }
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

fn not_found(e: opendal::Error, key: &ObjectKey) -> StorageError {
    if e.kind() == ErrorKind::NotFound {
        StorageError::NotFound(key.to_string())
    } else {
        e.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Uid;

    fn uid(s: &str) -> Uid {
        Uid::parse(s).unwrap()
    }

    #[tokio::test]
    async fn filesystem_put_is_readable_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        let store = Store::open(&config).await.unwrap();
        let mut spool = Spool::create(store.spool_dir(), 1 << 20).unwrap();
        spool.write(b"hello object").await.unwrap();
        let spooled = spool.finish().await.unwrap();
        let key = ObjectKey::new(&uid("1.2"), &spooled.sha256);
        store.put(&key, spooled).await.unwrap();
        assert_eq!(store.size(&key).await.unwrap(), Some(12));
        assert_eq!(&store.read_range(&key, 6..12).await.unwrap()[..], b"object");
        let listed: Vec<_> = store.list().await.unwrap().collect::<Vec<_>>().await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].as_ref().unwrap().as_ref().unwrap(), &key);
        assert!(store.modified(&key).await.unwrap().is_some());
        assert_eq!(
            std::fs::read_dir(store.spool_dir()).unwrap().count(),
            1,
            "only the lock file"
        );
        // The same object put again: a fresh file in its place (an old one may be an orphan
        // that `verify` sweeps by its age, or damaged), still one file; and an object larger
        // than the in-memory spool, put through a spool file and a rename.
        let path = dir.path().join("objects").join(key.as_str());
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(old).unwrap();
        let mut spool = Spool::create(store.spool_dir(), 1 << 30).unwrap();
        spool.write(b"hello object").await.unwrap();
        store
            .put(&key, spool.finish().await.unwrap())
            .await
            .unwrap();
        let age = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(age.elapsed().unwrap().as_secs() < 3600, "{age:?}");
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut spool = Spool::create(store.spool_dir(), 1 << 30).unwrap();
        for chunk in big.chunks(100_000) {
            spool.write(chunk).await.unwrap();
        }
        let spooled = spool.finish().await.unwrap();
        assert!(spooled.path().is_some());
        let big_key = ObjectKey::new(&uid("1.2"), &spooled.sha256);
        store.put(&big_key, spooled).await.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("objects").join(big_key.as_str())).unwrap(),
            big
        );
        assert_eq!(
            std::fs::read(dir.path().join("objects").join(key.as_str())).unwrap(),
            b"hello object"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("objects/1.2"))
                .unwrap()
                .count(),
            2
        );
        assert_eq!(std::fs::read_dir(store.spool_dir()).unwrap().count(), 1);
        store.delete(&big_key).await.unwrap();
        // A second store on the same data directory gets its own spool and leaves ours alone.
        let other = Store::open(&config).await.unwrap();
        assert_ne!(other.spool_dir(), store.spool_dir());
        assert!(store.spool_dir().exists());
        let gone = other.spool_dir().to_owned();
        drop(other);
        let _third = Store::open(&config).await.unwrap();
        assert!(!gone.exists(), "the spool of a finished process is removed");
        assert!(store.spool_dir().exists());
    }
}
