//! Which destinations an instance is forwarded to: the `[[forward.rules]]` it matches. The
//! answer goes into its index row's transaction as outbox jobs (see `index::forward`).

use crate::config::ForwardRule;
use crate::index::InstanceRecord;
use crate::model::{AeTitle, OriginKind};

/// The forwarding rules, checked against each instance as it is indexed.
#[derive(Debug, Clone, Default)]
pub struct Routes(Vec<ForwardRule>);

impl Routes {
    pub fn new(rules: Vec<ForwardRule>) -> Self {
        Routes(rules)
    }

    /// The destinations of the rules `r` matches, each once, in the rules' order.
    pub fn destinations(&self, r: &InstanceRecord) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for rule in self.0.iter().filter(|rule| matches(rule, r)) {
            if !out.contains(&rule.destination) {
                out.push(rule.destination.clone());
            }
        }
        out
    }
}

fn matches(rule: &ForwardRule, r: &InstanceRecord) -> bool {
    let modality = rule.modality.as_deref().is_none_or(|m| {
        r.series
            .modality
            .as_deref()
            .is_some_and(|have| have.eq_ignore_ascii_case(m))
    });
    let calling = rule.calling_ae.as_ref().is_none_or(|ae| {
        r.origin.kind == OriginKind::CStore
            && AeTitle::parse(&r.origin.who).ok().as_ref() == Some(ae)
    });
    let source = rule.source.is_none_or(|s| s.is(r.origin.kind));
    let class = rule
        .sop_class
        .as_deref()
        .is_none_or(|c| c == r.sop_class_uid.as_str());
    modality && calling && source && class
}
