//! The object store: where instance bytes live, outside the index.
//!
//! Owns every call into opendal and every file access of objects (reads in [`read`]).
//! Objects are named by [`ObjectKey`] (`model`): `<StudyInstanceUID>/<sha256>.dcm`, so no
//! input can escape the store's root and one key always names one byte sequence. Called
//! by `ingest/` (spool, put), the retrieval adapters through the context (read), `verify`
//! (list, digest, delete) and the upload flow (parts).
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
mod mapped;
mod read;
mod spool;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use opendal::{services, Operator};

use crate::config::{Config, ObjectSync, StorageBackend};
use crate::model::ObjectKey;

pub use dirsync::DirSyncs;
pub use journal::{Journal, ReplayReport};
#[cfg(test)]
pub use mapped::region;
pub use mapped::{cached, first_mapped, SendsFiles, Source};
pub use read::StudyObjects;
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

    /// Whether objects live on the local filesystem (where start-up recovery can look
    /// into recently written study directories).
    pub fn is_local(&self) -> bool {
        self.fs_root.is_some()
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
    /// is written under its key here, durable once [`Written::flush`] has returned (which
    /// several puts may share); for S3 the file comes back to be uploaded with
    /// [`Store::put`].
    pub fn put_local(&self, key: &ObjectKey, spooled: SpooledFile) -> Result<Placed, StorageError> {
        match &self.fs_root {
            Some(root) => Ok(Placed::Written(write_fs(
                root,
                self.journal.as_deref(),
                key,
                spooled,
            )?)),
            None => Ok(Placed::Remote(spooled)),
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

    /// Delete the objects of instances whose rows are gone (SOP Instance UID, key); one that
    /// cannot be is logged and left for `verify` to sweep as an orphan.
    pub async fn delete_deleted(&self, deleted: &[(crate::model::Uid, ObjectKey)]) {
        for (sop, key) in deleted {
            if let Err(e) = self.delete(key).await {
                tracing::warn!(sop = %sop, error = %e, "object left after delete; verify will sweep it");
            }
        }
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
}

/// A durable put on the filesystem (blocking): through the journal for an object in
/// memory, else with its own flushes.
fn put_fs(
    root: &Path,
    journal: Option<&Journal>,
    key: &ObjectKey,
    spooled: SpooledFile,
) -> Result<(), StorageError> {
    write_fs(root, journal, key, spooled)?.flush()
}

/// Write an object under its key: durable now, or once its journal record is flushed.
fn write_fs(
    root: &Path,
    journal: Option<&Journal>,
    key: &ObjectKey,
    spooled: SpooledFile,
) -> Result<Written, StorageError> {
    let target = root.join(key.as_str());
    // Only keys that name their bytes' digest (instances, not upload parts): a record is
    // valid when its bytes hash to its key.
    match (journal, spooled.bytes()) {
        (Some(journal), Some(bytes)) if key.is_instance() => {
            let recorded = journal.record(key, bytes)?;
            // Neither the file nor its directories are flushed here: the journal flushes
            // the filesystem before it lets the record go. Written while an earlier put's
            // flush of the journal may still run; durable once the record is.
            let _synced_by_the_journal = local::put(spooled, &target, root, false)?;
            Ok(Written(Some(recorded)))
        }
        _ => {
            local::put(spooled, &target, root, true)?.sync()?;
            Ok(Written(None))
        }
    }
}

/// Where [`Store::put_local`] left an object.
pub enum Placed {
    /// Under its key on the filesystem.
    Written(Written),
    /// Nowhere yet: the store is remote, the object is to be uploaded.
    Remote(SpooledFile),
}

/// An object written under its key on the filesystem: durable once [`Written::flush`] has
/// returned (at once when it was put with flushes of its own).
pub struct Written(Option<journal::Entry>);

impl Written {
    /// Make it durable (blocking): flush its journal record, with every other record
    /// written before the flush (group commit). A flush that failed fails every put it
    /// covered, each time it is asked.
    pub fn flush(&self) -> Result<(), StorageError> {
        match &self.0 {
            Some(recorded) => recorded.flush(),
            None => Ok(()),
        }
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
