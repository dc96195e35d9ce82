//! Group commit for directory fsyncs. After a rename, the directory must be fsynced before
//! the object counts as durable; concurrent puts into one directory (the instances of one
//! study arriving on several associations) share one fsync instead of queueing for one each.
//!
//! Per directory, callers take a ticket after their rename. One of them (the leader) runs
//! the fsync and covers every ticket taken before it started; callers whose ticket came
//! later wait for the next round. A failed fsync covers nothing: a waiter then leads a new
//! round (and fails on its own if the directory keeps failing).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, LazyLock, Mutex};

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
}
