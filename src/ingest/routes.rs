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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;
    use crate::dicom::{SeriesAttributes, StudyAttributes};
    use crate::model::{ObjectKey, Origin, Sha256, TransferSyntax, Uid};

    fn record(modality: &str, kind: OriginKind, who: &str) -> InstanceRecord {
        let uid = |s: &str| Uid::parse(s).unwrap();
        let digest = Sha256::of(b"x");
        InstanceRecord {
            study: StudyAttributes::new(uid("1.2")),
            series: SeriesAttributes {
                modality: Some(modality.into()),
                ..SeriesAttributes::new(uid("1.2.3"))
            },
            sop_instance_uid: uid("1.2.3.4"),
            sop_class_uid: uid("1.2.840.10008.5.1.4.1.1.2"),
            instance_number: None,
            transfer_syntax: TransferSyntax::explicit_vr_le(),
            number_of_frames: 1,
            rows: None,
            columns: None,
            object_key: ObjectKey::new(&uid("1.2"), &digest),
            size: 1,
            part10_prefix: 0,
            sha256: digest,
            attrs_json: "{}".into(),
            metadata_json: "{}".into(),
            frame_table: None,
            origin: Origin::new(kind, who, None),
            stored_at: 0,
            forward_to: Vec::new(),
        }
    }

    fn rule(destination: &str) -> ForwardRule {
        ForwardRule {
            destination: destination.into(),
            modality: None,
            calling_ae: None,
            source: None,
            sop_class: None,
            deidentify: None,
            deidentify_options: Vec::new(),
        }
    }

    #[test]
    fn every_filter_must_match_and_each_destination_comes_once() {
        let routes = Routes::new(vec![
            rule("all"),
            ForwardRule {
                modality: Some("ct".into()),
                source: Some(Source::Dimse),
                ..rule("ct-from-modalities")
            },
            ForwardRule {
                calling_ae: Some(AeTitle::parse("SCANNER1").unwrap()),
                ..rule("scanner1")
            },
            ForwardRule {
                sop_class: Some("1.2.840.10008.5.1.4.1.1.4".into()),
                ..rule("mr-class")
            },
            rule("all"),
        ]);
        let ct_dimse = record("CT", OriginKind::CStore, "SCANNER1");
        assert_eq!(
            routes.destinations(&ct_dimse),
            ["all", "ct-from-modalities", "scanner1"]
        );
        let ct_stow = record("CT", OriginKind::Stow, "SCANNER1");
        assert_eq!(routes.destinations(&ct_stow), ["all"]);
        let mr_dimse = record("MR", OriginKind::CStore, "OTHER");
        assert_eq!(routes.destinations(&mr_dimse), ["all"]);
        assert!(Routes::default().destinations(&ct_dimse).is_empty());
    }
}
