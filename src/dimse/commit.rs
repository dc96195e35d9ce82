//! Storage Commitment Push Model (PS3.4 Annex J), SCP role.
//!
//! An N-ACTION request lists SOP instances; it is answered at once, then every instance is
//! looked up, read back from the object store and its SHA-256 recomputed against the one
//! recorded at ingest. The result goes out in an N-EVENT-REPORT: on the requester's
//! association while it is open, otherwise on a new association to the requester's AE title
//! as configured in `dimse.destinations` (we ask for the SCP role there).

use std::sync::Arc;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::command::{self, field, Command};
use super::link::{DataSet, Writer};
use super::scu::{self, Proposal};
use super::Services;
use crate::ingest::element_text as text;
use crate::model::ObjectKey;
use crate::model::Uid;
use crate::render::transcode::{EXPLICIT_VR_LE, IMPLICIT_VR_LE};

pub const STORAGE_COMMITMENT: &str = "1.2.840.10008.1.20.1";
pub const STORAGE_COMMITMENT_INSTANCE: &str = "1.2.840.10008.1.20.1.1";

/// Failure Reason values (PS3.4 J.3.2.1.1.2).
const PROCESSING_FAILURE: u16 = 0x0110;
const NO_SUCH_OBJECT_INSTANCE: u16 = 0x0112;
const CLASS_INSTANCE_CONFLICT: u16 = 0x0119;

/// A storage commitment request, checked.
pub struct Request {
    transaction_uid: String,
    references: Vec<(String, String)>,
}

/// Validate an N-ACTION-RQ and its action information: the request, or the N-ACTION-RSP
/// failure status.
pub fn accept(rq: &Command, data: &[u8], ts: &str) -> Result<Request, u16> {
    if rq.requested_sop_class.as_deref() != Some(STORAGE_COMMITMENT) {
        return Err(0x0118); // no such SOP class
    }
    if rq.requested_sop_instance.as_deref() != Some(STORAGE_COMMITMENT_INSTANCE) {
        return Err(0x0112); // no such SOP instance
    }
    if rq.action_type != Some(1) {
        return Err(0x0123); // no such action
    }
    crate::ingest::check_data_set(data, ts).map_err(|e| {
        tracing::info!(error = %e, "action information refused");
        0x0110u16
    })?;
    let ts = TransferSyntaxRegistry.get(ts).ok_or(0x0110u16)?;
    let obj = InMemDicomObject::read_dataset_with_ts(data, ts).map_err(|_| 0x0110u16)?;
    let transaction_uid = text(&obj, tags::TRANSACTION_UID)
        .filter(|u| Uid::parse(u).is_ok())
        .ok_or(0x0120u16)?; // missing attribute
    let items = obj
        .get(tags::REFERENCED_SOP_SEQUENCE)
        .and_then(|e| e.items())
        .ok_or(0x0120u16)?;
    let references = items
        .iter()
        .map(|item| {
            Some((
                text(item, tags::REFERENCED_SOP_CLASS_UID)?,
                text(item, tags::REFERENCED_SOP_INSTANCE_UID)?,
            ))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or(0x0121u16)?; // missing attribute value
    Ok(Request {
        transaction_uid,
        references,
    })
}

/// Check every referenced instance: (class, instance, None) when committed, or with the
/// failure reason.
async fn check(svc: &Services, request: &Request) -> Vec<(String, String, Option<u16>)> {
    let mut out = Vec::with_capacity(request.references.len());
    for (class, instance) in &request.references {
        let verdict = verify_one(svc, class, instance).await;
        if let Some(reason) = verdict {
            tracing::info!(sop = %instance, reason = format!("{reason:#06X}"), "storage commitment failed for an instance");
        }
        out.push((class.clone(), instance.clone(), verdict));
    }
    out
}

async fn verify_one(svc: &Services, class: &str, instance: &str) -> Option<u16> {
    let uid = Uid::parse(instance).ok()?;
    let loc = match svc.ingest.index().locate_instance(&uid).await {
        Ok(Some(loc)) => loc,
        Ok(None) => return Some(NO_SUCH_OBJECT_INSTANCE),
        Err(e) => {
            tracing::error!(error = %e, "storage commitment look-up failed");
            return Some(PROCESSING_FAILURE);
        }
    };
    if loc.sop_class_uid != class {
        return Some(CLASS_INSTANCE_CONFLICT);
    }
    let Some(key) = ObjectKey::parse(&loc.object_key) else {
        return Some(PROCESSING_FAILURE);
    };
    let mut stream = match svc.ingest.store().stream(&key, None).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(sop = %instance, error = %e, "committed instance unreadable");
            return Some(PROCESSING_FAILURE);
        }
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                size += c.len() as u64;
                hasher.update(&c);
            }
            Err(e) => {
                tracing::error!(sop = %instance, error = %e, "committed instance unreadable");
                return Some(PROCESSING_FAILURE);
            }
        }
    }
    let digest = hex(&hasher.finalize());
    if digest != loc.sha256 || size != loc.size {
        tracing::error!(sop = %instance, "stored object does not match its recorded SHA-256");
        return Some(PROCESSING_FAILURE);
    }
    None
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The N-EVENT-REPORT event information: Event Type ID and encoded data set.
fn event_information(
    request: &Request,
    results: &[(String, String, Option<u16>)],
    ae_title: &str,
    ts: &str,
) -> Option<(u16, Vec<u8>)> {
    let item = |class: &str, instance: &str, reason: Option<u16>| {
        let mut o = InMemDicomObject::new_empty();
        o.put(DataElement::new(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(class),
        ));
        o.put(DataElement::new(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(instance),
        ));
        if let Some(r) = reason {
            o.put(DataElement::new(
                tags::FAILURE_REASON,
                VR::US,
                PrimitiveValue::from(r),
            ));
        }
        o
    };
    let committed: Vec<_> = results
        .iter()
        .filter(|r| r.2.is_none())
        .map(|(c, i, _)| item(c, i, None))
        .collect();
    let failed: Vec<_> = results
        .iter()
        .filter(|r| r.2.is_some())
        .map(|(c, i, r)| item(c, i, *r))
        .collect();
    let event_type = if failed.is_empty() { 1 } else { 2 };
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::TRANSACTION_UID,
        VR::UI,
        PrimitiveValue::from(request.transaction_uid.as_str()),
    ));
    obj.put(DataElement::new(
        tags::RETRIEVE_AE_TITLE,
        VR::AE,
        PrimitiveValue::from(ae_title),
    ));
    if !committed.is_empty() {
        obj.put(DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(committed, Length::UNDEFINED),
        ));
    }
    if !failed.is_empty() {
        obj.put(DataElement::new(
            tags::FAILED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(failed, Length::UNDEFINED),
        ));
    }
    let ts = TransferSyntaxRegistry.get(ts)?;
    let mut bytes = Vec::new();
    obj.write_dataset_with_ts(&mut bytes, ts).ok()?;
    Some((event_type, bytes))
}

/// Verify, then report: on the same association if it is still open, else on a new one.
pub async fn report(
    svc: Arc<Services>,
    writer: Arc<Writer>,
    context: u8,
    ts: String,
    requester_ae: String,
    request: Request,
) {
    let results = check(&svc, &request).await;
    let committed = results.iter().filter(|r| r.2.is_none()).count();
    tracing::info!(
        transaction = %request.transaction_uid,
        committed,
        failed = results.len() - committed,
        "storage commitment checked"
    );
    if writer.is_open() {
        if let Some((event, data)) =
            event_information(&request, &results, &svc.config.ae_title, &ts)
        {
            if send(&writer, context, event, data).await {
                return;
            }
        }
    }
    // The requester's association is gone: call it back.
    let Some(dest) = svc.config.destination(&requester_ae) else {
        tracing::warn!(ae = %requester_ae, "storage commitment result not delivered: the requester is not in dimse.destinations");
        return;
    };
    let proposal = Proposal {
        abstract_syntax: STORAGE_COMMITMENT.to_owned(),
        transfer_syntaxes: vec![EXPLICIT_VR_LE.to_owned(), IMPLICIT_VR_LE.to_owned()],
    };
    let peer = match scu::connect(
        dest,
        &svc.config.ae_title,
        &[proposal],
        &[STORAGE_COMMITMENT],
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "storage commitment result not delivered");
            return;
        }
    };
    let delivered = match peer
        .contexts
        .iter()
        .find(|c| c.abstract_syntax == STORAGE_COMMITMENT)
    {
        Some(ctx) => match event_information(
            &request,
            &results,
            &svc.config.ae_title,
            &ctx.transfer_syntax,
        ) {
            Some((event, data)) => send(&peer.writer, ctx.id, event, data).await,
            None => false,
        },
        None => false,
    };
    if !delivered {
        tracing::warn!(ae = %requester_ae, "storage commitment result not accepted by the requester");
    }
    peer.release().await;
}

async fn send(writer: &Writer, context: u8, event: u16, data: Vec<u8>) -> bool {
    let id = writer.next_message_id();
    let rq =
        command::event_report_request(id, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, event);
    match writer
        .request(context, id, &rq, Some(DataSet::Bytes(data)))
        .await
    {
        Ok(rsp) if rsp.field == field::N_EVENT_REPORT_RSP && rsp.status == Some(0) => true,
        Ok(rsp) if rsp.field == field::N_EVENT_REPORT_RSP => {
            tracing::info!(status = ?rsp.status, "N-EVENT-REPORT refused on this association");
            false
        }
        Ok(_) => false,
        Err(e) => {
            tracing::info!(error = %e, "N-EVENT-REPORT not delivered on this association");
            false
        }
    }
}
