//! Directory fsyncs. After a link or rename, the directory must be fsynced before the object
//! counts as durable, and so must the parent of a directory whose own entry may not be
//! durable yet (one just created, by this put or a concurrent one).
//!
//! A put computes the directories to sync as [`DirSyncs`] and syncs them before it returns,
//! so before its object's index row commits. (Letting the index writer sync a whole
//! batch's directories before its commit was tried: it serialised the fsync with the
//! commit it used to overlap, and was slower.) Start-up recovery relies on these fsyncs
//! too: a directory's modification time, made durable with its entries, tells it which
//! study directories to look into after a power failure. (Puts through the object journal
//! skip them: the journal's replay sets the time of their directories before recovery
//! looks.)
//!
//! Concurrent callers of [`sync_dir`] for one directory share fsyncs (group commit): per
//! directory, callers take a ticket after their change. One of them (the leader) runs the
//! fsync and covers every ticket taken before it started; callers whose ticket came later
//! wait for the next round. A failed fsync covers nothing: a waiter then leads a new round
//! (and fails on its own if the directory keeps failing).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, LazyLock, Mutex};

use super::StorageError;

/// Directories whose fsync makes the puts that returned them durable.
#[derive(Debug, Default)]
#[must_use = "an object is not durable until its directories are synced"]
pub struct DirSyncs {
    dirs: Vec<PathBuf>,
}

/// Directories whose entry in their parent is known to be durable: created by an earlier
/// run, or synced by this process. Bounded: when full it starts again (which costs a few
/// parent fsyncs more, nothing else).
static DURABLE: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Default::default);
const DURABLE_MAX: usize = 100_000;

impl DirSyncs {
    /// What a new entry in `dir` needs: `dir` itself, and its ancestors up to `limit` for
    /// as long as their own entries are not known to be durable.
    pub(super) fn for_entry_in(dir: &Path, limit: &Path) -> Self {
        let durable = DURABLE.lock().expect("durable directories");
        let mut dirs = vec![dir.to_owned()];
        let mut at = dir;
        while at != limit && !durable.contains(at) {
            match at.parent() {
                Some(parent) => {
                    dirs.push(parent.to_owned());
                    at = parent;
                }
                None => break,
            }
        }
        DirSyncs { dirs }
    }

    /// `dirs` were (re)created: their entries are new.
    pub(super) fn forget(dirs: &[PathBuf]) {
        let mut durable = DURABLE.lock().expect("durable directories");
        for dir in dirs {
            durable.remove(dir);
        }
    }

    /// fsync every directory (blocking). Afterwards, a directory synced together with its
    /// parent has a durable entry: later puts into it need not sync the parent again.
    pub fn sync(&self) -> Result<(), StorageError> {
        for dir in &self.dirs {
            sync_dir(dir).map_err(|e| StorageError::io("fsyncing directory", dir, e))?;
        }
        let mut durable = DURABLE.lock().expect("durable directories");
        if durable.len() >= DURABLE_MAX {
            durable.clear();
        }
        for dir in &self.dirs {
            if dir
                .parent()
                .is_some_and(|p| self.dirs.iter().any(|d| d == p))
            {
                durable.insert(dir.clone());
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Round {
    /// Tickets handed out, and the highest one a completed fsync covers.
    issued: u64,
    covered: u64,
    running: bool,
    /// Callers holding this entry (it is dropped from the map when none are left).
    users: usize,
}

#[derive(Default)]
struct Slot {
    round: Mutex<Round>,
    done: Condvar,
}

static SLOTS: LazyLock<Mutex<HashMap<PathBuf, Arc<Slot>>>> = LazyLock::new(Default::default);

/// fsync `dir`, sharing the call with concurrent callers for the same directory. Returns
/// once an fsync that started after this call has completed. Blocking.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let slot = {
        let mut slots = SLOTS.lock().expect("dir sync map");
        let slot = slots.entry(dir.to_owned()).or_default().clone();
        slot.round.lock().expect("dir sync round").users += 1;
        slot
    };
    let result = wait_or_lead(&slot, dir);
    let mut slots = SLOTS.lock().expect("dir sync map");
    let mut round = slot.round.lock().expect("dir sync round");
    round.users -= 1;
    if round.users == 0 {
        slots.remove(dir);
    }
    result
}

fn wait_or_lead(slot: &Slot, dir: &Path) -> std::io::Result<()> {
    let mut round = slot.round.lock().expect("dir sync round");
    round.issued += 1;
    let ticket = round.issued;
    loop {
        if round.covered >= ticket {
            return Ok(());
        }
        if !round.running {
            round.running = true;
            let covers = round.issued;
            drop(round);
            let result = std::fs::File::open(dir).and_then(|d| d.sync_all());
            round = slot.round.lock().expect("dir sync round");
            round.running = false;
            if result.is_ok() {
                round.covered = round.covered.max(covers);
            }
            slot.done.notify_all();
            return result;
        }
        round = slot.done.wait(round).expect("dir sync round");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_callers_share_fsyncs_and_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let d = dir.path().to_owned();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        sync_dir(&d).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(!SLOTS.lock().unwrap().contains_key(dir.path()));
        let missing = dir.path().join("missing");
        assert!(sync_dir(&missing).is_err());
        assert!(!SLOTS.lock().unwrap().contains_key(&missing));
    }

    #[test]
    fn a_new_directory_syncs_its_parents_until_its_entry_is_known_durable() {
        let top = tempfile::tempdir().unwrap();
        let (root, study) = (top.path().join("objects"), top.path().join("objects/1.2"));
        std::fs::create_dir_all(&study).unwrap();
        let first = DirSyncs::for_entry_in(&study, top.path());
        assert_eq!(
            first.dirs,
            [study.clone(), root.clone(), top.path().to_owned()]
        );
        first.sync().unwrap();
        // The study's and the root's entries are durable now: only the study to sync.
        assert_eq!(
            DirSyncs::for_entry_in(&study, top.path()).dirs,
            std::slice::from_ref(&study)
        );
        let other = root.join("1.3");
        std::fs::create_dir(&other).unwrap();
        assert_eq!(
            DirSyncs::for_entry_in(&other, top.path()).dirs,
            [other.clone(), root.clone()]
        );
        // Made again (removed behind our back): its entry is new.
        DirSyncs::forget(std::slice::from_ref(&study));
        assert_eq!(
            DirSyncs::for_entry_in(&study, top.path()).dirs,
            [study.clone(), root.clone()]
        );
        // A sync that fails makes nothing durable.
        let gone = root.join("1.4");
        let failing = DirSyncs {
            dirs: vec![gone.clone(), root.clone()],
        };
        assert!(failing.sync().is_err());
        assert!(!DURABLE.lock().unwrap().contains(&gone));
    }
}
