//! C-MOVE and C-GET (PS3.4 C.4.2, C.4.3), Study Root and Patient Root.
//!
//! The identifier is matched with the C-FIND query model; every matching instance becomes a
//! C-STORE sub-operation: on a new association to the configured move destination (C-MOVE),
//! or on the requester's own association where it took the SCP role for the SOP class
//! (C-GET). Instances are sent as stored when the receiver accepts their transfer syntax
//! (streamed from the object store, byte for byte), otherwise transcoded to Explicit or
//! Implicit VR Little Endian when it accepts one of those. A pending response with the
//! sub-operation counts follows every sub-operation; C-CANCEL stops between two.

use std::sync::Arc;

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use tokio_util::sync::CancellationToken;

use super::command::{field, Command, Counts, Response};
use super::find::{self, json_text};
use super::link::{DataSet, Writer};
use super::push::{self, proposals, Pushed};
use super::scu;
use super::status::Status;
use super::PresentationContext;
use crate::context::Context;
use crate::index::read::{InstanceLocation, Scope};
use crate::model::query::Level;
use crate::model::{AeTitle, TransferSyntax, Uid};
use crate::storage::Store;

pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";
pub const PATIENT_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.1.2";
pub const PATIENT_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.1.3";

/// The most instances one retrieve sends (the sub-operation counts are 16-bit).
const MAX_INSTANCES: usize = 65_535;

/// One C-MOVE or C-GET request.
pub struct Retrieve {
    pub request: Command,
    pub context: u8,
    pub transfer_syntax: TransferSyntax,
    pub identifier: Vec<u8>,
    pub cancel: CancellationToken,
    /// The requester's AE title and address (for the audit trail).
    pub who: String,
    pub address: String,
}

/// How one sub-operation ended.
enum Sub {
    Completed,
    Warning,
    Failed,
}

/// Where the sub-operations go.
enum Target<'a> {
    /// C-GET: the requester's association, on contexts where it is the SCP.
    Requester {
        writer: &'a Writer,
        contexts: &'a [PresentationContext],
    },
    /// C-MOVE: an association we opened to the move destination.
    Destination {
        peer: &'a scu::Peer,
        originator: (&'a str, u16),
    },
}

/// The instances an identifier names, in study, series and instance order.
async fn matches(svc: &Context, r: &Retrieve) -> Result<Vec<InstanceLocation>, Status> {
    let id = find::parse(&r.identifier, &r.transfer_syntax)?;
    let mut query = id.query;
    query.full_instance_json = false;
    query.limit = MAX_INSTANCES;
    let index = svc.index();
    let found = index.search(&query).await.map_err(|e| {
        tracing::error!(error = %e, "retrieve search failed");
        Status::OUT_OF_RESOURCES_MATCHES
    })?;
    let mut out = Vec::new();
    for hit in &found.hits {
        let uid = |tag| json_text(hit, tag, VR::UI).and_then(|u| Uid::parse(&u).ok());
        let Some(study) = uid(tags::STUDY_INSTANCE_UID) else {
            continue;
        };
        let scope = Scope {
            study,
            series: (query.level != Level::Study)
                .then(|| uid(tags::SERIES_INSTANCE_UID))
                .flatten(),
            instance: (query.level == Level::Instance)
                .then(|| uid(tags::SOP_INSTANCE_UID))
                .flatten(),
        };
        let located = index.locate(&scope).await.map_err(|e| {
            tracing::error!(error = %e, "retrieve look-up failed");
            Status::OUT_OF_RESOURCES_MATCHES
        })?;
        out.extend(located);
        if out.len() > MAX_INSTANCES {
            return Err(Status::OUT_OF_RESOURCES_MATCHES);
        }
    }
    let mut studies: Vec<&Uid> = out.iter().map(|l| &l.study_uid).collect();
    studies.dedup();
    let action = if r.request.field == field::C_MOVE_RQ {
        "C-MOVE"
    } else {
        "C-GET"
    };
    for study in studies {
        index.audit(
            crate::index::admin::AuditEvent::new(&r.who, "dimse", Some(r.address.clone()), "read")
                .study(study.as_str())
                .detail(action),
        );
    }
    Ok(out)
}

/// Answer a C-MOVE: sub-operations on a new association to the destination.
pub async fn c_move(svc: Arc<Context>, writer: Arc<Writer>, r: Retrieve) {
    let destination = r
        .request
        .move_destination
        .as_deref()
        .and_then(|ae| AeTitle::parse(ae).ok())
        .and_then(|ae| svc.config.dimse.destination(&ae));
    let Some(destination) = destination else {
        tracing::info!(destination = ?r.request.move_destination, "C-MOVE to an unknown destination");
        let unknown = Status::MOVE_DESTINATION_UNKNOWN;
        return final_response(&writer, &r, unknown, Counts::default(), &[]).await;
    };
    let instances = match matches(&svc, &r).await {
        Ok(i) => i,
        Err(status) => return final_response(&writer, &r, status, Counts::default(), &[]).await,
    };
    if instances.is_empty() {
        return final_response(&writer, &r, Status::SUCCESS, Counts::default(), &[]).await;
    }
    let peer = match scu::connect(
        destination,
        &svc.config.dimse.ae_title,
        &proposals(&instances),
        &[],
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "C-MOVE destination unreachable");
            let counts = Counts {
                failed: instances.len() as u16,
                ..Default::default()
            };
            let failed: Vec<&Uid> = instances.iter().map(|i| &i.sop_instance_uid).collect();
            let status = Status::OUT_OF_RESOURCES_SUB_OPERATIONS;
            return final_response(&writer, &r, status, counts, &failed).await;
        }
    };
    let calling = r.request.message_id;
    let target = Target::Destination {
        peer: &peer,
        originator: (svc.config.dimse.ae_title.as_str(), calling),
    };
    run(&svc, &writer, &r, &instances, &target).await;
    peer.release().await;
}

/// Answer a C-GET: sub-operations on the requester's association.
pub async fn c_get(
    svc: Arc<Context>,
    writer: Arc<Writer>,
    contexts: Arc<Vec<PresentationContext>>,
    r: Retrieve,
) {
    let instances = match matches(&svc, &r).await {
        Ok(i) => i,
        Err(status) => return final_response(&writer, &r, status, Counts::default(), &[]).await,
    };
    let usable: Vec<PresentationContext> =
        contexts.iter().filter(|c| c.peer_is_scp).cloned().collect();
    let target = Target::Requester {
        writer: &writer,
        contexts: &usable,
    };
    run(&svc, &writer, &r, &instances, &target).await;
}

async fn run(
    svc: &Context,
    writer: &Writer,
    r: &Retrieve,
    instances: &[InstanceLocation],
    target: &Target<'_>,
) {
    let rsp_field = r.request.field | 0x8000;
    let mut counts = Counts {
        remaining: instances.len().min(u16::MAX as usize) as u16,
        ..Default::default()
    };
    let mut failed_uids: Vec<&Uid> = Vec::new();
    for loc in instances {
        if r.cancel.is_cancelled() {
            return final_response(writer, r, Status::CANCEL, counts, &failed_uids).await;
        }
        if !writer.is_open() {
            tracing::info!("requester gone; retrieve stopped");
            return;
        }
        let outcome = sub_operation(svc.store(), loc, target).await;
        counts.remaining = counts.remaining.saturating_sub(1);
        match outcome {
            Sub::Completed => counts.completed += 1,
            Sub::Warning => counts.warning += 1,
            Sub::Failed => {
                counts.failed += 1;
                failed_uids.push(&loc.sop_instance_uid);
            }
        }
        if counts.remaining > 0 {
            let pending = Response::new(&r.request, rsp_field, Status::PENDING)
                .with_counts(counts)
                .encode();
            if writer.message(r.context, &pending, None).await.is_err() {
                return;
            }
        }
    }
    let status = if counts.failed == 0 && counts.warning == 0 {
        Status::SUCCESS
    } else if counts.completed == 0 && counts.warning == 0 {
        Status::OUT_OF_RESOURCES_SUB_OPERATIONS
    } else {
        Status::WARNING
    };
    final_response(writer, r, status, counts, &failed_uids).await
}

/// The last response; with failures, an identifier listing the failed instances.
async fn final_response(
    writer: &Writer,
    r: &Retrieve,
    status: Status,
    counts: Counts,
    failed: &[&Uid],
) {
    let rsp_field = r.request.field | 0x8000;
    let mut rsp = Response::new(&r.request, rsp_field, status).with_counts(counts);
    let mut data = None;
    if !failed.is_empty() {
        {
            let ts = r.transfer_syntax.entry();
            let mut obj = InMemDicomObject::new_empty();
            obj.put(DataElement::new(
                tags::FAILED_SOP_INSTANCE_UID_LIST,
                VR::UI,
                PrimitiveValue::Strs(failed.iter().map(|s| s.to_string()).collect()),
            ));
            let mut bytes = Vec::new();
            if obj.write_dataset_with_ts(&mut bytes, ts).is_ok() {
                data = Some(DataSet::Bytes(bytes));
                rsp = rsp.with_data_set();
            }
        }
    }
    if let Err(e) = writer.message(r.context, &rsp.encode(), data).await {
        tracing::info!(error = %e, "final retrieve response not sent");
    }
}

/// Send one instance as a C-STORE sub-operation and read its status.
async fn sub_operation(store: &Store, loc: &InstanceLocation, target: &Target<'_>) -> Sub {
    let (writer, contexts, originator) = match target {
        Target::Requester { writer, contexts } => (*writer, *contexts, None),
        Target::Destination { peer, originator } => {
            (&*peer.writer, &peer.contexts[..], Some(*originator))
        }
    };
    match push::c_store(writer, contexts, store, loc, originator).await {
        Pushed::Stored => Sub::Completed,
        Pushed::Warning(_) => Sub::Warning,
        Pushed::Refused(_) | Pushed::NoContext | Pushed::Unreadable(_) | Pushed::Broken(_) => {
            Sub::Failed
        }
    }
}
