//! Group commit across the object journal and the index. An instance written on the
//! filesystem is durable once its journal record is flushed, and answered once its row is
//! committed after that. Concurrent instances share both steps: one thread at a time
//! leads a group — every instance waiting when it starts — flushes the journal once for
//! all of it, writes the group's rows in one index batch and answers each instance.
//!
//! The others only wait, and each is woken once: with its answer, or to lead the group
//! that gathered meanwhile. The lead passes on as soon as the flush is done, so the next
//! group's flush runs while this group's rows are written. A leader that knows of
//! instances on their way (being parsed and written, [`Commits::coming`]) waits for them
//! up to [`GATHER`] before it flushes: a flush costs the CPU about 0.1 ms and an index
//! commit as much again, so on two cores shared with the senders, a group of two costs
//! less than two groups. Alone (one association), nothing is on its way and nobody waits. (Each thread used to leave the
//! journal's flush on its own and reach the index writer alone: batches of about one row,
//! and two wake-ups per waiting instance.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::index::{Index, IndexError, InsertOutcome, InstanceRecord};
#[cfg(test)]
use crate::storage::Placed;
use crate::storage::{StorageError, Written};

/// Why an instance was not committed.
#[derive(Debug)]
pub(super) enum Failed {
    /// Its object could not be made durable.
    Object(StorageError),
    /// Its row could not be written.
    Index(IndexError),
}

/// What became of an instance's row.
pub(super) type Answer = Result<InsertOutcome, Failed>;

/// How long a leader waits at most for the instances on their way.
const GATHER: Duration = Duration::from_micros(200);

/// The groups being committed (one per [`super::Ingest`]).
#[derive(Default)]
pub(super) struct Commits {
    state: Mutex<State>,
    /// Instances on their way to a group (see [`Commits::coming`]).
    coming: AtomicUsize,
    /// Signalled when one of them has arrived (or has been refused on the way).
    arrived: Condvar,
}

/// An instance on its way to [`Commits::commit`]: counted from the moment its header is
/// parsed until it waits in a group, or is refused on the way.
pub(super) struct Coming<'c>(&'c Commits);

impl Drop for Coming<'_> {
    fn drop(&mut self) {
        // Under the lock that a gathering leader holds between its look at the count and
        // its wait: the signal cannot fall between the two.
        let _state = self.0.state.lock();
        self.0.coming.fetch_sub(1, Ordering::AcqRel);
        self.0.arrived.notify_all();
    }
}

#[derive(Default)]
struct State {
    waiting: Vec<Waiting>,
    /// A group's flush is running: who comes now waits for the next group.
    leading: bool,
}

/// An instance written under its key, waiting for its group.
struct Waiting {
    written: Written,
    record: InstanceRecord,
    /// How its thread is woken; `None` for the leader's own instance.
    turn: Option<oneshot::Sender<Turn>>,
}

/// Why a waiting thread is woken.
enum Turn {
    /// To lead this group (its own instance among them, without a turn).
    Lead(Vec<Waiting>),
    Done(Answer),
}

impl Commits {
    /// Count an instance on its way here, until the guard is handed to
    /// [`Commits::commit`] or dropped.
    pub(super) fn coming(&self) -> Coming<'_> {
        self.coming.fetch_add(1, Ordering::AcqRel);
        Coming(self)
    }

    /// Make `written` durable and commit `record`, in whichever group comes first
    /// (blocking: call it from a blocking thread, not from within an async context).
    pub(super) fn commit(
        &self,
        index: &Index,
        written: Written,
        record: InstanceRecord,
        coming: Coming<'_>,
    ) -> Answer {
        let mut me = Waiting {
            written,
            record,
            turn: None,
        };
        let group = {
            let Ok(mut state) = self.state.lock() else {
                return Err(Failed::Index(IndexError::WriterGone));
            };
            if state.leading {
                let (turn, woken) = oneshot::channel();
                me.turn = Some(turn);
                state.waiting.push(me);
                drop(state);
                drop(coming);
                match woken.blocking_recv() {
                    Ok(Turn::Done(answer)) => return answer,
                    Ok(Turn::Lead(group)) => group,
                    Err(_) => return Err(Failed::Index(IndexError::WriterGone)),
                }
            } else {
                state.leading = true;
                drop(state);
                drop(coming);
                self.gather(me)
            }
        };
        self.lead(index, group)
            .unwrap_or(Err(Failed::Index(IndexError::WriterGone)))
    }

    /// The leader's group: its own instance, and those that arrive while it waits (up to
    /// [`GATHER`]) for the ones on their way.
    fn gather(&self, me: Waiting) -> Vec<Waiting> {
        let mut group = vec![me];
        if self.coming.load(Ordering::Acquire) == 0 {
            return group;
        }
        let deadline = Instant::now() + GATHER;
        let Ok(mut state) = self.state.lock() else {
            return group;
        };
        while self.coming.load(Ordering::Acquire) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = match self.arrived.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(_) => return group,
            };
        }
        group.append(&mut state.waiting);
        group
    }

    /// Flush a group, pass the lead on, write the group's rows and answer its instances;
    /// the leader's own answer comes back.
    fn lead(&self, index: &Index, group: Vec<Waiting>) -> Option<Answer> {
        let mut handing = Handing(Some(self));
        // One flush per journal segment: it covers every record of the segment written
        // before it began (the group's all were); the others find theirs covered and
        // return at once. A group that straddles a rotation flushes each segment.
        let flushed: Vec<Result<(), StorageError>> =
            group.iter().map(|w| w.written.flush()).collect();
        handing.pass_on(index);
        let mut mine = None;
        let (mut rows, mut turns) = (Vec::with_capacity(group.len()), Vec::new());
        for (waiting, flush) in group.into_iter().zip(flushed) {
            match flush {
                Ok(()) => {
                    rows.push(waiting.record);
                    turns.push(waiting.turn);
                }
                Err(e) => answer(waiting.turn, Err(Failed::Object(e)), &mut mine),
            }
        }
        let outcomes = index.insert_blocking(rows);
        for (turn, outcome) in turns.into_iter().zip(outcomes) {
            answer(turn, outcome.map_err(Failed::Index), &mut mine);
        }
        mine
    }
}

/// Give an instance its answer: through its turn, or as the leader's own.
fn answer(turn: Option<oneshot::Sender<Turn>>, answer: Answer, mine: &mut Option<Answer>) {
    match turn {
        Some(turn) => {
            let _ = turn.send(Turn::Done(answer));
        }
        None => *mine = Some(answer),
    }
}

/// The lead, until passed on: to the first instance that waits, with everything waiting,
/// or to nobody. Passed on when dropped too, so that a leader that panics does not leave
/// the others waiting for ever.
struct Handing<'c>(Option<&'c Commits>);

impl Handing<'_> {
    fn pass_on(&mut self, index: &Index) {
        let Some(commits) = self.0.take() else {
            return;
        };
        let mut next = {
            let Ok(mut state) = commits.state.lock() else {
                return;
            };
            if state.waiting.is_empty() {
                state.leading = false;
                return;
            }
            std::mem::take(&mut state.waiting)
        };
        // Its thread is blocked on the turn; if it is gone all the same (or had none), the
        // group is led here (its first instance then goes unanswered, as nobody waits).
        let sent = match next[0].turn.take() {
            Some(turn) => turn.send(Turn::Lead(next)),
            None => Err(Turn::Lead(next)),
        };
        if let Err(Turn::Lead(group)) = sent {
            commits.lead(index, group);
        }
    }
}

impl Drop for Handing<'_> {
    fn drop(&mut self) {
        if let Some(commits) = self.0.take() {
            if let Ok(mut state) = commits.state.lock() {
                // Nobody leads now: the waiting wake up as failed rather than never.
                state.leading = false;
                for waiting in state.waiting.drain(..) {
                    if let Some(turn) = waiting.turn {
                        let _ = turn.send(Turn::Done(Err(Failed::Index(IndexError::WriterGone))));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::sample;
    use crate::model::{ObjectKey, Uid};
    use crate::storage::{Spool, Store};
    use std::sync::Arc;

    /// Threads committing at once each get their own instance's answer, a duplicate among
    /// them included, and every row is written once; the lead is free afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_are_grouped_and_each_answered() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        let store = Store::open(&config).await.unwrap();
        let url = format!("sqlite://{}", dir.path().join("index.sqlite").display());
        let index = Index::open_with(&url, 2, true).await.unwrap();
        let commits = Arc::new(Commits::default());
        let mut work = Vec::new();
        for t in 0..6 {
            let mut mine = Vec::new();
            for i in 0..25 {
                // Thread 5 stores thread 0's instances again.
                let sop = format!("1.{}.1.{i}", if t == 5 { 0 } else { t });
                let mut spool = Spool::create(store.spool_dir(), 1 << 20).unwrap();
                spool.write(sop.as_bytes()).await.unwrap();
                let spooled = spool.finish().await.unwrap();
                let study = Uid::parse(&format!("1.{t}")).unwrap();
                let key = ObjectKey::new(&study, &spooled.sha256);
                let mut record = sample(study.as_str(), &format!("1.{t}.1"), &sop, "CT");
                record.object_key = key.clone();
                record.forward_to.clear();
                mine.push((key, spooled, record));
            }
            work.push(mine);
        }
        let threads: Vec<_> = work
            .into_iter()
            .map(|mine| {
                let (store, index, commits) = (store.clone(), index.clone(), commits.clone());
                let objects = dir.path().join("objects");
                std::thread::spawn(move || {
                    mine.into_iter()
                        .map(|(key, spooled, record)| {
                            let Placed::Written(written) = store.put_local(&key, spooled).unwrap()
                            else {
                                panic!("the filesystem store writes here");
                            };
                            assert!(objects.join(key.as_str()).exists());
                            let coming = commits.coming();
                            commits.commit(&index, written, record, coming).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let outcomes: Vec<Vec<InsertOutcome>> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let inserted = |o: &[InsertOutcome]| {
            o.iter()
                .filter(|x| matches!(x, InsertOutcome::Inserted))
                .count()
        };
        for o in &outcomes[1..5] {
            assert_eq!(inserted(o), 25);
        }
        assert_eq!(inserted(&outcomes[0]) + inserted(&outcomes[5]), 25);
        assert_eq!(index.counts().await.unwrap().2, 5 * 25);
        assert!(
            !commits.state.lock().unwrap().leading,
            "the lead is free again"
        );
    }
}
