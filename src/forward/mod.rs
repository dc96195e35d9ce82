//! Store-and-forward delivery: one worker per `[[forward.destinations]]` entry claims due
//! jobs from the outbox (`index::forward`, written with each instance's row), opens one
//! association per batch (`dimse::scu`), sends each instance with C-STORE as stored or
//! transcoded (`dimse::push`), and records each outcome before the next claim:
//!
//! - stored (or stored with a warning): delivered;
//! - refused with a status that will not change (0xA9xx, 0xCxxx, SOP class not supported,
//!   no acceptable presentation context): failed, with the peer's reason;
//! - anything else (out of resources, a broken association, an unreadable object): tried
//!   again later, after a wait that doubles per attempt up to a cap, with jitter.
//!
//! A destination that cannot be reached gives its batch back untried and pauses for the
//! same growing wait (a circuit breaker), without holding up the other destinations. Jobs
//! are claimed under a lease (`forward.lease_secs`), renewed while a batch is being sent:
//! another process on the same database never takes them while it runs, and takes them
//! over when it expires. Delivery is at least once toward an
//! upstream that stores an instance once per SOP Instance UID.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::config::ForwardDestination;
use crate::context::Context;
use crate::dimse::push::{self, Pushed};
use crate::dimse::Status;
use crate::index::admin::AuditEvent;
use crate::index::forward::ForwardJob;
use crate::index::read::InstanceLocation;
use crate::model::clock::now_millis;
use crate::model::AeTitle;

/// How often an idle worker looks for new jobs.
const POLL: Duration = Duration::from_millis(100);
/// How often the backlog gauges are brought up to date.
const GAUGE_EVERY: Duration = Duration::from_secs(2);

/// Start a worker per destination; they stop when `cancel` is.
pub fn spawn(ctx: &Arc<Context>, cancel: &CancellationToken) {
    let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4());
    for dest in &ctx.config.forward.destinations {
        let worker = Worker {
            ctx: ctx.clone(),
            calling: dest
                .calling_ae
                .clone()
                .unwrap_or_else(|| ctx.config.dimse.ae_title.clone()),
            dest: dest.clone(),
            owner: owner.clone(),
            lease_ms: ctx.config.forward.lease_secs.max(1) as i64 * 1000,
            outages: 0,
        };
        tokio::spawn(worker.run(cancel.clone()));
    }
}

struct Worker {
    ctx: Arc<Context>,
    dest: ForwardDestination,
    calling: AeTitle,
    owner: String,
    /// How long a claim lasts unrenewed; claims are renewed when half of it has passed.
    lease_ms: i64,
    /// Consecutive batches that could not reach the destination.
    outages: u32,
}

impl Worker {
    async fn run(mut self, cancel: CancellationToken) {
        tracing::info!(destination = %self.dest.name, ae = %self.dest.ae, "forwarding worker started");
        let mut gauged = std::time::Instant::now() - GAUGE_EVERY;
        loop {
            let claimed = self
                .ctx
                .index()
                .claim_forward_jobs(
                    &self.dest.name,
                    &self.owner,
                    self.dest.batch as i64,
                    self.lease_ms,
                )
                .await;
            let pause = match claimed {
                Ok(jobs) if jobs.is_empty() => POLL,
                Ok(jobs) => self.deliver(jobs).await,
                Err(e) => {
                    tracing::warn!(destination = %self.dest.name, error = %e, "cannot claim forwarding jobs");
                    POLL * 4
                }
            };
            if gauged.elapsed() >= GAUGE_EVERY {
                self.gauge().await;
                gauged = std::time::Instant::now();
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Send one claimed batch; the pause before the next claim.
    async fn deliver(&mut self, jobs: Vec<ForwardJob>) -> Duration {
        let Some(batch) = self.locate(jobs).await else {
            return Duration::ZERO;
        };
        let instances: Vec<InstanceLocation> = batch.iter().map(|(_, l)| l.clone()).collect();
        let proposals = push::proposals(&instances);
        let peer =
            match crate::dimse::connect(&self.dest.peer(), &self.calling, &proposals, &[]).await {
                Ok(peer) => peer,
                Err(e) => return self.outage(&batch, &e).await,
            };
        self.outages = 0;
        let mut broken: Option<String> = None;
        let mut renewed = std::time::Instant::now();
        let mut delivered: Vec<&ForwardJob> = Vec::new();
        for (job, loc) in &batch {
            if let Some(why) = &broken {
                self.release(job, why, 0).await;
                continue;
            }
            if renewed.elapsed().as_millis() as i64 > self.lease_ms / 2 {
                self.renew().await;
                renewed = std::time::Instant::now();
            }
            let pushed =
                push::c_store(&peer.writer, &peer.contexts, self.ctx.store(), loc, None).await;
            if let Pushed::Broken(why) = &pushed {
                broken = Some(format!("the association broke: {why}"));
            }
            if matches!(pushed, Pushed::Stored | Pushed::Warning(_)) {
                delivered.push(job);
            }
            self.settle(job, loc, pushed).await;
        }
        peer.release().await;
        self.delivered(&delivered).await;
        Duration::ZERO
    }

    /// The claimed jobs with their instances, in claim order; jobs whose instance is gone
    /// fail. `None`: nothing to send.
    async fn locate(&self, jobs: Vec<ForwardJob>) -> Option<Vec<(ForwardJob, InstanceLocation)>> {
        let uids: Vec<&crate::model::Uid> = jobs.iter().map(|j| &j.sop_instance_uid).collect();
        let mut found = match self.ctx.index().locate_instances(&uids).await {
            Ok(found) => found,
            Err(e) => {
                for job in &jobs {
                    self.retry(job, &format!("index: {e}")).await;
                }
                return None;
            }
        };
        let mut batch = Vec::with_capacity(jobs.len());
        for job in jobs {
            match found
                .iter()
                .position(|l| l.sop_instance_uid == job.sop_instance_uid)
            {
                Some(i) => batch.push((job, found.swap_remove(i))),
                None => self.fail(&job, "the instance is no longer stored").await,
            }
        }
        (!batch.is_empty()).then_some(batch)
    }

    /// Record a batch's deliveries (one statement) and audit them per study.
    async fn delivered(&self, jobs: &[&ForwardJob]) {
        let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        if let Err(e) = self.ctx.index().forward_delivered(&ids, &self.owner).await {
            tracing::error!(destination = %self.dest.name, error = %e, "deliveries not recorded; they will be sent again");
        }
        let mut per_study: Vec<(&crate::model::Uid, usize)> = Vec::new();
        for job in jobs {
            match per_study
                .iter_mut()
                .find(|(study, _)| *study == &job.study_uid)
            {
                Some((_, n)) => *n += 1,
                None => per_study.push((&job.study_uid, 1)),
            }
        }
        self.audit(&per_study);
    }

    /// The audit trail: per study, how many instances went to this destination.
    fn audit(&self, delivered: &[(&crate::model::Uid, usize)]) {
        let address = format!("{}:{}", self.dest.host, self.dest.port);
        for (study, n) in delivered {
            let event =
                AuditEvent::new(&self.dest.name, "forward", Some(address.clone()), "forward")
                    .study(study.as_str())
                    .detail(format!("{n} instance(s) delivered to {}", self.dest.ae));
            self.ctx.index().audit(event);
        }
    }

    /// Record how one C-STORE ended.
    async fn settle(&self, job: &ForwardJob, loc: &InstanceLocation, pushed: Pushed) {
        let m = self.ctx.metrics();
        let outcome = match &pushed {
            Pushed::Stored | Pushed::Warning(_) => "delivered",
            Pushed::Refused(s) if permanent(*s) => "failed",
            Pushed::NoContext => "failed",
            _ => "retry",
        };
        m.forward
            .sent
            .with_label_values(&[&self.dest.name, outcome])
            .inc();
        match pushed {
            Pushed::Stored | Pushed::Warning(_) => {
                m.forward
                    .bytes
                    .with_label_values(&[&self.dest.name])
                    .inc_by(loc.size);
                // Recorded with the rest of the batch (`delivered`).
            }
            Pushed::Refused(s) if permanent(s) => {
                self.fail(job, &format!("refused by the peer with status {s}"))
                    .await
            }
            Pushed::NoContext => {
                let why = format!(
                    "the peer accepts SOP class {} in neither {} nor an uncompressed transfer syntax",
                    loc.sop_class_uid, loc.transfer_syntax
                );
                self.fail(job, &why).await
            }
            Pushed::Refused(s) => self.retry(job, &format!("status {s}")).await,
            Pushed::Unreadable(e) => self.retry(job, &format!("reading the object: {e}")).await,
            Pushed::Broken(e) => self.retry(job, &e).await,
        }
    }

    /// The destination could not be reached: the batch goes back untried, and the worker
    /// pauses for longer each time.
    async fn outage(&mut self, batch: &[(ForwardJob, InstanceLocation)], why: &str) -> Duration {
        self.outages = self.outages.saturating_add(1);
        let wait = backoff(&self.dest, self.outages - 1);
        tracing::warn!(destination = %self.dest.name, pending = batch.len(), retry_in = ?wait, error = why,
            "forwarding destination unreachable");
        for (job, _) in batch {
            self.release(job, why, wait.as_millis() as i64).await;
        }
        wait
    }

    /// The backlog gauges: pending jobs and the oldest one's age (shared by every process
    /// on the database, so each reports the same).
    async fn gauge(&self) {
        let Ok((pending, oldest)) = self.ctx.index().forward_backlog(&self.dest.name).await else {
            return;
        };
        let f = &self.ctx.metrics().forward;
        let name = [self.dest.name.as_str()];
        f.queue_depth.with_label_values(&name).set(pending);
        let age = oldest.map_or(0, |t| (now_millis() - t).max(0) / 1000);
        f.oldest_pending_seconds.with_label_values(&name).set(age);
    }

    /// Keep the claims of a batch that takes long (a thin link).
    async fn renew(&self) {
        let index = self.ctx.index();
        if let Err(e) = index
            .renew_forward_leases(&self.dest.name, &self.owner, self.lease_ms)
            .await
        {
            tracing::warn!(destination = %self.dest.name, error = %e, "forwarding leases not renewed");
        }
    }

    async fn release(&self, job: &ForwardJob, why: &str, after_ms: i64) {
        let at = now_millis() + after_ms;
        if let Err(e) = self
            .ctx
            .index()
            .forward_later(job.id, &self.owner, at, why, false)
            .await
        {
            tracing::warn!(error = %e, "forwarding job not released; its lease will expire");
        }
    }

    async fn retry(&self, job: &ForwardJob, why: &str) {
        let wait = backoff(&self.dest, job.attempts.clamp(0, 30) as u32);
        let at = now_millis() + wait.as_millis() as i64;
        tracing::info!(destination = %self.dest.name, study = %job.study_uid, retry_in = ?wait, error = why,
            "forwarding an instance failed; it will be tried again");
        if let Err(e) = self
            .ctx
            .index()
            .forward_later(job.id, &self.owner, at, why, true)
            .await
        {
            tracing::warn!(error = %e, "forwarding retry not recorded; its lease will expire");
        }
    }

    async fn fail(&self, job: &ForwardJob, why: &str) {
        tracing::warn!(destination = %self.dest.name, study = %job.study_uid, sop = %job.sop_instance_uid,
            error = why, "forwarding refused for good");
        if let Err(e) = self
            .ctx
            .index()
            .forward_failed(job.id, &self.owner, why)
            .await
        {
            tracing::warn!(error = %e, "forwarding failure not recorded; its lease will expire");
        }
    }
}

/// A refusal the peer will repeat: the data set does not match the SOP class (0xA9xx),
/// cannot be understood (0xCxxx), or the SOP class is not supported (0x0122).
fn permanent(s: Status) -> bool {
    let code = s.0;
    (0xA900..=0xA9FF).contains(&code) || (0xC000..=0xCFFF).contains(&code) || code == 0x0122
}

/// The wait before attempt `n + 1`: doubled from `retry_initial_secs` per attempt up to
/// `retry_max_secs`, then between 75 % and 100 % of that (jitter spreads retries out).
fn backoff(dest: &ForwardDestination, n: u32) -> Duration {
    let initial = dest.retry_initial_secs.max(1) as f64;
    let full = (initial * 2f64.powi(n.min(30) as i32)).min(dest.retry_max_secs.max(1) as f64);
    let jitter = rand::thread_rng().gen_range(0.75..=1.0);
    Duration::from_secs_f64(full * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_that_will_not_change() {
        assert!(permanent(Status(0xA900)));
        assert!(permanent(Status(0xC000)));
        assert!(permanent(Status(0x0122)));
        assert!(!permanent(Status(0xA700)));
        assert!(!permanent(Status(0x0110)));
    }
}
