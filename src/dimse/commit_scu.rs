//! Storage Commitment Push Model (PS3.4 Annex J), SCU role: forwarding asks the peer to
//! commit the instances it has just sent (an N-ACTION on the association that carried
//! them), and the peer's answer comes back as an N-EVENT-REPORT — on a new association to
//! our listener, as most archives send it (we accept the peer's SCP role for it), and is
//! recorded against the outbox's jobs by its transaction UID.

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::command::{self, field, Command};
use super::commit::{item, read_information, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE};
use super::link::{DataSet, Writer};
use super::scu::Proposal;
use super::status::Status;
use super::PresentationContext;
use crate::context::Context;
use crate::dicom::element_text as text;
use crate::model::TransferSyntax;

/// What an N-EVENT-REPORT says about a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub transaction_uid: String,
    /// SOP Instance UIDs the peer commits to keep.
    pub committed: Vec<String>,
    /// SOP Instance UIDs it does not, with the reason.
    pub failed: Vec<(String, Option<Status>)>,
}

/// The presentation context to propose for storage commitment.
pub fn proposal() -> Proposal {
    Proposal {
        abstract_syntax: STORAGE_COMMITMENT.to_owned(),
        transfer_syntaxes: vec![
            TransferSyntax::EXPLICIT_VR_LE.to_owned(),
            TransferSyntax::IMPLICIT_VR_LE.to_owned(),
        ],
    }
}

/// Ask the peer to commit `references` (class, instance) under `transaction_uid`.
pub async fn request(
    writer: &Writer,
    contexts: &[PresentationContext],
    transaction_uid: &str,
    references: &[(&str, &str)],
) -> Result<(), String> {
    let context = contexts
        .iter()
        .find(|c| c.abstract_syntax == STORAGE_COMMITMENT)
        .ok_or("the peer did not accept storage commitment")?;
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::TRANSACTION_UID,
        VR::UI,
        PrimitiveValue::from(transaction_uid),
    ));
    let items: Vec<InMemDicomObject> = references
        .iter()
        .map(|(class, instance)| item(class, instance, None))
        .collect();
    obj.put(DataElement::new(
        tags::REFERENCED_SOP_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(items, Length::UNDEFINED),
    ));
    let ts = TransferSyntaxRegistry
        .get(context.transfer_syntax.as_str())
        .ok_or("no transfer syntax for the request")?;
    let mut data = Vec::new();
    obj.write_dataset_with_ts(&mut data, ts)
        .map_err(|e| e.to_string())?;
    let id = writer.next_message_id();
    let rq = command::action_request(id, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1);
    match writer
        .request(context.id, id, &rq, Some(DataSet::Bytes(data)))
        .await
    {
        Ok(rsp) if rsp.field == field::N_ACTION_RSP => match rsp.status {
            Some(s) if s.is_success() || s.is_warning() => Ok(()),
            s => Err(format!(
                "the peer refused the storage commitment request: {}",
                s.map_or("no status".into(), |s| s.to_string())
            )),
        },
        Ok(_) => Err("an unexpected answer to the storage commitment request".into()),
        Err(e) => Err(format!("storage commitment request: {e}")),
    }
}

/// Read an N-EVENT-REPORT-RQ of storage commitment and its event information; the
/// N-EVENT-REPORT-RSP failure status otherwise.
pub fn read_report(rq: &Command, data: &[u8], ts: &str) -> Result<Report, Status> {
    if rq.affected_sop_class.as_deref() != Some(STORAGE_COMMITMENT) {
        return Err(Status::NO_SUCH_SOP_CLASS);
    }
    if !matches!(rq.event_type, Some(1 | 2)) {
        return Err(Status::NO_SUCH_EVENT_TYPE);
    }
    let obj = read_information(data, ts, "event information")?;
    let transaction_uid = text(&obj, tags::TRANSACTION_UID).ok_or(Status::MISSING_ATTRIBUTE)?;
    let sequence = |tag| {
        obj.get(tag)
            .and_then(|e| e.items())
            .map(|items| items.to_vec())
            .unwrap_or_default()
    };
    let committed = sequence(tags::REFERENCED_SOP_SEQUENCE)
        .iter()
        .filter_map(|i| text(i, tags::REFERENCED_SOP_INSTANCE_UID))
        .collect();
    let failed = sequence(tags::FAILED_SOP_SEQUENCE)
        .iter()
        .filter_map(|i| {
            let reason = i
                .get(tags::FAILURE_REASON)
                .and_then(|e| e.to_int::<u16>().ok())
                .map(Status);
            Some((text(i, tags::REFERENCED_SOP_INSTANCE_UID)?, reason))
        })
        .collect();
    Ok(Report {
        transaction_uid,
        committed,
        failed,
    })
}

/// Record a report against the forwarding jobs it answers; the status to answer with.
pub async fn on_report(ctx: &Context, rq: &Command, data: &[u8], ts: &str) -> Status {
    let report = match read_report(rq, data, ts) {
        Ok(r) => r,
        Err(status) => return status,
    };
    let failed: Vec<(String, String)> = report
        .failed
        .iter()
        .map(|(uid, reason)| {
            let why = match reason {
                Some(r) => format!("the peer did not commit it (failure reason {r})"),
                None => "the peer did not commit it".to_owned(),
            };
            (uid.clone(), why)
        })
        .collect();
    match ctx
        .index()
        .forward_commitment(&report.transaction_uid, &report.committed, &failed)
        .await
    {
        Ok((delivered, again)) => {
            tracing::info!(transaction = %report.transaction_uid, committed = report.committed.len(),
                failed = failed.len(), delivered = delivered.len(), again, "storage commitment report received");
            record_deliveries(ctx, &delivered);
            Status::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "storage commitment report not recorded");
            Status::PROCESSING_FAILURE
        }
    }
}

/// Instances the report confirmed, (destination, study) each: counted as delivered, and
/// in the audit trail per destination and study (as the forwarding worker does for
/// deliveries without commitment).
fn record_deliveries(ctx: &Context, delivered: &[(String, crate::model::Uid)]) {
    let mut groups: Vec<(&str, &crate::model::Uid, usize)> = Vec::new();
    for (destination, study) in delivered {
        match groups
            .iter_mut()
            .find(|(d, s, _)| d == destination && *s == study)
        {
            Some(g) => g.2 += 1,
            None => groups.push((destination, study, 1)),
        }
    }
    let sent = &ctx.metrics().forward.sent;
    for (destination, study, n) in groups {
        sent.with_label_values(&[destination, "delivered"])
            .inc_by(n as u64);
        let event = crate::index::admin::AuditEvent::new(destination, "forward", None, "forward")
            .study(study.as_str())
            .detail(format!("{n} instance(s) delivered and committed"));
        ctx.index().audit(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_read() {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::TRANSACTION_UID,
            VR::UI,
            PrimitiveValue::from("1.2.3"),
        ));
        obj.put(DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(
                vec![item("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", None)],
                Length::UNDEFINED,
            ),
        ));
        obj.put(DataElement::new(
            tags::FAILED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(
                vec![item(
                    "1.2.840.10008.5.1.4.1.1.2",
                    "1.2.3.5",
                    Some(Status(0x0112)),
                )],
                Length::UNDEFINED,
            ),
        ));
        let ts = TransferSyntax::EXPLICIT_VR_LE;
        let mut data = Vec::new();
        obj.write_dataset_with_ts(&mut data, TransferSyntaxRegistry.get(ts).unwrap())
            .unwrap();
        let rq = Command {
            field: field::N_EVENT_REPORT_RQ,
            affected_sop_class: Some(STORAGE_COMMITMENT.into()),
            event_type: Some(2),
            has_data_set: true,
            ..Default::default()
        };
        let report = read_report(&rq, &data, ts).unwrap();
        assert_eq!(report.transaction_uid, "1.2.3");
        assert_eq!(report.committed, ["1.2.3.4"]);
        assert_eq!(
            report.failed,
            [("1.2.3.5".to_owned(), Some(Status(0x0112)))]
        );
        let wrong = Command {
            event_type: Some(9),
            ..rq
        };
        assert_eq!(
            read_report(&wrong, &data, ts),
            Err(Status::NO_SUCH_EVENT_TYPE)
        );
    }
}
