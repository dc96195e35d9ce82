//! A DIMSE destination: each batch goes over one association, one C-STORE after the other,
//! each instance in its stored transfer syntax when the peer accepted it, otherwise in an
//! uncompressed one (`dimse::push`).

use std::sync::Arc;

use super::{Batch, Outcome, Payload, Sent};
use crate::config::{Destination, ForwardDestination};
use crate::context::Context;
use crate::dimse::push::{self, Pushed};
use crate::dimse::{commit_scu, ConnectError};
use crate::index::read::InstanceLocation;
use crate::model::clock::now_millis;
use crate::model::AeTitle;

pub struct Link {
    peer: Destination,
    calling: AeTitle,
    payload: Payload,
    /// Ask the peer to commit what it stored, and wait this long for its report.
    commitment: Option<std::time::Duration>,
    ctx: Arc<Context>,
    /// Who holds the claims (the commitment state is recorded under them).
    owner: String,
}

impl Link {
    pub fn new(
        ctx: &Arc<Context>,
        dest: &ForwardDestination,
        payload: Payload,
        owner: &str,
    ) -> Result<Self, String> {
        Ok(Link {
            peer: dest
                .peer()
                .ok_or("a dimse destination needs ae, host and port")?,
            calling: dest
                .calling_ae
                .clone()
                .unwrap_or_else(|| ctx.config.dimse.ae_title.clone()),
            payload,
            commitment: dest
                .commitment
                .then(|| std::time::Duration::from_secs(dest.commitment_timeout_secs.max(1))),
            ctx: ctx.clone(),
            owner: owner.to_owned(),
        })
    }

    pub async fn send(&self, batch: &Batch) -> Sent {
        let instances: Vec<InstanceLocation> = batch.iter().map(|(_, l)| l.clone()).collect();
        let mut proposals = push::proposals(&instances);
        if self.commitment.is_some() {
            proposals.truncate(127);
            proposals.push(commit_scu::proposal());
        }
        let peer = match crate::dimse::connect(&self.peer, &self.calling, &proposals, &[]).await {
            Ok(peer) => peer,
            // The peer takes none of the batch's classes: each instance is refused as it
            // would be on an association that carried others.
            Err(ConnectError::NoContext(_)) => {
                return Sent::Each(instances.iter().map(not_accepted).collect());
            }
            Err(ConnectError::Failed(why)) => return Sent::Unreachable(why),
        };
        let mut broken: Option<String> = None;
        // With commitment: the instances the peer stored (index in the batch, UID as sent).
        let mut sent: Vec<(usize, String)> = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for (_, loc) in batch {
            if let Some(why) = &broken {
                outcomes.push(Outcome::Untried(why.clone()));
                continue;
            }
            let Some(context) = push::context_for(&peer.contexts, loc) else {
                outcomes.push(not_accepted(loc));
                continue;
            };
            let (data, instance) = match self.payload.data_set(loc, &context.transfer_syntax).await
            {
                Ok(d) => d,
                Err(e) => {
                    outcomes.push(Outcome::Retry(format!("reading the object: {e}")));
                    continue;
                }
            };
            let uids = (loc.sop_class_uid.as_str(), instance.as_str());
            let pushed = push::send(&peer.writer, context, uids, data, None).await;
            if let Pushed::Broken(why) = &pushed {
                broken = Some(format!("the association broke: {why}"));
            }
            let stored = matches!(pushed, Pushed::Stored | Pushed::Warning(_));
            if stored && self.commitment.is_some() {
                sent.push((outcomes.len(), instance));
            }
            outcomes.push(outcome(pushed));
        }
        if self.commitment.is_some() && !sent.is_empty() {
            self.commit(&peer, batch, &sent, &mut outcomes).await;
        }
        peer.release().await;
        Sent::Each(outcomes)
    }

    /// Ask the peer to commit the instances it stored (`sent`: index in the batch, UID as
    /// sent). They are recorded as awaiting its report first — the report may come before
    /// the request is answered — and put back when the peer will not take the request.
    async fn commit(
        &self,
        peer: &crate::dimse::Peer,
        batch: &Batch,
        sent: &[(usize, String)],
        outcomes: &mut [Outcome],
    ) {
        let transaction = crate::model::Uid::generate().to_string();
        let wait = self.commitment.unwrap_or_default().as_millis() as i64;
        let jobs: Vec<(i64, String)> = sent
            .iter()
            .map(|(i, uid)| (batch[*i].0.id, uid.clone()))
            .collect();
        let index = self.ctx.index();
        let recorded = index
            .forward_committing(&jobs, &self.owner, &transaction, now_millis() + wait)
            .await;
        let asked = match recorded {
            Ok(()) => {
                let references: Vec<(&str, &str)> = sent
                    .iter()
                    .map(|(i, uid)| (batch[*i].1.sop_class_uid.as_str(), uid.as_str()))
                    .collect();
                commit_scu::request(&peer.writer, &peer.contexts, &transaction, &references).await
            }
            Err(e) => Err(format!("recording the commitment request: {e}")),
        };
        if let Err(why) = &asked {
            let ids: Vec<i64> = jobs.iter().map(|j| j.0).collect();
            if let Err(e) = index
                .forward_commit_undo(&ids, &self.owner, &transaction)
                .await
            {
                tracing::warn!(error = %e, "commitment request not undone; its deadline will send them again");
            }
            tracing::info!(error = %why, "storage commitment not requested");
        }
        for (i, _) in sent {
            outcomes[*i] = match &asked {
                Ok(()) => Outcome::Committing,
                Err(why) => Outcome::Retry(why.clone()),
            };
        }
    }
}

/// An instance whose class the peer did not accept in any transfer syntax we offered.
fn not_accepted(loc: &InstanceLocation) -> Outcome {
    Outcome::Failed(format!(
        "the peer accepts SOP class {} in neither {} nor an uncompressed transfer syntax",
        loc.sop_class_uid, loc.transfer_syntax
    ))
}

fn outcome(pushed: Pushed) -> Outcome {
    match pushed {
        Pushed::Stored | Pushed::Warning(_) => Outcome::Delivered,
        Pushed::Refused(s) if super::permanent(s) => {
            Outcome::Failed(format!("refused by the peer with status {s}"))
        }
        Pushed::Refused(s) => Outcome::Retry(format!("status {s}")),
        Pushed::NoContext => Outcome::Failed("no accepted presentation context".into()),
        Pushed::Unreadable(e) => Outcome::Retry(format!("reading the object: {e}")),
        Pushed::Broken(e) => Outcome::Retry(e),
    }
}
