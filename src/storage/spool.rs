//! The spool: bytes in flight, hashed (SHA-256) as they arrive and kept until stored.
//!
//! An object of up to [`FLUSH_AT`] bytes — nearly every image — stays in memory: its file is
//! created only when it is stored, on the blocking thread that makes it durable, so that
//! receiving never waits for the filesystem. Larger objects go to a temporary file in the
//! spool directory, written in batches of [`FLUSH_AT`] on blocking threads. Memory per
//! object in flight is bounded by [`FLUSH_AT`] either way.
//!
//! A [`Spool`] and a [`SpooledFile`] are Drop guards: unless handed to
//! [`crate::storage::Store::put`] (which renames or uploads them), their temporary file
//! disappears with them, so an aborted upload never leaves partial state behind.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use super::StorageError;

/// Bytes are kept in memory up to this size, then written to disk in batches of it.
const FLUSH_AT: usize = 1 << 20;
/// Flushes up to this size are written without leaving the async thread.
const INLINE_FLUSH: usize = 64 * 1024;

pub struct Spool {
    dir: PathBuf,
    /// Created at the first flush: an object that fits in memory never has one.
    file: Option<NamedTempFile>,
    hasher: Option<Sha256>,
    buf: Vec<u8>,
    /// How many bytes at the start of `buf` are hashed already (while no file exists, each
    /// chunk is hashed as it arrives, a few microseconds each).
    hashed: usize,
    len: u64,
    limit: u64,
}

/// A complete spooled object with its digest: in memory, or in a temporary file that is
/// not fsynced yet (the store does that when it puts it, so that puts fsync in parallel).
pub struct SpooledFile {
    body: Body,
    pub len: u64,
    pub sha256: crate::model::Sha256,
}

enum Body {
    File(NamedTempFile),
    /// The bytes, and the spool directory a file for them is to be created in.
    Memory(Vec<u8>, PathBuf),
}

/// A reader over a spooled object's bytes.
pub enum SpoolReader<'a> {
    File(&'a std::fs::File),
    Memory(std::io::Cursor<&'a [u8]>),
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            SpoolReader::File(f) => f.read(buf),
            SpoolReader::Memory(c) => c.read(buf),
        }
    }
}

impl Seek for SpoolReader<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        match self {
            SpoolReader::File(f) => f.seek(to),
            SpoolReader::Memory(c) => c.seek(to),
        }
    }
}

impl SpooledFile {
    /// A reader from the first byte (blocking when the object is in a file).
    pub fn reader(&self) -> std::io::Result<SpoolReader<'_>> {
        Ok(match &self.body {
            Body::File(f) => {
                let mut file = f.as_file();
                file.rewind()?;
                SpoolReader::File(file)
            }
            Body::Memory(bytes, _) => SpoolReader::Memory(std::io::Cursor::new(bytes)),
        })
    }

    /// The bytes, when the object is small enough to be in memory.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.body {
            Body::Memory(bytes, _) => Some(bytes),
            Body::File(_) => None,
        }
    }

    /// The object in a temporary file of its own (created and written now if it was in
    /// memory; blocking).
    pub(crate) fn into_file(self) -> Result<NamedTempFile, StorageError> {
        match self.body {
            Body::File(f) => Ok(f),
            Body::Memory(bytes, dir) => {
                let mut file = create(&dir)?;
                file.as_file_mut()
                    .write_all(&bytes)
                    .map_err(|e| StorageError::io("writing spool file", file.path(), e))?;
                Ok(file)
            }
        }
    }

    /// The object in a file, for callers that read it by path.
    pub async fn on_disk(self) -> Result<SpooledFile, StorageError> {
        let (len, sha256) = (self.len, self.sha256);
        let file = tokio::task::spawn_blocking(move || self.into_file())
            .await
            .map_err(|e| StorageError::Internal(format!("spool task failed: {e}")))??;
        Ok(SpooledFile {
            body: Body::File(file),
            len,
            sha256,
        })
    }

    /// The path of the object's file; `None` while it is in memory (see [`Self::on_disk`]).
    pub fn path(&self) -> Option<&Path> {
        match &self.body {
            Body::File(f) => Some(f.path()),
            Body::Memory(..) => None,
        }
    }
}

/// A spool whose earlier write failed (its file and hasher went with the failure).
fn broken() -> StorageError {
    StorageError::Internal("the spool failed earlier".into())
}

fn create(dir: &Path) -> Result<NamedTempFile, StorageError> {
    tempfile::Builder::new()
        .prefix(".spool-")
        .tempfile_in(dir)
        .map_err(|e| StorageError::io("creating spool file", dir, e))
}

impl Spool {
    /// Start spooling into `dir`, refusing to grow beyond `limit` bytes. Touches nothing
    /// on disk until more than [`FLUSH_AT`] bytes have arrived.
    pub fn create(dir: &Path, limit: u64) -> Result<Spool, StorageError> {
        Ok(Spool {
            dir: dir.to_owned(),
            file: None,
            hasher: Some(Sha256::new()),
            buf: Vec::new(),
            hashed: 0,
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
        if self.file.is_none() {
            self.hasher.as_mut().ok_or_else(broken)?.update(chunk);
            self.hashed += chunk.len();
        }
        self.buf.extend_from_slice(chunk);
        if self.buf.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hash what is not hashed yet and write the buffer to the file (created now if
    /// needed): on a blocking thread, or here when it is small and the file exists (a few
    /// microseconds into the page cache; a hop to the blocking pool costs more).
    async fn flush(&mut self) -> Result<(), StorageError> {
        let hashed = std::mem::take(&mut self.hashed);
        if self.buf.len() <= INLINE_FLUSH {
            if let (Some(file), Some(hasher)) = (self.file.as_mut(), self.hasher.as_mut()) {
                hasher.update(&self.buf[hashed..]);
                let r = file.as_file_mut().write_all(&self.buf);
                self.buf.clear();
                return r.map_err(|e| StorageError::io("writing spool file", file.path(), e));
            }
        }
        let (file, dir) = (self.file.take(), self.dir.clone());
        let mut hasher = self.hasher.take().ok_or_else(broken)?;
        let buf = std::mem::take(&mut self.buf);
        let (result, mut buf) = tokio::task::spawn_blocking(move || {
            let r = (|| {
                let mut file = match file {
                    Some(f) => f,
                    None => create(&dir)?,
                };
                hasher.update(&buf[hashed..]);
                file.as_file_mut()
                    .write_all(&buf)
                    .map_err(|e| StorageError::io("writing spool file", file.path(), e))?;
                Ok::<_, StorageError>((file, hasher))
            })();
            (r, buf)
        })
        .await
        .map_err(|e| StorageError::Internal(format!("spool task failed: {e}")))?;
        let (file, hasher) = result?;
        buf.clear();
        self.buf = buf;
        self.file = Some(file);
        self.hasher = Some(hasher);
        Ok(())
    }

    /// The finished object with its SHA-256: in memory if it never outgrew the buffer.
    pub async fn finish(mut self) -> Result<SpooledFile, StorageError> {
        let body = if self.file.is_none() {
            Body::Memory(std::mem::take(&mut self.buf), self.dir.clone())
        } else {
            self.flush().await?;
            Body::File(self.file.take().ok_or_else(broken)?)
        };
        let sha256 = self.hasher.take().ok_or_else(broken)?.finalize().into();
        Ok(SpooledFile {
            body,
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
        assert_eq!(done.sha256, crate::model::Sha256::of(&data));
        assert_eq!(std::fs::read(done.path().unwrap()).unwrap(), data);
        let path = done.path().unwrap().to_owned();
        drop(done);
        assert!(!path.exists());

        // Small objects stay in memory (no file at all) until they are stored.
        let mut spool = Spool::create(dir.path(), 10 << 20).unwrap();
        for chunk in data[..300_000].chunks(16_384) {
            spool.write(chunk).await.unwrap();
        }
        let done = spool.finish().await.unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(done.sha256, crate::model::Sha256::of(&data[..300_000]));
        assert_eq!(done.bytes(), Some(&data[..300_000]));
        let mut back = Vec::new();
        done.reader().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, &data[..300_000]);
        let done = done.on_disk().await.unwrap();
        assert_eq!(
            std::fs::read(done.path().unwrap()).unwrap(),
            &data[..300_000]
        );
        drop(done);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut spool = Spool::create(dir.path(), 5).unwrap();
        assert!(matches!(
            spool.write(b"123456").await,
            Err(StorageError::TooLarge { limit: 5 })
        ));
        drop(spool);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
