//! Local cache mode: deleting studies that have reached every destination their forwarding
//! rules send them to (`[retention]`). A plan lists the studies to go and why — unused for
//! `delete_after_forwarded`, or least recently used while the stored bytes exceed
//! `max_bytes` — and only fully delivered studies are ever in it; carrying it out deletes
//! each through the index's delete (change feed entries, then the objects, as an admin
//! delete) after checking again, in the same transaction, that it still qualifies, and
//! records each in the audit trail. `pacs-lite retention --dry-run` prints the plan.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::index::admin::AuditEvent;
use crate::index::retention::Delivered;
use crate::index::IndexError;
use crate::ingest::Ingest;
use crate::model::clock::now_millis;

/// Why a study is in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Unused for `delete_after_forwarded`.
    Unused,
    /// The archive holds more than `max_bytes`.
    OverMaxBytes,
}

/// What would go, and the stored bytes before and after.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Plan {
    pub studies: Vec<(Delivered, Reason)>,
    pub stored_bytes: i64,
    pub bytes_after: i64,
}

/// The studies to delete now under `config`.
pub async fn plan(ingest: &Ingest, config: &RetentionConfig) -> Result<Plan, IndexError> {
    let index = ingest.index();
    let delivered = index.delivered_studies().await?;
    let stored_bytes = index.stored_bytes().await?;
    Ok(choose(delivered, stored_bytes, config, now_millis()))
}

/// The choice itself: `delivered` comes least recently used first.
fn choose(delivered: Vec<Delivered>, stored: i64, config: &RetentionConfig, now: i64) -> Plan {
    let mut plan = Plan {
        stored_bytes: stored,
        bytes_after: stored,
        ..Plan::default()
    };
    let mut rest = Vec::new();
    for study in delivered {
        let unused_for = now - study.last_used_at;
        let expired = config
            .delete_after_forwarded
            .is_some_and(|secs| unused_for >= secs as i64 * 1000);
        if expired {
            plan.bytes_after -= study.bytes;
            plan.studies.push((study, Reason::Unused));
        } else {
            rest.push(study);
        }
    }
    if let Some(max) = config.max_bytes {
        for study in rest {
            if plan.bytes_after <= max as i64 {
                break;
            }
            plan.bytes_after -= study.bytes;
            plan.studies.push((study, Reason::OverMaxBytes));
        }
    }
    plan
}

/// Delete what `plan` lists (each only if it still qualifies); the bytes freed.
pub async fn apply(ingest: &Ingest, plan: &Plan) -> Result<u64, IndexError> {
    let mut freed = 0u64;
    for (study, reason) in &plan.studies {
        let deleted = ingest
            .index()
            .delete_delivered_study(&study.study_uid)
            .await?;
        if deleted.is_empty() {
            continue;
        }
        ingest.store().delete_deleted(&deleted).await;
        freed += study.bytes.max(0) as u64;
        let why = match reason {
            Reason::Unused => {
                "delivered everywhere and unused for retention.delete_after_forwarded"
            }
            Reason::OverMaxBytes => {
                "delivered everywhere; the archive was over retention.max_bytes"
            }
        };
        let event = AuditEvent::new("retention", "retention", None, "delete")
            .study(study.study_uid.as_str())
            .detail(format!("{} instance(s) deleted: {why}", deleted.len()));
        ingest.index().audit(event);
        tracing::info!(study = %study.study_uid, instances = deleted.len(), bytes = study.bytes,
            reason = ?reason, "study deleted by retention");
    }
    Ok(freed)
}

/// Run retention every `interval_secs` until `cancel`.
pub async fn run(ingest: Ingest, config: RetentionConfig, cancel: CancellationToken) {
    let every = Duration::from_secs(config.interval_secs.max(1));
    loop {
        match plan(&ingest, &config).await {
            Ok(p) if p.studies.is_empty() => {}
            Ok(p) => match apply(&ingest, &p).await {
                Ok(freed) => tracing::info!(studies = p.studies.len(), freed, "retention ran"),
                Err(e) => tracing::warn!(error = %e, "retention stopped early"),
            },
            Err(e) => tracing::warn!(error = %e, "retention could not plan"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Uid;

    fn study(uid: &str, bytes: i64, last_used_at: i64) -> Delivered {
        Delivered {
            study_uid: Uid::parse(uid).unwrap(),
            instances: 1,
            bytes,
            last_used_at,
        }
    }

    #[test]
    fn unused_first_then_least_recently_used_down_to_max_bytes() {
        let day = 86_400_000;
        let now = 100 * day;
        let delivered = vec![
            study("1.1", 10, now - 40 * day),
            study("1.2", 20, now - 5 * day),
            study("1.3", 30, now - day),
        ];
        let config = RetentionConfig {
            delete_after_forwarded: Some(30 * 86_400),
            max_bytes: Some(100),
            interval_secs: 1,
        };
        // 130 stored, of which 60 delivered: the unused one goes, then the oldest until
        // the archive is at most 100 (undelivered bytes never count as deletable).
        let plan = choose(delivered.clone(), 130, &config, now);
        let chosen: Vec<(&str, Reason)> = plan
            .studies
            .iter()
            .map(|(s, r)| (s.study_uid.as_str(), *r))
            .collect();
        assert_eq!(
            chosen,
            [("1.1", Reason::Unused), ("1.2", Reason::OverMaxBytes)]
        );
        assert_eq!(plan.bytes_after, 100);
        // Under the cap and nothing unused: nothing goes.
        let lenient = RetentionConfig {
            max_bytes: Some(1000),
            delete_after_forwarded: Some(60 * 86_400),
            ..config
        };
        assert!(choose(delivered, 130, &lenient, now).studies.is_empty());
    }
}
