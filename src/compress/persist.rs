//! Writing a group of re-encoded instances, object first, index second, as at ingest:
//! record the intents (one transaction), write each new object durably, swap the rows to
//! them (one transaction), delete the objects no longer used, then drop the intents and
//! record how the others ended (one transaction). A crash anywhere leaves every instance
//! with one good object; `recover` deletes what it left over.

use super::{Encoded, Outcome, Prepared};
use crate::index::compress::{Candidate, CompressState};
use crate::ingest::Ingest;
use crate::model::ObjectKey;

/// Write and swap the group's encoded instances (in a dry run, only count them), record
/// the outcome of each, and return them in order.
pub(super) async fn settle(
    ingest: &Ingest,
    group: Vec<Prepared>,
    dry_run: bool,
) -> Vec<(Candidate, Outcome)> {
    let (mut ready, mut out) = (Vec::new(), Vec::new());
    for (i, (c, prepared)) in group.into_iter().enumerate() {
        match prepared {
            Ok(encoded) if dry_run => {
                let after = encoded.new.size;
                out.push((
                    c.clone(),
                    Outcome::Done {
                        before: c.size,
                        after,
                    },
                ));
            }
            Ok(encoded) => {
                ready.push((i, c.clone(), encoded));
                out.push((c, Outcome::Lost));
            }
            Err(outcome) => out.push((c, outcome)),
        }
    }
    if dry_run {
        return out;
    }
    let (outcomes, gone) = write_and_swap(ingest, &ready).await;
    for ((i, _, _), outcome) in ready.iter().zip(outcomes) {
        out[*i].1 = outcome;
    }
    record(ingest, &out, &gone).await;
    out
}

/// The outcome of each ready instance, and the intents whose left-over object is gone.
async fn write_and_swap(
    ingest: &Ingest,
    ready: &[(usize, Candidate, Encoded)],
) -> (Vec<Outcome>, Vec<ObjectKey>) {
    let index = ingest.index();
    let failed = |reason: String| Outcome::Failed { reason };
    let mut outcomes: Vec<Option<Outcome>> = vec![None; ready.len()];
    let intents: Vec<_> = ready
        .iter()
        .map(|(_, c, e)| (&e.new.object_key, &c.sop_instance_uid, &c.object_key))
        .collect();
    if let Err(e) = index.add_compress_intents(&intents).await {
        let reason = format!("recording the intent: {e}");
        return (vec![failed(reason); ready.len()], Vec::new());
    }
    // Each new object, durably; one that cannot be written is given up (its remains
    // deleted, its intent dropped).
    let mut gone = Vec::new();
    for (slot, (_, c, e)) in outcomes.iter_mut().zip(ready) {
        if let Err(reason) = write(ingest, e).await {
            drop_unused(ingest, c, e, false, &mut gone).await;
            *slot = Some(failed(reason));
        }
    }
    let written: Vec<_> = ready
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.is_none())
        .map(|((_, c, e), _)| (&c.sop_instance_uid, &c.object_key, &e.new))
        .collect();
    let swapped = match index.swap_compressed(&written).await {
        Ok(swapped) => swapped,
        Err(e) => {
            // The intents stay pending: recovery deletes the new objects.
            let reason = format!("swapping the index row: {e}");
            let outcomes = outcomes
                .into_iter()
                .map(|o| o.unwrap_or(failed(reason.clone())));
            return (outcomes.collect(), gone);
        }
    };
    let mut swapped = swapped.into_iter();
    for (slot, (_, c, e)) in outcomes.iter_mut().zip(ready) {
        if slot.is_none() {
            let swapped = swapped.next().unwrap_or(false);
            *slot = Some(drop_unused(ingest, c, e, swapped, &mut gone).await);
        }
    }
    (outcomes.into_iter().map(Option::unwrap).collect(), gone)
}

/// Spool the re-encoded object and store it durably under its key.
async fn write(ingest: &Ingest, e: &Encoded) -> Result<(), String> {
    let store = ingest.store();
    let spooling = |x: crate::storage::StorageError| format!("spooling: {x}");
    let mut spool = crate::storage::Spool::create(store.spool_dir(), e.bytes.len() as u64 + 1)
        .map_err(spooling)?;
    spool.write(&e.bytes).await.map_err(spooling)?;
    let spooled = spool.finish().await.map_err(spooling)?;
    store
        .put(&e.new.object_key, spooled)
        .await
        .map_err(|x| format!("writing the object: {x}"))
}

/// Delete the object no longer used — the original once swapped, else the new one —
/// unless another process re-encoded the same instance to the same bytes (the same key)
/// and swapped first: then the new key is the live object (and its intent that one's).
async fn drop_unused(
    ingest: &Ingest,
    c: &Candidate,
    e: &Encoded,
    swapped: bool,
    gone: &mut Vec<ObjectKey>,
) -> Outcome {
    let key = &e.new.object_key;
    let done = Outcome::Done {
        before: c.size,
        after: e.new.size,
    };
    if !swapped {
        let live = ingest.index().locate_instance(&c.sop_instance_uid).await;
        match live {
            Ok(Some(loc)) if &loc.object_key == key => return Outcome::Lost,
            Ok(_) => {}
            Err(err) => {
                // Not known whether the new object is live: recovery will tell.
                tracing::warn!(key = %key, error = %err, "compression left-over kept for recovery");
                return Outcome::Lost;
            }
        }
    }
    let unused = if swapped { &c.object_key } else { key };
    match ingest.store().delete(unused).await {
        Ok(()) => gone.push(key.clone()),
        Err(err) => tracing::warn!(key = %unused, error = %err, "left for recovery to delete"),
    }
    if swapped {
        done
    } else {
        Outcome::Lost
    }
}

/// Metrics, and in the index: the intents done with, the instances not re-encoded.
async fn record(ingest: &Ingest, outcomes: &[(Candidate, Outcome)], gone: &[ObjectKey]) {
    let metrics = &crate::metrics::get().compress;
    let mut states = Vec::new();
    for (c, outcome) in outcomes {
        let label = match outcome {
            Outcome::Done { before, after } => {
                metrics.bytes.with_label_values(&["before"]).inc_by(*before);
                metrics.bytes.with_label_values(&["after"]).inc_by(*after);
                "done"
            }
            Outcome::Skipped { .. } => {
                states.push((&c.sop_instance_uid, CompressState::Skipped));
                "skipped"
            }
            Outcome::Failed { reason } => {
                tracing::warn!(sop = %c.sop_instance_uid, reason, "compression failed; the original is kept");
                states.push((&c.sop_instance_uid, CompressState::Failed));
                "failed"
            }
            Outcome::Lost => "lost",
        };
        metrics.objects.with_label_values(&[label]).inc();
    }
    let gone: Vec<&ObjectKey> = gone.iter().collect();
    if let Err(e) = ingest.index().settle_compress(&gone, &states).await {
        tracing::warn!(error = %e, "compression intents and states not recorded; recovery will tidy up");
    }
}
