//! Accepting associations and assembling DIMSE messages from P-DATA fragments.
//!
//! One task per association, capped by a semaphore. Commands are gathered until their
//! last fragment and dispatched; a C-STORE's data set streams into the ingest spool as it
//! arrives. Every failure after negotiation is answered with a status; an association that
//! breaks off mid-transfer leaves nothing behind (the spool is a drop guard).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::pdu::UserIdentity;
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, PDataValue, PDataValueType, Pdu,
    PresentationContextResultReason,
};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::command::{self, field, Request};
use super::store::{self, Incoming};
use super::{echo, find};
use crate::config::DimseConfig;
use crate::ingest::{is_storage_class, Ingest};

const VERIFICATION: &str = "1.2.840.10008.1.1";

/// How long associations in progress may take to finish at shutdown.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(20);

/// Every storage SOP class of the standard, from dicom-rs' SOP class dictionary.
///
/// The dictionary's entry list is crate-private; its registry is public and `Debug`, so the
/// UIDs are read from that rendering once and each is confirmed by a dictionary look-up.
pub fn storage_sop_classes() -> &'static [String] {
    use dicom_core::dictionary::UidDictionary;
    static LIST: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    LIST.get_or_init(|| {
        let rendered = format!("{:?}", dicom_dictionary_std::sop_class::registry());
        let mut uids: Vec<String> = rendered
            .split("uid: \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|uid| {
                dicom_dictionary_std::StandardSopClassDictionary
                    .by_uid(uid)
                    .is_some_and(|e| is_storage_class(e.name))
            })
            .map(str::to_owned)
            .collect();
        uids.sort();
        uids.dedup();
        uids
    })
}

/// Every transfer syntax whose data sets dicom-rs can read.
pub fn transfer_syntaxes() -> Vec<&'static str> {
    TransferSyntaxRegistry
        .iter()
        .filter(|ts| !ts.is_unsupported())
        .map(|ts| ts.uid())
        .collect()
}

/// Calling AE titles allowed (empty: any); the called AE title must be ours.
struct AeRules {
    allowed_calling: Vec<String>,
}

impl AccessControl for AeRules {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        let calling = calling_ae_title.trim();
        if !self.allowed_calling.is_empty()
            && !self.allowed_calling.iter().any(|a| a.trim() == calling)
        {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// Accept associations until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    ingest: Ingest,
    config: DimseConfig,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(AeRules {
            allowed_calling: config.allowed_calling_aes.clone(),
        })
        .ae_title(config.ae_title.clone())
        .max_pdu_length(1 << 20)
        .with_abstract_syntax(VERIFICATION)
        .with_abstract_syntax(find::STUDY_ROOT_FIND)
        .with_abstract_syntax(find::PATIENT_ROOT_FIND);
    for uid in storage_sop_classes() {
        options = options.with_abstract_syntax(uid.as_str());
    }
    for ts in transfer_syntaxes() {
        options = options.with_transfer_syntax(ts);
    }
    let options = Arc::new(options);
    let slots = Arc::new(Semaphore::new(config.max_associations.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut running = tokio::task::JoinSet::new();
    loop {
        let (socket, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a DIMSE connection failed");
                    continue;
                }
            },
        };
        // Reap finished associations so the set only holds running ones.
        while running.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many associations; closing the connection");
            continue;
        };
        let (options, ingest, ae_title) =
            (options.clone(), ingest.clone(), config.ae_title.clone());
        running.spawn(async move {
            let _ = socket.set_nodelay(true);
            match options.establish_async(socket).await {
                Ok(association) => run(association, ingest, peer.ip().to_string(), ae_title).await,
                Err(e) => tracing::info!(%peer, error = %e, "association not established"),
            }
            drop(permit);
        });
    }
    // Stop accepting, then give the associations in progress time to finish their work.
    tracing::info!(
        associations = running.len(),
        "DIMSE listener stopped; draining associations"
    );
    let drained = tokio::time::timeout(DRAIN, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = running.len(),
            "associations still open after the drain period; closing them"
        );
        running.abort_all();
    }
}

type Association = dicom_ul::association::server::AsyncServerAssociation<tokio::net::TcpStream>;

/// The message being received on an association.
struct InFlight {
    request: Request,
    context: u8,
    incoming: Option<Incoming>,
    /// A status decided before the data set ended (its remaining fragments are discarded).
    failed: Option<u16>,
    /// The identifier of a C-FIND, gathered in memory (identifiers are small).
    identifier: Vec<u8>,
}

/// One P-DATA value to send back.
struct Reply {
    context: u8,
    kind: PDataValueType,
    bytes: Vec<u8>,
}

impl Reply {
    fn command(context: u8, bytes: Vec<u8>) -> Vec<Reply> {
        vec![Reply {
            context,
            kind: PDataValueType::Command,
            bytes,
        }]
    }
}

#[tracing::instrument(skip_all, fields(calling_ae = %dicom_ul::association::Association::peer_ae_title(&association), %peer))]
async fn run(mut association: Association, ingest: Ingest, peer: String, ae_title: String) {
    let calling = dicom_ul::association::Association::peer_ae_title(&association)
        .trim()
        .to_owned();
    let contexts: HashMap<u8, String> = association
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| (pc.id, pc.transfer_syntax.clone()))
        .collect();
    tracing::info!(contexts = contexts.len(), "association established");
    let mut command_bytes = Vec::new();
    let mut in_flight: Option<InFlight> = None;
    loop {
        let pdu = match association.receive().await {
            Ok(pdu) => pdu,
            Err(e) => {
                tracing::info!(error = %e, "association ended without release");
                return;
            }
        };
        match pdu {
            Pdu::PData { data } => {
                for pdv in data {
                    let reply = match pdv.value_type {
                        PDataValueType::Command => {
                            command_bytes.extend_from_slice(&pdv.data);
                            if !pdv.is_last {
                                continue;
                            }
                            let bytes = std::mem::take(&mut command_bytes);
                            on_command(
                                &bytes,
                                pdv.presentation_context_id,
                                &contexts,
                                &ingest,
                                &calling,
                                &mut in_flight,
                            )
                            .await
                        }
                        PDataValueType::Data => {
                            on_data(
                                pdv,
                                &ingest,
                                &calling,
                                &peer,
                                &contexts,
                                &ae_title,
                                &mut in_flight,
                            )
                            .await
                        }
                    };
                    if let Err(e) = send_replies(&mut association, reply).await {
                        tracing::warn!(error = %e, "sending a response failed");
                        return;
                    }
                }
            }
            Pdu::ReleaseRQ => {
                let _ = association.send(&Pdu::ReleaseRP).await;
                tracing::info!("association released");
                return;
            }
            Pdu::AbortRQ { .. } => {
                tracing::info!("association aborted by the peer");
                return;
            }
            other => {
                tracing::warn!(pdu = %other.short_description(), "unexpected PDU; aborting");
                let _ = association.abort().await;
                return;
            }
        }
    }
}

/// Send replies, one P-DATA PDU per fragment: every command and data set gets PDUs of its
/// own (dcmtk does not take the values of several messages in one PDU), each fragment within
/// the peer's maximum PDU length.
async fn send_replies(
    association: &mut Association,
    replies: Vec<Reply>,
) -> Result<(), dicom_ul::association::Error> {
    // Each value costs its data plus a 6-byte item header; the PDU header is 6 bytes.
    let max = association.requestor_max_pdu_length().max(4096) as usize - 12;
    for r in replies {
        let total = r.bytes.len();
        let chunks: Vec<&[u8]> = if total == 0 {
            vec![&[][..]]
        } else {
            r.bytes.chunks(max).collect()
        };
        for (i, chunk) in chunks.into_iter().enumerate() {
            let value = PDataValue {
                presentation_context_id: r.context,
                value_type: r.kind.clone(),
                is_last: (i + 1) * max >= total,
                data: chunk.to_vec(),
            };
            association.send(&Pdu::PData { data: vec![value] }).await?;
        }
    }
    Ok(())
}

/// A complete command: answer it now (C-ECHO, unknown), or get ready for its data set.
async fn on_command(
    bytes: &[u8],
    context: u8,
    contexts: &HashMap<u8, String>,
    ingest: &Ingest,
    calling: &str,
    in_flight: &mut Option<InFlight>,
) -> Vec<Reply> {
    let request = match command::decode(bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable command");
            let unknown = Request {
                field: 0,
                message_id: 0,
                affected_sop_class: None,
                affected_sop_instance: None,
                has_data_set: false,
            };
            return Reply::command(context, command::response(&unknown, 0x8000, 0x0211));
        }
    };
    match request.field {
        field::C_ECHO_RQ => Reply::command(context, echo::handle(&request)),
        field::C_FIND_RQ => {
            *in_flight = Some(InFlight {
                request,
                context,
                incoming: None,
                failed: None,
                identifier: Vec::new(),
            });
            Vec::new()
        }
        field::C_STORE_RQ => {
            let ts = contexts.get(&context).cloned().unwrap_or_default();
            let (class, instance) = (
                request.affected_sop_class.clone(),
                request.affected_sop_instance.clone(),
            );
            let started = match (class, instance) {
                (Some(c), Some(i)) => Incoming::start(ingest, &c, &i, &ts, calling).await,
                _ => Err(0xC000),
            };
            let (incoming, failed) = match started {
                Ok(i) => (Some(i), None),
                Err(status) => (None, Some(status)),
            };
            *in_flight = Some(InFlight {
                request,
                context,
                incoming,
                failed,
                identifier: Vec::new(),
            });
            Vec::new()
        }
        other => {
            tracing::warn!(command = other, "unsupported DIMSE command");
            // 0x0211: unrecognized operation.
            Reply::command(context, command::response(&request, other | 0x8000, 0x0211))
        }
    }
}

/// A data set fragment: stream it into the spool (C-STORE) or gather it (C-FIND); on the
/// last one, carry out the operation and answer.
async fn on_data(
    pdv: PDataValue,
    ingest: &Ingest,
    calling: &str,
    peer: &str,
    contexts: &HashMap<u8, String>,
    ae_title: &str,
    in_flight: &mut Option<InFlight>,
) -> Vec<Reply> {
    let Some(flight) = in_flight.as_mut() else {
        return Vec::new();
    };
    if flight.request.field == field::C_FIND_RQ {
        flight.identifier.extend_from_slice(&pdv.data);
    } else if let Some(incoming) = flight.incoming.as_mut() {
        if let Err(status) = incoming.write(&pdv.data).await {
            flight.incoming = None;
            flight.failed = Some(status);
        }
    }
    if !pdv.is_last {
        return Vec::new();
    }
    let Some(flight) = in_flight.take() else {
        return Vec::new();
    };
    if flight.request.field == field::C_FIND_RQ {
        let ts = contexts
            .get(&flight.context)
            .map(String::as_str)
            .unwrap_or("1.2.840.10008.1.2");
        return find_replies(ingest, &flight, ts, ae_title).await;
    }
    let status = match flight.incoming {
        Some(incoming) => {
            let outcome = incoming.finish(ingest, calling, peer).await;
            if let crate::ingest::Outcome::Rejected(r) = &outcome {
                tracing::info!(sop = ?flight.request.affected_sop_instance, reason = %r, "C-STORE refused");
            }
            store::status(&outcome)
        }
        None => flight.failed.unwrap_or(0xC000),
    };
    Reply::command(
        flight.context,
        command::response(&flight.request, field::C_STORE_RSP, status),
    )
}

/// Pending responses with identifiers, then the final status.
async fn find_replies(ingest: &Ingest, flight: &InFlight, ts: &str, ae_title: &str) -> Vec<Reply> {
    let (context, request) = (flight.context, &flight.request);
    match find::find(ingest.index(), &flight.identifier, ts, ae_title).await {
        Ok(matches) => {
            let mut replies = Vec::with_capacity(matches.len() * 2 + 1);
            for identifier in matches {
                replies.push(Reply {
                    context,
                    kind: PDataValueType::Command,
                    bytes: command::response_with_data(request, field::C_FIND_RSP, 0xFF00),
                });
                replies.push(Reply {
                    context,
                    kind: PDataValueType::Data,
                    bytes: identifier,
                });
            }
            replies.extend(Reply::command(
                context,
                command::response(request, field::C_FIND_RSP, 0x0000),
            ));
            replies
        }
        Err(status) => Reply::command(
            context,
            command::response(request, field::C_FIND_RSP, status),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_classes_come_from_the_dictionary() {
        let list = storage_sop_classes();
        assert!(list.len() > 100, "{}", list.len());
        assert!(
            list.iter().any(|u| u == "1.2.840.10008.5.1.4.1.1.2"),
            "CT Image Storage"
        );
        assert!(
            list.iter().any(|u| u == "1.2.840.10008.5.1.4.1.1.104.1"),
            "Encapsulated PDF Storage"
        );
        assert!(!list
            .iter()
            .any(|u| u == VERIFICATION || u == "1.2.840.10008.1.20.1"));
        assert!(transfer_syntaxes().contains(&"1.2.840.10008.1.2.4.50"));
    }
}
