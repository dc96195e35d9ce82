//! The spool: bytes in flight, written to a temporary file while their SHA-256 is computed.
//!
//! A [`Spool`] is a Drop guard: unless it is handed to [`crate::storage::Store::put`]
//! (which renames or uploads it), the temporary file disappears with it, so an aborted
//! upload never leaves partial state behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use super::StorageError;

/// Bytes are written to disk in batches of this size.
const FLUSH_AT: usize = 1 << 20;
/// Flushes up to this size are written without leaving the async thread.
const INLINE_FLUSH: usize = 64 * 1024;

pub struct Spool {
    file: Option<NamedTempFile>,
    hasher: Option<Sha256>,
    buf: Vec<u8>,
    len: u64,
    limit: u64,
}

/// A complete, fsynced spool file with its digest.
pub struct SpooledFile {
    pub(crate) file: NamedTempFile,
    pub len: u64,
    pub sha256: [u8; 32],
}

impl SpooledFile {
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl Spool {
    /// Start a spool file in `dir` that refuses to grow beyond `limit` bytes.
    pub fn create(dir: &Path, limit: u64) -> Result<Spool, StorageError> {
        let file = tempfile::Builder::new()
            .prefix(".spool-")
            .tempfile_in(dir)
            .map_err(|e| StorageError::io("creating spool file", dir, e))?;
        Ok(Spool {
            file: Some(file),
            hasher: Some(Sha256::new()),
            buf: Vec::with_capacity(64 * 1024),
            len: 0,
            limit,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append bytes; returns [`StorageError::TooLarge`] once the limit is passed.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.len += chunk.len() as u64;
        if self.len > self.limit {
            return Err(StorageError::TooLarge { limit: self.limit });
        }
        self.buf.extend_from_slice(chunk);
        if self.buf.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    /// Write and hash what is buffered: on a blocking thread, or here when it is small
    /// (a few microseconds into the page cache; a hop to the blocking pool costs more).
    async fn flush(&mut self) -> Result<(), StorageError> {
        if self.buf.len() <= INLINE_FLUSH {
            let (file, hasher) = (
                self.file.as_mut().expect("spool file present"),
                self.hasher.as_mut().expect("hasher present"),
            );
            hasher.update(&self.buf);
            let r = file.as_file_mut().write_all(&self.buf);
            self.buf.clear();
            return r.map_err(|e| StorageError::io("writing spool file", file.path(), e));
        }
        let mut file = self.file.take().expect("spool file present");
        let mut hasher = self.hasher.take().expect("hasher present");
        let buf = std::mem::take(&mut self.buf);
        let (file, hasher, result, mut buf) = tokio::task::spawn_blocking(move || {
            hasher.update(&buf);
            let r = file.as_file_mut().write_all(&buf);
            (file, hasher, r, buf)
        })
        .await
        .map_err(|e| StorageError::Internal(format!("spool task failed: {e}")))?;
        let path: PathBuf = file.path().to_owned();
        buf.clear();
        self.buf = buf;
        self.file = Some(file);
        self.hasher = Some(hasher);
        result.map_err(|e| StorageError::io("writing spool file", &path, e))
    }

    /// Flush and return the finished file with its SHA-256. It is not fsynced yet: the
    /// store does that when it puts the file (so that concurrent puts fsync in parallel).
    pub async fn finish(mut self) -> Result<SpooledFile, StorageError> {
        self.flush().await?;
        let file = self.file.take().expect("spool file present");
        let sha256 = self
            .hasher
            .take()
            .expect("hasher present")
            .finalize()
            .into();
        Ok(SpooledFile {
            file,
            len: self.len,
            sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_what_it_writes_and_cleans_up_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(dir.path(), 10 << 20).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(70_000) {
            spool.write(chunk).await.unwrap();
        }
        let done = spool.finish().await.unwrap();
        assert_eq!(done.len, data.len() as u64);
        assert_eq!(done.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
        assert_eq!(std::fs::read(done.path()).unwrap(), data);
        let path = done.path().to_owned();
        drop(done);
        assert!(!path.exists());

        let mut spool = Spool::create(dir.path(), 5).unwrap();
        assert!(matches!(
            spool.write(b"123456").await,
            Err(StorageError::TooLarge { limit: 5 })
        ));
        drop(spool);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
