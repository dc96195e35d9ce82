//! Store-and-forward delivery. Each `[[forward.destinations]]` entry gets
//! `max_associations` workers; each claims due jobs from the outbox (`index::forward`,
//! written with each instance's row), sends the batch over one association (`dimse.rs`,
//! C-STORE through `dimse::push`) or in STOW-RS requests (`web.rs`), and records each
//! instance's outcome before the next claim:
//!
//! - stored (with a warning or not, and confirmed when the destination asks for storage
//!   commitment): delivered;
//! - refused in a way that will not change (DIMSE 0xA9xx, 0xCxxx, SOP class not supported,
//!   no acceptable presentation context; HTTP 4xx other than 401, 403, 404, 408 and 429):
//!   failed, with the peer's reason;
//! - anything else (out of resources, a broken association, a 5xx, an unreadable object):
//!   tried again later, after a wait that doubles per attempt up to a cap, with jitter —
//!   until `max_attempts`, when set.
//!
//! A destination that cannot be reached (or refuses our credentials) gives its batch back
//! untried and its worker pauses for the same growing wait (a circuit breaker), without
//! holding up the other destinations. Jobs are claimed under a lease (`forward.lease_secs`),
//! renewed while a batch is being sent: another process on the same database never takes
//! them while it runs, and takes them over when it expires. Delivery is at least once
//! toward an upstream that stores an instance once per SOP Instance UID.
//!
//! Rules may de-identify what a destination receives (`payload.rs`); the stored object
//! never changes.

mod dimse;
mod payload;
mod throttle;
mod web;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::config::{DestinationKind, ForwardDestination};
use crate::context::Context;
use crate::dimse::Status;
use crate::index::admin::AuditEvent;
use crate::index::forward::ForwardJob;
use crate::index::read::InstanceLocation;
use crate::model::clock::now_millis;

pub use payload::Payload;
pub use throttle::Throttle;

/// How often an idle worker looks for new jobs.
const POLL: Duration = Duration::from_millis(100);
/// How often the backlog gauges are brought up to date.
const GAUGE_EVERY: Duration = Duration::from_secs(2);

/// A claimed job with the instance it sends.
pub(crate) type Batch = [(ForwardJob, InstanceLocation)];

/// How one instance's sending ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The destination has it.
    Delivered,
    /// The destination has it and was asked to commit it (recorded by the link): delivered
    /// once the peer's report confirms it.
    Committing,
    /// Refused in a way that will not change.
    Failed(String),
    /// Worth another attempt later; counts as an attempt.
    Retry(String),
    /// Not sent (the association broke before its turn): given back without counting.
    Untried(String),
}

/// What sending a batch came to.
pub(crate) enum Sent {
    /// One outcome per job, in the batch's order.
    Each(Vec<Outcome>),
    /// Nothing was sent: the destination cannot be reached or refuses us.
    Unreachable(String),
}

/// Start the workers of every destination; they stop when `cancel` is.
pub fn spawn(ctx: &Arc<Context>, cancel: &CancellationToken) {
    let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4());
    for dest in &ctx.config.forward.destinations {
        let payload = Payload::new(ctx, dest);
        for _ in 0..dest.max_associations {
            let link = match dest.kind {
                DestinationKind::Dimse => {
                    dimse::Link::new(ctx, dest, payload.clone(), &owner).map(Link::Dimse)
                }
                DestinationKind::Dicomweb => web::Link::new(dest, payload.clone()).map(Link::Web),
            };
            let link = match link {
                Ok(link) => link,
                Err(e) => {
                    tracing::error!(destination = %dest.name, error = %e, "forwarding destination unusable");
                    break;
                }
            };
            let worker = Worker {
                ctx: ctx.clone(),
                dest: dest.clone(),
                link,
                owner: owner.clone(),
                lease_ms: ctx.config.forward.lease_secs.max(1) as i64 * 1000,
                outages: 0,
            };
            tokio::spawn(worker.run(cancel.clone()));
        }
    }
}

/// How a destination is reached.
enum Link {
    Dimse(dimse::Link),
    Web(web::Link),
}

impl Link {
    async fn send(&self, batch: &Batch) -> Sent {
        match self {
            Link::Dimse(l) => l.send(batch).await,
            Link::Web(l) => l.send(batch).await,
        }
    }
}

struct Worker {
    ctx: Arc<Context>,
    dest: ForwardDestination,
    link: Link,
    owner: String,
    /// How long a claim lasts unrenewed; claims are renewed when half of it has passed.
    lease_ms: i64,
    /// Consecutive batches that could not reach the destination.
    outages: u32,
}

impl Worker {
    async fn run(mut self, cancel: CancellationToken) {
        tracing::info!(destination = %self.dest.name, address = %self.dest.address(), "forwarding worker started");
        let mut gauged = std::time::Instant::now() - GAUGE_EVERY;
        loop {
            let claimed = match self.claim_size().await {
                // Nothing due: no claim to make.
                0 => Ok(Vec::new()),
                limit => {
                    let index = self.ctx.index();
                    index
                        .claim_forward_jobs(&self.dest.name, &self.owner, limit, self.lease_ms)
                        .await
                }
            };
            let pause = match claimed {
                Ok(jobs) if jobs.is_empty() => POLL,
                Ok(jobs) => self.deliver(jobs).await,
                Err(e) => {
                    tracing::warn!(destination = %self.dest.name, error = %e, "cannot claim forwarding jobs");
                    POLL * 4
                }
            };
            if gauged.elapsed() >= GAUGE_EVERY {
                self.expire_commitments().await;
                self.gauge().await;
                gauged = std::time::Instant::now();
            }
            let idle = pause == POLL;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
                _ = self.ctx.index().outbox_changed(), if idle => {}
            }
        }
    }

    /// How many jobs to claim: `batch`, or with several associations and fewer jobs due
    /// than they could take, an even share (so that a small study still spreads over them:
    /// on a thin link each association's round trips are what limit it); 0 when nothing is
    /// due (the count then stands in for the claim).
    async fn claim_size(&self) -> i64 {
        let batch = self.dest.batch.max(1) as i64;
        let workers = self.dest.max_associations.max(1) as i64;
        if workers == 1 {
            return batch;
        }
        match self.ctx.index().due_forward_jobs(&self.dest.name).await {
            // Enough for every association: whole batches; fewer: an even share each.
            Ok(due) if due >= batch * workers => batch,
            Ok(due) => (due + workers - 1) / workers,
            Err(_) => batch,
        }
    }

    /// Send one claimed batch, keeping its leases while it goes; the pause before the
    /// next claim.
    async fn deliver(&mut self, jobs: Vec<ForwardJob>) -> Duration {
        let Some(batch) = self.locate(jobs).await else {
            return Duration::ZERO;
        };
        let sent = {
            let sending = self.link.send(&batch);
            tokio::pin!(sending);
            let every = Duration::from_millis((self.lease_ms / 2).max(1) as u64);
            let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    sent = &mut sending => break sent,
                    _ = renew.tick() => self.renew().await,
                }
            }
        };
        let outcomes = match sent {
            Sent::Unreachable(why) => return self.outage(&batch, &why).await,
            Sent::Each(outcomes) => outcomes,
        };
        self.outages = 0;
        let mut delivered: Vec<&ForwardJob> = Vec::new();
        for ((job, loc), outcome) in batch.iter().zip(outcomes) {
            self.count(loc, &outcome);
            match outcome {
                Outcome::Delivered => delivered.push(job),
                Outcome::Committing => {}
                Outcome::Failed(why) => self.fail(job, &why).await,
                Outcome::Retry(why) => self.retry(job, &why).await,
                Outcome::Untried(why) => self.release(job, &why, 0).await,
            }
        }
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
        if jobs.is_empty() {
            return;
        }
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
        let address = self.dest.address();
        for (study, n) in delivered {
            let event =
                AuditEvent::new(&self.dest.name, "forward", Some(address.clone()), "forward")
                    .study(study.as_str())
                    .detail(format!("{n} instance(s) delivered to {address}"));
            self.ctx.index().audit(event);
        }
    }

    /// The metrics of one instance's outcome.
    fn count(&self, loc: &InstanceLocation, outcome: &Outcome) {
        let m = &self.ctx.metrics().forward;
        let label = match outcome {
            Outcome::Delivered => "delivered",
            Outcome::Committing => "stored",
            Outcome::Failed(_) => "failed",
            Outcome::Retry(_) => "retry",
            Outcome::Untried(_) => return,
        };
        m.sent.with_label_values(&[&self.dest.name, label]).inc();
        if matches!(outcome, Outcome::Delivered | Outcome::Committing) {
            m.bytes
                .with_label_values(&[&self.dest.name])
                .inc_by(loc.size);
        }
    }

    /// The destination could not be reached: the batch goes back untried, and the worker
    /// pauses for longer each time.
    async fn outage(&mut self, batch: &Batch, why: &str) -> Duration {
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

    /// Instances whose storage commitment report is overdue go again.
    async fn expire_commitments(&self) {
        if !self.dest.commitment {
            return;
        }
        match self
            .ctx
            .index()
            .forward_commitment_expired(&self.dest.name)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(destination = %self.dest.name, instances = n,
                "no storage commitment report in time; the instances go again"),
            Err(e) => {
                tracing::warn!(destination = %self.dest.name, error = %e, "overdue commitments not checked")
            }
        }
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
        let attempts = job.attempts.saturating_add(1);
        if let Some(max) = self.dest.max_attempts {
            if attempts >= i64::from(max) {
                let why = format!("gave up after {attempts} attempts; the last: {why}");
                return self.fail(job, &why).await;
            }
        }
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
/// cannot be understood (0xCxxx), or the SOP class is not supported (0x0122). Both DIMSE
/// statuses and STOW-RS failure reasons use these codes.
pub(crate) fn permanent(s: Status) -> bool {
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
