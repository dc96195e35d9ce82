//! One accepted association: messages are assembled from P-DATA values and dispatched;
//! C-STORE data sets stream into the ingest spool as they arrive; C-FIND, C-MOVE, C-GET and
//! storage commitment run as tasks of their own, so C-CANCEL requests and the responses to
//! our C-GET sub-operations keep flowing meanwhile. An association that breaks off
//! mid-transfer leaves nothing behind (the spool is a drop guard).

use std::collections::HashMap;
use std::sync::Arc;

use dicom_ul::association::Association as _;
use dicom_ul::pdu::{AbortRQSource, PDataValue, PDataValueType, Pdu};
use tokio_util::sync::CancellationToken;

use super::association::DRAIN;
use super::command::{self, field, Command};
use super::link::{self, Assembler, DataSet, LinkError, Writer};
use super::retrieve::{self, Retrieve};
use super::store::{self, Incoming};
use super::{commit, echo, find, Context, Services};

/// The largest identifier or action information gathered in memory.
const MAX_SMALL_DATA_SET: usize = 16 << 20;

pub(super) type Association =
    dicom_ul::association::server::AsyncServerAssociation<tokio::net::TcpStream>;

/// The message whose data set is being received.
enum InFlight {
    /// A C-STORE streaming into the spool (None once it failed: the rest is discarded).
    Store {
        request: Command,
        context: u8,
        incoming: Option<Box<Incoming>>,
        failed: Option<u16>,
    },
    /// An identifier or action information, gathered in memory.
    Small {
        request: Command,
        context: u8,
        data: Vec<u8>,
        too_large: bool,
    },
    /// The data set of a response (nothing we send asks for one): discarded.
    Response(Command),
}

/// One accepted association.
struct Session {
    services: Arc<Services>,
    writer: Arc<Writer>,
    contexts: Arc<Vec<Context>>,
    calling: String,
    peer: String,
    assembler: Assembler,
    in_flight: Option<InFlight>,
    /// Operations in progress that C-CANCEL can stop, by message ID.
    cancellable: HashMap<u16, CancellationToken>,
    tasks: tokio::task::JoinSet<u16>,
}

#[tracing::instrument(skip_all, fields(calling_ae = %association.peer_ae_title(), %peer))]
pub(super) async fn run(mut association: Association, services: Arc<Services>, peer: String) {
    let calling = association.peer_ae_title().trim().to_owned();
    let contexts = Context::accepted(association.presentation_contexts(), |class| {
        association.requestor_roles_for(class).scp
    });
    let peer_max = association.requestor_max_pdu_length();
    let (mut reader, writer) = match link::split(association.inner_stream(), peer_max) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "cannot use the association's socket");
            let _ = association.abort().await;
            return;
        }
    };
    drop(association);
    tracing::info!(contexts = contexts.len(), "association established");
    let mut session = Session {
        services,
        writer: writer.clone(),
        contexts: Arc::new(contexts),
        calling,
        peer,
        assembler: Assembler::default(),
        in_flight: None,
        cancellable: HashMap::new(),
        tasks: tokio::task::JoinSet::new(),
    };
    loop {
        let pdu = match reader.next().await {
            Ok(pdu) => pdu,
            Err(e) => {
                tracing::info!(error = %e, "association ended without release");
                break;
            }
        };
        match pdu {
            Pdu::PData { data } => {
                for pdv in data {
                    if let Err(e) = session.on_value(pdv).await {
                        tracing::warn!(error = %e, "sending a response failed");
                        session.shutdown().await;
                        return;
                    }
                }
            }
            Pdu::ReleaseRQ => {
                // Operations still running finish first (their final responses precede
                // the release); storage commitment reports go out on a new association.
                session.reap_all().await;
                writer.mark_closed();
                let _ = writer.control(&Pdu::ReleaseRP).await;
                tracing::info!("association released");
                break;
            }
            Pdu::AbortRQ { .. } => {
                tracing::info!("association aborted by the peer");
                break;
            }
            other => {
                tracing::warn!(pdu = %other.short_description(), "unexpected PDU; aborting");
                let _ = writer
                    .control(&Pdu::AbortRQ {
                        source: AbortRQSource::ServiceProvider(
                            dicom_ul::pdu::AbortRQServiceProviderReason::UnexpectedPdu,
                        ),
                    })
                    .await;
                break;
            }
        }
    }
    session.shutdown().await;
}

impl Session {
    fn context(&self, id: u8) -> Option<&Context> {
        self.contexts.iter().find(|c| c.id == id)
    }

    fn transfer_syntax(&self, id: u8) -> String {
        self.context(id)
            .map(|c| c.transfer_syntax.clone())
            .unwrap_or_else(|| "1.2.840.10008.1.2".to_owned())
    }

    /// The association is over: stop what can be stopped, close the socket.
    async fn shutdown(mut self) {
        for token in self.cancellable.values() {
            token.cancel();
        }
        self.writer.mark_closed();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.writer.close().await;
    }

    /// Wait (bounded) for the operations in progress.
    async fn reap_all(&mut self) {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN, all).await.is_err() {
            tracing::warn!("operations still running at release; stopping them");
            self.tasks.abort_all();
        }
        self.cancellable.clear();
    }

    fn reap_finished(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            if let Ok(message_id) = done {
                self.cancellable.remove(&message_id);
            }
        }
    }

    async fn reply(&self, context: u8, command: Vec<u8>) -> Result<(), LinkError> {
        self.writer.message(context, &command, None).await
    }

    async fn on_value(&mut self, pdv: PDataValue) -> Result<(), LinkError> {
        match pdv.value_type {
            PDataValueType::Command => {
                match self.assembler.command_fragment(&pdv.data, pdv.is_last) {
                    None => Ok(()),
                    Some(Ok(command)) => {
                        self.on_command(command, pdv.presentation_context_id).await
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "undecodable command");
                        // 0x0211: unrecognized operation.
                        let rsp = command::response(&Command::default(), 0x8000, 0x0211);
                        self.reply(pdv.presentation_context_id, rsp).await
                    }
                }
            }
            PDataValueType::Data => self.on_data(pdv).await,
        }
    }

    /// A complete command: answer it now, or get ready for its data set.
    async fn on_command(&mut self, command: Command, context: u8) -> Result<(), LinkError> {
        self.reap_finished();
        if field::is_response(command.field) {
            if command.has_data_set {
                self.in_flight = Some(InFlight::Response(command));
            } else if !self.writer.deliver(command) {
                tracing::debug!("response to no request of ours");
            }
            return Ok(());
        }
        match command.field {
            field::C_ECHO_RQ => self.reply(context, echo::handle(&command)).await,
            field::C_CANCEL_RQ => {
                if let Some(token) = command
                    .responded_to
                    .and_then(|id| self.cancellable.get(&id))
                {
                    tracing::info!(message = ?command.responded_to, "C-CANCEL");
                    token.cancel();
                }
                Ok(())
            }
            field::C_STORE_RQ => {
                let ts = self.transfer_syntax(context);
                let started = match (&command.affected_sop_class, &command.affected_sop_instance) {
                    (Some(c), Some(i)) => {
                        Incoming::start(&self.services.ingest, c, i, &ts, &self.calling).await
                    }
                    _ => Err(0xC000),
                };
                let (incoming, failed) = match started {
                    Ok(i) => (Some(Box::new(i)), None),
                    Err(status) => (None, Some(status)),
                };
                self.in_flight = Some(InFlight::Store {
                    request: command,
                    context,
                    incoming,
                    failed,
                });
                Ok(())
            }
            field::C_FIND_RQ | field::C_MOVE_RQ | field::C_GET_RQ | field::N_ACTION_RQ => {
                if command.has_data_set {
                    self.in_flight = Some(InFlight::Small {
                        request: command,
                        context,
                        data: Vec::new(),
                        too_large: false,
                    });
                    Ok(())
                } else {
                    self.dispatch(command, context, Vec::new()).await
                }
            }
            other => {
                tracing::warn!(command = other, "unsupported DIMSE command");
                // 0x0211: unrecognized operation.
                self.reply(context, command::response(&command, other | 0x8000, 0x0211))
                    .await
            }
        }
    }

    /// A data set fragment: stream it into the spool (C-STORE) or gather it; on the last
    /// one, carry out the operation.
    async fn on_data(&mut self, pdv: PDataValue) -> Result<(), LinkError> {
        match self.in_flight.as_mut() {
            None => return Ok(()),
            Some(InFlight::Store {
                incoming, failed, ..
            }) => {
                if let Some(i) = incoming.as_mut() {
                    if let Err(status) = i.write(&pdv.data).await {
                        *incoming = None;
                        *failed = Some(status);
                    }
                }
            }
            Some(InFlight::Small {
                data, too_large, ..
            }) => {
                if data.len() + pdv.data.len() > MAX_SMALL_DATA_SET {
                    *too_large = true;
                    data.clear();
                } else if !*too_large {
                    data.extend_from_slice(&pdv.data);
                }
            }
            Some(InFlight::Response(_)) => {}
        }
        if !pdv.is_last {
            return Ok(());
        }
        match self.in_flight.take() {
            None => Ok(()),
            Some(InFlight::Response(rsp)) => {
                self.writer.deliver(rsp);
                Ok(())
            }
            Some(InFlight::Small {
                request,
                context,
                too_large: true,
                ..
            }) => {
                tracing::warn!("identifier larger than {MAX_SMALL_DATA_SET} bytes refused");
                let rsp = command::response(&request, request.field | 0x8000, 0xA700);
                self.reply(context, rsp).await
            }
            Some(InFlight::Small {
                request,
                context,
                data,
                ..
            }) => self.dispatch(request, context, data).await,
            Some(InFlight::Store {
                request,
                context,
                incoming,
                failed,
            }) => {
                let status = match incoming {
                    Some(incoming) => {
                        let outcome = (*incoming)
                            .finish(&self.services.ingest, &self.calling, &self.peer)
                            .await;
                        if let crate::ingest::Outcome::Rejected(r) = &outcome {
                            tracing::info!(sop = ?request.affected_sop_instance, reason = %r, "C-STORE refused");
                        }
                        store::status(&outcome)
                    }
                    None => failed.unwrap_or(0xC000),
                };
                let rsp = command::response(&request, field::C_STORE_RSP, status);
                self.reply(context, rsp).await
            }
        }
    }

    /// Start an operation with its data set complete.
    async fn dispatch(
        &mut self,
        request: Command,
        context: u8,
        data: Vec<u8>,
    ) -> Result<(), LinkError> {
        let abstract_syntax = self
            .context(context)
            .map(|c| c.abstract_syntax.clone())
            .unwrap_or_default();
        let ts = self.transfer_syntax(context);
        let expected: &[&str] = match request.field {
            field::C_FIND_RQ => &[find::STUDY_ROOT_FIND, find::PATIENT_ROOT_FIND],
            field::C_MOVE_RQ => &[retrieve::STUDY_ROOT_MOVE, retrieve::PATIENT_ROOT_MOVE],
            field::C_GET_RQ => &[retrieve::STUDY_ROOT_GET, retrieve::PATIENT_ROOT_GET],
            _ => &[commit::STORAGE_COMMITMENT],
        };
        if !expected.contains(&abstract_syntax.as_str()) {
            // 0x0122: SOP class not supported (on this presentation context).
            let rsp = command::response(&request, request.field | 0x8000, 0x0122);
            return self.reply(context, rsp).await;
        }
        let (services, writer) = (self.services.clone(), self.writer.clone());
        let message_id = request.message_id;
        if request.field == field::N_ACTION_RQ {
            return match commit::accept(&request, &data, &ts) {
                Ok(commitment) => {
                    self.reply(context, command::response(&request, field::N_ACTION_RSP, 0))
                        .await?;
                    // Not tied to this association: the report may go out on a new one.
                    tokio::spawn(commit::report(
                        services,
                        writer,
                        context,
                        ts,
                        self.calling.clone(),
                        commitment,
                    ));
                    Ok(())
                }
                Err(status) => {
                    self.reply(
                        context,
                        command::response(&request, field::N_ACTION_RSP, status),
                    )
                    .await
                }
            };
        }
        let cancel = CancellationToken::new();
        self.cancellable.insert(message_id, cancel.clone());
        match request.field {
            field::C_FIND_RQ => {
                services.ingest.index().audit(
                    crate::index::admin::AuditEvent::new(
                        &self.calling,
                        "dimse",
                        Some(self.peer.clone()),
                        "query",
                    )
                    .detail("C-FIND"),
                );
                let ae = self.services.config.ae_title.clone();
                self.tasks.spawn(async move {
                    find_replies(
                        &services, &writer, &request, context, &ts, &ae, &data, cancel,
                    )
                    .await;
                    message_id
                });
            }
            _ => {
                let r = Retrieve {
                    request,
                    context,
                    transfer_syntax: ts,
                    identifier: data,
                    cancel,
                    who: self.calling.clone(),
                    address: self.peer.clone(),
                };
                let contexts = self.contexts.clone();
                self.tasks.spawn(async move {
                    if r.request.field == field::C_MOVE_RQ {
                        retrieve::c_move(services, writer, r).await;
                    } else {
                        retrieve::c_get(services, writer, contexts, r).await;
                    }
                    message_id
                });
            }
        }
        Ok(())
    }
}

/// Pending responses with identifiers, then the final status (Cancel when cancelled).
#[allow(clippy::too_many_arguments)]
async fn find_replies(
    services: &Services,
    writer: &Writer,
    request: &Command,
    context: u8,
    ts: &str,
    ae_title: &str,
    identifier: &[u8],
    cancel: CancellationToken,
) {
    let status = match find::find(services.ingest.index(), identifier, ts, ae_title).await {
        Ok(matches) => {
            let mut status = 0x0000;
            for identifier in matches {
                if cancel.is_cancelled() {
                    status = 0xFE00;
                    break;
                }
                let pending = command::response_with_data(request, field::C_FIND_RSP, 0xFF00);
                if writer
                    .message(context, &pending, Some(DataSet::Bytes(identifier)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            status
        }
        Err(status) => status,
    };
    let _ = writer
        .message(
            context,
            &command::response(request, field::C_FIND_RSP, status),
            None,
        )
        .await;
}
