//! Replay of the journals of processes that are gone (see the parent module's documentation).

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{lock_root, HEAD, MAGIC, MAX_RECORD};
use crate::model::ObjectKey;
use crate::storage::StorageError;

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
    for (dir, _lock) in crate::storage::local::gone_processes(root) {
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
                crate::storage::local::touch_at_least(&target, written)?;
            } else {
                let data = read_data(&segments[n], at, &key)?;
                crate::storage::local::restore(&target, &data, written)?;
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
