//! Compression at rest: after an instance was acknowledged as received, byte-identical,
//! it may be re-encoded losslessly (JPEG-LS) in the background — never as part of an
//! acknowledgement. For each candidate: read the object, re-encode it and prove it exact
//! ([`encode`]), record the intent, write the new object durably, swap the index row to it
//! (keeping the SHA-256 of the bytes as received), delete the original, drop the intent.
//! Object first, index second, as at ingest: a crash anywhere leaves the instance with one
//! good object, and [`recover`] deletes whatever a crash left over.

pub mod encode;
mod persist;

use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::CompressionConfig;
use crate::index::compress::{Candidate, Replacement};
use crate::ingest::Ingest;
use crate::model::clock::now_millis;
use crate::model::{ObjectKey, Sha256, TransferSyntax, Uid};
use encode::NotEncoded;

/// What became of one candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Re-encoded (or, in a dry run, would be): sizes before and after.
    Done {
        before: u64,
        after: u64,
    },
    Skipped {
        reason: String,
    },
    Failed {
        reason: String,
    },
    /// The instance changed meanwhile (deleted, or re-encoded elsewhere): nothing done.
    Lost,
}

/// The totals of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub done: u64,
    pub skipped: u64,
    pub failed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl Summary {
    fn add(&mut self, o: &Outcome) {
        match o {
            Outcome::Done { before, after } => {
                self.done += 1;
                self.bytes_before += before;
                self.bytes_after += after;
            }
            Outcome::Skipped { .. } => self.skipped += 1,
            Outcome::Failed { .. } => self.failed += 1,
            Outcome::Lost => {}
        }
    }
}

/// Whether the configured rules (modalities, SOP classes) take this instance.
fn ruled_in(config: &CompressionConfig, c: &Candidate) -> bool {
    let modality = c.modality.as_deref().unwrap_or("");
    (config.modalities.is_empty() || config.modalities.iter().any(|m| m == modality))
        && (config.sop_classes.is_empty()
            || config
                .sop_classes
                .iter()
                .any(|s| s == c.sop_class_uid.as_str()))
}

/// An instance re-encoded and proven exact, ready to be written.
pub struct Encoded {
    bytes: Vec<u8>,
    new: Replacement,
}

/// Re-encode one instance in `to` and prove it exact (on a blocking thread), or the
/// outcome that ends it here.
async fn prepare(
    ingest: &Ingest,
    config: &CompressionConfig,
    to: &TransferSyntax,
    c: &Candidate,
) -> Result<Encoded, Outcome> {
    let skip = |reason: String| Outcome::Skipped { reason };
    if !ruled_in(config, c) {
        return Err(skip(
            "not taken by compression.modalities / sop_classes".into(),
        ));
    }
    if c.size > config.max_object_bytes() {
        return Err(skip(format!(
            "larger than {} bytes",
            config.max_object_bytes()
        )));
    }
    let (target, study, before) = (to.clone(), c.study_uid.clone(), c.size);
    let encoded = ingest
        .store()
        .with_local_file(&c.object_key, move |path| {
            let bytes = encode::encode(path, &target)?;
            if bytes.len() as u64 >= before {
                return Err(NotEncoded::Skip(format!(
                    "no smaller re-encoded ({} bytes for {before})",
                    bytes.len()
                )));
            }
            replacement(&study, bytes).map_err(NotEncoded::Fail)
        })
        .await;
    match encoded {
        Ok(Ok(encoded)) => Ok(encoded),
        Ok(Err(NotEncoded::Skip(reason))) => Err(skip(reason)),
        Ok(Err(NotEncoded::Fail(reason))) => Err(Outcome::Failed { reason }),
        Err(e) => Err(Outcome::Failed {
            reason: format!("reading the object: {e}"),
        }),
    }
}

/// The index row the re-encoded `bytes` call for.
fn replacement(study: &Uid, bytes: Vec<u8>) -> Result<Encoded, String> {
    let sha256 = Sha256::of(&bytes);
    let len = bytes.len() as u64;
    let header = crate::dicom::parse_header(std::io::Cursor::new(&bytes[..]), len)
        .map_err(|e| format!("the re-encoded object: {e}"))?;
    let new = Replacement {
        object_key: ObjectKey::new(study, &sha256),
        sha256,
        size: len,
        transfer_syntax: header.transfer_syntax,
        part10_prefix: header.part10_prefix,
        frame_table: header.frame_table,
        attrs_json: header.attrs_json,
        metadata_json: header.metadata_json,
    };
    Ok(Encoded { bytes, new })
}

/// Clean up after a crash: an intent still pending is an object that never became its
/// instance's (deleted); a swapped one left its original behind (deleted). Intents newer
/// than `before` may belong to jobs running elsewhere and are left alone.
pub async fn recover(ingest: &Ingest, before: i64) -> Result<usize, String> {
    let intents = ingest
        .index()
        .compress_intents(before)
        .await
        .map_err(|e| e.to_string())?;
    for (new, old, swapped) in &intents {
        let gone = if *swapped { old } else { new };
        // The intent goes first: a job still running elsewhere then cannot swap to it.
        ingest
            .index()
            .drop_compress_intent(new)
            .await
            .map_err(|e| e.to_string())?;
        match ingest.store().delete(gone).await {
            Ok(()) => tracing::info!(key = %gone, "compression left-over deleted"),
            Err(e) => tracing::warn!(key = %gone, error = %e, "compression left-over not deleted"),
        }
    }
    Ok(intents.len())
}

/// Compress candidates (all of one study, or those idle for `compression.after`) until
/// none is left; `dry_run` changes nothing and reports what would be saved.
///
/// A pipeline: `compression.workers` objects are encoded and verified at a time on
/// blocking threads while the ones before them are written and swapped, in groups of
/// whatever is ready (one transaction per step for the group).
pub async fn run_once(
    ingest: &Ingest,
    config: &CompressionConfig,
    study: Option<&Uid>,
    dry_run: bool,
    mut each: impl FnMut(&Candidate, &Outcome),
) -> Result<Summary, String> {
    // On demand without a configured syntax: the one there is.
    let uid = config
        .target()?
        .unwrap_or(crate::render::transcode::JPEG_LS_LOSSLESS);
    let to = TransferSyntax::parse(uid).map_err(|e| e.to_string())?;
    let idle_before = match (study, config.after) {
        (Some(_), _) => i64::MAX,
        (None, after) => now_millis() - 1000 * after.unwrap_or(0) as i64,
    };
    let mut summary = Summary::default();
    let mut offset = 0;
    loop {
        let batch = ingest
            .index()
            .compress_candidates(idle_before, study, 64, offset)
            .await
            .map_err(|e| e.to_string())?;
        if batch.is_empty() {
            return Ok(summary);
        }
        let n = batch.len();
        let (producer, mut ready) = encode_all(ingest, config, &to, batch);
        while let Some(first) = ready.recv().await {
            let mut group = vec![first];
            while group.len() < GROUP {
                match ready.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            for (c, outcome) in persist::settle(ingest, group, dry_run).await {
                summary.add(&outcome);
                each(&c, &outcome);
            }
        }
        producer
            .await
            .map_err(|e| format!("the encoding task: {e}"))?;
        // A dry run changes no state: page on; otherwise the done ones are no candidates.
        if dry_run {
            offset += n;
        }
    }
}

/// At most this many instances are written and swapped together.
const GROUP: usize = 16;

type Prepared = (Candidate, Result<Encoded, Outcome>);

/// Encode `batch`, `compression.workers` at a time, in order, into a channel that holds
/// as many (memory stays bounded by twice the workers' objects).
fn encode_all(
    ingest: &Ingest,
    config: &CompressionConfig,
    to: &TransferSyntax,
    batch: Vec<Candidate>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::Receiver<Prepared>,
) {
    use futures::StreamExt;
    let workers = config.workers.max(1);
    let (tx, rx) = tokio::sync::mpsc::channel(workers);
    let (ingest, config, to) = (ingest.clone(), config.clone(), to.clone());
    let producer = tokio::spawn(async move {
        let (ingest, config, to) = (&ingest, &config, &to);
        let mut encoded = futures::stream::iter(batch)
            .map(|c| async move {
                let r = prepare(ingest, config, to, &c).await;
                (c, r)
            })
            .buffered(workers);
        while let Some(item) = encoded.next().await {
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    (producer, rx)
}

/// The background job: every `interval_secs`, compress what has been idle long enough.
pub async fn run(ingest: Ingest, config: CompressionConfig, cancel: CancellationToken) {
    let every = Duration::from_secs(config.interval_secs.max(1));
    loop {
        match run_once(&ingest, &config, None, false, |_, _| {}).await {
            Ok(s) if s.done + s.failed > 0 => tracing::info!(
                done = s.done,
                failed = s.failed,
                skipped = s.skipped,
                before = s.bytes_before,
                after = s.bytes_after,
                "compression round"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "compression round failed"),
        }
        if let Ok(n) = ingest.index().compress_backlog().await {
            crate::metrics::get().compress.backlog.set(n);
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
