//! Object bytes mapped from the page cache, for sending without a copy.
//!
//! On the filesystem, an object (or a byte range of it) that the kernel holds in its page
//! cache can be *mapped* ([`Store::mapped`]): the [`Bytes`] that come back are the file's
//! pages, never read here. A connection that knows how (the plain HTTP listener, see
//! `http::zerocopy`) asks [`first_mapped`] where such bytes come from and has the kernel
//! send them from the file (`sendfile`): no copy into this process and none out of it.
//! Anything else that is handed them reads them like any memory.
//!
//! Only cached bytes are mapped, and the sender checks again ([`cached`]) before each send,
//! so that sending never waits for the disk on an async thread; what is not cached is read
//! as before (`read`). Objects are immutable and never truncated while stored: deleting one
//! unlinks it, and its mapping stays valid.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
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
        let mut regions = REGIONS.write().unwrap_or_else(|e| e.into_inner());
        if regions.remove(&start).is_some() {
            LIVE.fetch_sub(1, Ordering::Release);
        }
    }
}

/// How many mappings are live: writers skip the look-up while there are none.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Where mapped bytes come from: their file, and their offset in it.
pub struct Source {
    pub file: Arc<std::fs::File>,
    pub offset: u64,
}

/// The first of `bufs` that lies wholly in one mapping (empty ones never do): its index
/// and where its bytes come from.
pub fn first_mapped<B: std::ops::Deref<Target = [u8]>>(bufs: &[B]) -> Option<(usize, Source)> {
    if LIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    let regions = REGIONS.read().unwrap_or_else(|e| e.into_inner());
    bufs.iter().enumerate().find_map(|(i, buf)| {
        let buf: &[u8] = buf;
        let at = buf.as_ptr() as usize;
        let (start, region) = regions.range(..=at).next_back()?;
        let inside = !buf.is_empty() && at + buf.len() <= region.end;
        inside.then(|| {
            let source = Source {
                file: region.file.clone(),
                offset: region.offset + (at - start) as u64,
            };
            (i, source)
        })
    })
}

/// The file and offset `bytes` were mapped from, when they lie wholly in one mapping.
#[cfg(test)]
pub fn region(bytes: &[u8]) -> Option<Source> {
    first_mapped(&[bytes]).map(|(_, source)| source)
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
    if !cached(&map[..], &file, range.start) {
        return None;
    }
    let start = map.as_ptr() as usize;
    let region = Region {
        end: start + len,
        file,
        offset: range.start,
    };
    let mut regions = REGIONS.write().unwrap_or_else(|e| e.into_inner());
    regions.insert(start, region);
    LIVE.fetch_add(1, Ordering::Release);
    drop(regions);
    Some(Bytes::from_owner(Mapping(map)))
}

/// `cachestat(2)` (Linux 6.5; the same number on every architecture).
const SYS_CACHESTAT: libc::c_long = 451;

/// Whether every page under `bytes` (mapped from `offset` of `file`) is in the page cache:
/// `cachestat` where the kernel has it (a walk of the file's cache), else `mincore` (a
/// page-table walk, then a cache look-up per page: twice the cost on a 512 KB object).
/// Pages still being read in count as cached (`cachestat`): the wait for them is short.
pub fn cached(bytes: &[u8], file: &std::fs::File, offset: u64) -> bool {
    use std::os::fd::AsRawFd;
    if bytes.is_empty() {
        return true;
    }
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
        off: offset,
        len: bytes.len() as u64,
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
        return stat.nr_cache >= pages(offset, bytes.len());
    }
    mapped_cached(bytes, offset)
}

/// The pages of a file that bytes `offset..offset + len` lie on.
fn pages(offset: u64, len: usize) -> u64 {
    let page = rustix::param::page_size() as u64;
    (offset + len as u64).div_ceil(page) - offset / page
}

/// Whether every page under mapped `bytes` (from `offset` of their file) is in the page
/// cache, by `mincore`. (Since Linux 5.0, only for files this process may write.)
fn mapped_cached(bytes: &[u8], offset: u64) -> bool {
    let page = rustix::param::page_size() as u64;
    let lead = (offset % page) as usize;
    let base = bytes.as_ptr() as usize - lead;
    let len = bytes.len() + lead;
    let mut cached = vec![0u8; pages(offset, bytes.len()) as usize];
    // SAFETY: mappings start at a page boundary of their file (memmap2 maps from the page
    // that holds the offset asked for), so `base`, the start of the page that holds
    // `bytes`, lies in the same mapping, and so does `len`; `cached` has a byte per page.
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
        let source = region(&whole[1000..2000]).unwrap();
        assert_eq!(source.offset, 1000);
        assert_eq!(source.file.metadata().unwrap().len(), 300_000);

        let part = map_cached(&path, Some(5000..70_000)).unwrap();
        assert_eq!(&part[..], &data[5000..70_000]);
        assert_eq!(region(&part[10..20]).unwrap().offset, 5010);
        assert!(region(&data[..10]).is_none(), "heap memory is no mapping");
        let bufs: [&[u8]; 4] = [b"", &data[..10], &part[..0], &part[100..200]];
        let (at, source) = first_mapped(&bufs).unwrap();
        assert_eq!(
            (at, source.offset),
            (3, 5100),
            "empty and heap buffers are skipped"
        );

        let start = part.as_ptr() as usize;
        drop(part);
        assert!(!REGIONS.read().unwrap().contains_key(&start));
        assert!(map_cached(&path, Some(299_990..300_010)).is_none());
        assert_eq!(map_cached(&path, Some(7..7)).unwrap().len(), 0);
        assert!(map_cached(&dir.path().join("missing.dcm"), None).is_none());
    }

    /// Both ways of asking the kernel (`cachestat`, `mincore`) see a page dropped from the
    /// cache, the last one of a file included; uncached bytes are then not mapped.
    #[test]
    fn a_page_out_of_the_cache_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object.dcm");
        std::fs::write(&path, vec![7u8; 300_000]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a file of this test's own, not changed while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let (head, tail) = (&map[..290_000], &map[290_000..]);
        assert!(cached(&map, &file, 0) && mapped_cached(&map, 0));
        assert!(cached(tail, &file, 290_000) && mapped_cached(tail, 290_000));
        // Written back, the last page (from 299 008) is clean and can be dropped.
        file.sync_all().unwrap();
        rustix::fs::fadvise(&file, 299_008, None, rustix::fs::Advice::DontNeed).unwrap();
        if mapped_cached(&map, 0) {
            eprintln!(
                "a_page_out_of_the_cache_is_seen: the page stayed cached (tmpfs?); not checked"
            );
            return;
        }
        assert!(
            !cached(&map, &file, 0),
            "cachestat missed the dropped last page"
        );
        assert!(!cached(tail, &file, 290_000) && !mapped_cached(tail, 290_000));
        assert!(cached(head, &file, 0) && mapped_cached(head, 0));
        assert!(
            map_cached(&path, None).is_none(),
            "uncached bytes are read, not mapped"
        );
        assert!(map_cached(&path, Some(0..290_000)).is_some());
    }
}
