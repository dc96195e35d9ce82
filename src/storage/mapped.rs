//! Object bytes mapped from the page cache, for sending without a copy.
//!
//! On the filesystem, an object (or a byte range of it) that the kernel holds in its page
//! cache can be *mapped* ([`Store::mapped`]): the [`Bytes`] that come back are the file's
//! pages, never read here. A connection that knows how (the plain HTTP listener, see
//! `http::zerocopy`) asks [`region`] where such bytes come from and has the kernel send
//! them from the file (`sendfile`): no copy into this process and none out of it. Anything
//! else that is handed them reads them like any memory.
//!
//! Only cached bytes are mapped, so that sending them never waits for the disk on an async
//! thread; what is not cached is read as before (`read`). Objects are immutable and never
//! truncated while stored: deleting one unlinks it, and its mapping stays valid.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, LazyLock, RwLock};

use bytes::Bytes;

use super::Store;
use crate::model::ObjectKey;

/// The request's connection sends mapped bytes from their file (a request extension, set
/// by the listener that does): a handler that sees it may ask for [`Store::mapped`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SendsFiles;

/// Where a mapped region's bytes come from.
struct Region {
    end: usize,
    file: Arc<std::fs::File>,
    offset: u64,
}

/// Every live mapping, by the address it starts at. An entry goes in after its mapping is
/// made and out before it is unmapped, so an address found here is always the mapping's.
static REGIONS: LazyLock<RwLock<BTreeMap<usize, Region>>> = LazyLock::new(Default::default);

/// The owner of mapped bytes: unregisters, then unmaps, when the last `Bytes` goes.
struct Mapping(memmap2::Mmap);

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let start = self.0.as_ptr() as usize;
        REGIONS
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&start);
    }
}

/// The file and offset `bytes` were mapped from, when they lie wholly in one mapping.
pub fn region(bytes: &[u8]) -> Option<(Arc<std::fs::File>, u64)> {
    if bytes.is_empty() {
        return None;
    }
    let at = bytes.as_ptr() as usize;
    let regions = REGIONS.read().unwrap_or_else(|e| e.into_inner());
    let (start, region) = regions.range(..=at).next_back()?;
    (at + bytes.len() <= region.end)
        .then(|| (region.file.clone(), region.offset + (at - start) as u64))
}

impl Store {
    /// The object's bytes (or `range` of them) mapped, when the store is a filesystem and
    /// the kernel holds every page in its cache; `None` otherwise (and on any error: the
    /// reading path then reads, and reports). Never waits for the disk.
    pub fn mapped(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Option<Bytes> {
        map_cached(&self.fs_root.as_ref()?.join(key.as_str()), range)
    }
}

/// `range` (or all) of the file at `path`, mapped, when it is all in the page cache.
fn map_cached(path: &Path, range: Option<Range<u64>>) -> Option<Bytes> {
    let fd = super::read::open_cached(path)?;
    let size = u64::try_from(rustix::fs::fstat(&fd).ok()?.st_size).ok()?;
    let range = range.unwrap_or(0..size);
    if range.start > range.end || range.end > size {
        return None;
    }
    if range.is_empty() {
        return Some(Bytes::new());
    }
    let file = Arc::new(std::fs::File::from(fd));
    let len = usize::try_from(range.end - range.start).ok()?;
    // SAFETY: the map is read-only and shared, of a stored object: objects are never
    // written again or truncated while they exist (see the module's documentation).
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(range.start)
            .len(len)
            .map(&*file)
    }
    .ok()?;
    if !resident(&file, &map, &range) {
        return None;
    }
    let start = map.as_ptr() as usize;
    let region = Region {
        end: start + len,
        file,
        offset: range.start,
    };
    REGIONS
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(start, region);
    Some(Bytes::from_owner(Mapping(map)))
}

/// `cachestat(2)` (Linux 6.5; the same number on every architecture).
const SYS_CACHESTAT: libc::c_long = 451;

/// Whether every page of `map` (`range` of `file`) is in the page cache: `cachestat` where
/// the kernel has it (a walk of the file's cache), else `mincore` (a page-table walk, then a
/// cache look-up per page: twice the cost on a 512 KB object).
fn resident(file: &std::fs::File, map: &memmap2::Mmap, range: &Range<u64>) -> bool {
    use std::os::fd::AsRawFd;
    let page = rustix::param::page_size() as u64;
    let pages = range.end.div_ceil(page) - range.start / page;
    #[repr(C)]
    struct CacheStatRange {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct CacheStat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    let ask = CacheStatRange {
        off: range.start,
        len: range.end - range.start,
    };
    let mut stat = CacheStat::default();
    // SAFETY: both structures are laid out as the kernel's (`repr(C)`, five and two u64)
    // and live across the call; the descriptor is open.
    let done = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &ask as *const CacheStatRange,
            &mut stat as *mut CacheStat,
            0,
        )
    };
    if done == 0 {
        return stat.nr_cache >= pages;
    }
    mapped_resident(map, range)
}

/// Whether every page of `map` (`range` of its file) is in the page cache, by `mincore`.
fn mapped_resident(map: &memmap2::Mmap, range: &Range<u64>) -> bool {
    let page = rustix::param::page_size() as u64;
    let pages = range.end.div_ceil(page) - range.start / page;
    let lead = (range.start % page) as usize;
    let base = map.as_ptr() as usize - lead;
    let len = map.len() + lead;
    let mut cached = vec![0u8; pages as usize];
    // SAFETY: `base` is the page-aligned start of the mapping memmap2 made (it maps from
    // the page that holds `range.start`), `len` stays inside it, and `cached` has one byte
    // per page of it.
    let ok = unsafe { libc::mincore(base as *mut libc::c_void, len, cached.as_mut_ptr()) };
    ok == 0 && cached.iter().all(|p| p & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file just written is cached: mapped whole or in part, with the file and offset
    /// of any slice of it known; nothing is known of other memory, or once it is dropped.
    #[test]
    fn mapped_bytes_know_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object.dcm");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();

        let whole = map_cached(&path, None).expect("a file just written is cached");
        assert_eq!(&whole[..], &data[..]);
        let (file, offset) = region(&whole[1000..2000]).unwrap();
        assert_eq!(offset, 1000);
        assert_eq!(file.metadata().unwrap().len(), 300_000);

        let part = map_cached(&path, Some(5000..70_000)).unwrap();
        assert_eq!(&part[..], &data[5000..70_000]);
        assert_eq!(region(&part[10..20]).unwrap().1, 5010);
        assert!(region(&data[..10]).is_none(), "heap memory is no mapping");

        let start = part.as_ptr() as usize;
        drop(part);
        assert!(!REGIONS.read().unwrap().contains_key(&start));
        assert!(map_cached(&path, Some(299_990..300_010)).is_none());
        assert_eq!(map_cached(&path, Some(7..7)).unwrap().len(), 0);
        assert!(map_cached(&dir.path().join("missing.dcm"), None).is_none());

        // Both ways of asking the kernel agree: a file just written is cached; after
        // POSIX_FADV_DONTNEED its clean, unmapped pages are dropped (not on tmpfs, which
        // keeps them: there the check is only that both agree).
        drop(whole);
        let file = std::fs::File::open(&path).unwrap();
        let range = 5000..70_000;
        // SAFETY: a file of this test's own, not changed while mapped.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(5000)
                .len(65_000)
                .map(&file)
        }
        .unwrap();
        assert!(resident(&file, &map, &range) && mapped_resident(&map, &range));
        file.sync_all().unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let cached = mapped_resident(&map, &range);
        assert_eq!(resident(&file, &map, &range), cached);
        if !cached {
            assert!(
                map_cached(&path, None).is_none(),
                "uncached bytes are read, not mapped"
            );
        }
    }
}
