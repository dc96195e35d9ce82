//! Compression at rest: after an instance was acknowledged as received, byte-identical,
//! it may be re-encoded losslessly (JPEG-LS) in the background — never as part of an
//! acknowledgement. For each candidate: read the object, re-encode it and prove it exact
//! ([`encode`]), record the intent, write the new object durably, swap the index row to it
//! (keeping the SHA-256 of the bytes as received), delete the original, drop the intent.
//! Object first, index second, as at ingest: a crash anywhere leaves the instance with one
//! good object, and [`recover`] deletes whatever a crash left over.

pub mod encode;

use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::CompressionConfig;
use crate::index::compress::{Candidate, CompressState, Replacement};
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

/// Re-encode one instance in `to` (in a dry run: only encode and verify).
pub async fn compress_one(
    ingest: &Ingest,
    config: &CompressionConfig,
    to: &TransferSyntax,
    c: &Candidate,
    dry_run: bool,
) -> Outcome {
    let skip = |reason: String| Outcome::Skipped { reason };
    if !ruled_in(config, c) {
        return skip("not taken by compression.modalities / sop_classes".into());
    }
    if c.size > config.max_object_bytes() {
        return skip(format!("larger than {} bytes", config.max_object_bytes()));
    }
    let target = to.clone();
    let encoded = ingest
        .store()
        .with_local_file(&c.object_key, move |path| encode::encode(path, &target))
        .await;
    let bytes = match encoded {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(NotEncoded::Skip(reason))) => return skip(reason),
        Ok(Err(NotEncoded::Fail(reason))) => return Outcome::Failed { reason },
        Err(e) => {
            return Outcome::Failed {
                reason: format!("reading the object: {e}"),
            }
        }
    };
    let (before, after) = (c.size, bytes.len() as u64);
    if after >= before {
        return skip(format!(
            "no smaller re-encoded ({after} bytes for {before})"
        ));
    }
    if dry_run {
        return Outcome::Done { before, after };
    }
    match replace(ingest, c, bytes).await {
        Ok(true) => Outcome::Done { before, after },
        Ok(false) => Outcome::Lost,
        Err(reason) => Outcome::Failed { reason },
    }
}

/// Write the re-encoded object and swap the instance to it; false when the instance
/// changed meanwhile (the new object is then deleted again).
async fn replace(ingest: &Ingest, c: &Candidate, bytes: Vec<u8>) -> Result<bool, String> {
    let (store, index) = (ingest.store(), ingest.index());
    let sha256 = Sha256::of(&bytes);
    let key = ObjectKey::new(&c.study_uid, &sha256);
    let header = {
        let len = bytes.len() as u64;
        crate::dicom::parse_header(std::io::Cursor::new(&bytes[..]), len)
            .map_err(|e| format!("the re-encoded object: {e}"))?
    };
    let new = Replacement {
        object_key: key.clone(),
        sha256,
        size: bytes.len() as u64,
        transfer_syntax: header.transfer_syntax,
        part10_prefix: header.part10_prefix,
        frame_table: header.frame_table,
        attrs_json: header.attrs_json,
        metadata_json: header.metadata_json,
    };
    let e = |what: &'static str| move |err: &dyn std::fmt::Display| format!("{what}: {err}");
    index
        .add_compress_intent(&key, &c.sop_instance_uid, &c.object_key)
        .await
        .map_err(|x| e("recording the intent")(&x))?;
    let mut spool = crate::storage::Spool::create(store.spool_dir(), bytes.len() as u64 + 1)
        .map_err(|x| e("spooling")(&x))?;
    spool.write(&bytes).await.map_err(|x| e("spooling")(&x))?;
    let spooled = spool.finish().await.map_err(|x| e("spooling")(&x))?;
    store
        .put(&key, spooled)
        .await
        .map_err(|x| e("writing the object")(&x))?;
    let swapped = index
        .swap_compressed(&c.sop_instance_uid, &c.object_key, &new)
        .await
        .map_err(|x| e("swapping the index row")(&x))?;
    // The object no longer used goes: the original once swapped, else the new one —
    // unless another process re-encoded the same instance to the same bytes (the same
    // key) and swapped first: then the new key is the live object.
    let live = if swapped {
        None
    } else {
        index
            .locate_instance(&c.sop_instance_uid)
            .await
            .map_err(|x| e("reading the index row")(&x))?
            .map(|loc| loc.object_key)
    };
    if live.as_ref() == Some(&key) {
        return Ok(false);
    }
    let gone = if swapped { &c.object_key } else { &key };
    if let Err(err) = store.delete(gone).await {
        tracing::warn!(key = %gone, error = %err, "left for recovery to delete");
        return Ok(swapped);
    }
    if let Err(err) = index.drop_compress_intent(&key).await {
        tracing::warn!(key = %key, error = %err, "compression intent left for recovery");
    }
    Ok(swapped)
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
        for c in &batch {
            let outcome = compress_one(ingest, config, &to, c, dry_run).await;
            record(ingest, c, &outcome, dry_run).await;
            summary.add(&outcome);
            each(c, &outcome);
        }
        // A dry run changes no state: page on; otherwise the done ones are no candidates.
        if dry_run {
            offset += batch.len();
        }
    }
}

async fn record(ingest: &Ingest, c: &Candidate, outcome: &Outcome, dry_run: bool) {
    let metrics = &crate::metrics::get().compress;
    let (state, label) = match outcome {
        Outcome::Done { before, after } => {
            metrics.bytes.with_label_values(&["before"]).inc_by(*before);
            metrics.bytes.with_label_values(&["after"]).inc_by(*after);
            (None, "done")
        }
        Outcome::Skipped { .. } => (Some(CompressState::Skipped), "skipped"),
        Outcome::Failed { reason } => {
            tracing::warn!(sop = %c.sop_instance_uid, reason, "compression failed; the original is kept");
            (Some(CompressState::Failed), "failed")
        }
        Outcome::Lost => (None, "lost"),
    };
    if dry_run {
        return;
    }
    metrics.objects.with_label_values(&[label]).inc();
    if let Some(state) = state {
        if let Err(e) = ingest
            .index()
            .set_compress_state(&c.sop_instance_uid, state)
            .await
        {
            tracing::warn!(error = %e, "compression state not recorded");
        }
    }
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
