//! One accepted association: messages are assembled from P-DATA values and dispatched;
//! C-STORE data sets stream into the ingest spool as they arrive; C-FIND, C-MOVE, C-GET and
//! storage commitment run as tasks of their own, so C-CANCEL requests and the responses to
//! our C-GET sub-operations keep flowing meanwhile. An association that breaks off
//! mid-transfer leaves nothing behind (the spool is a drop guard).

use std::collections::HashMap;
use std::sync::Arc;

use dicom_ul::association::server::AsyncServerAssociation;
use dicom_ul::association::Association as _;
use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource, Pdu};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::command::{self, field, Command};
use super::link::{Assembler, LinkError, Received, Value, Writer};
use super::retrieve::{self, Retrieve};
use super::status::Status;
use super::store::Incoming;
use super::transport::Connection;
use super::{commit, commit_scu, echo, find, mpps, worklist, PresentationContext};
use crate::context::Context;
use crate::index::admin::AuditEvent;
use crate::model::{AeTitle, TransferSyntax};

/// The largest identifier or action information gathered in memory.
const MAX_SMALL_DATA_SET: usize = 16 << 20;
/// C-STOREs being stored at once on one association (a peer that sends the next before
/// its answer, which it may only with asynchronous operations, waits here).
const MAX_STORING: usize = 8;

/// The message whose data set is being received.
enum InFlight {
    /// A C-STORE streaming into the spool (or refused: the rest is discarded).
    Store {
        request: Command,
        context: u8,
        incoming: Box<Incoming>,
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
    ctx: Arc<Context>,
    writer: Arc<Writer>,
    contexts: Arc<Vec<PresentationContext>>,
    calling: AeTitle,
    peer: String,
    assembler: Assembler,
    in_flight: Option<InFlight>,
    /// Operations in progress that C-CANCEL can stop, by message ID.
    cancellable: HashMap<u16, CancellationToken>,
    tasks: tokio::task::JoinSet<u16>,
    /// C-STOREs being stored and answered, on blocking threads.
    storing: tokio::task::JoinSet<()>,
}

/// Run an accepted association, over TCP or TLS, to its end.
#[tracing::instrument(skip_all, fields(calling_ae = %association.peer_ae_title(), %peer))]
pub(super) async fn run<S>(association: AsyncServerAssociation<S>, ctx: Arc<Context>, peer: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    AsyncServerAssociation<S>: Connection,
{
    let Ok(calling) = AeTitle::parse(association.peer_ae_title()) else {
        // The access control has checked it already.
        let _ = association.abort().await;
        return;
    };
    let contexts = PresentationContext::accepted(association.presentation_contexts(), |class| {
        association.requestor_roles_for(class).scp
    });
    let peer_max = association.requestor_max_pdu_length();
    let (mut reader, writer) = match association.into_link(peer_max) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "cannot use the association's socket");
            return;
        }
    };
    tracing::info!(contexts = contexts.len(), "association established");
    let mut session = Session {
        ctx,
        writer: writer.clone(),
        contexts: Arc::new(contexts),
        calling,
        peer,
        assembler: Assembler::default(),
        in_flight: None,
        cancellable: HashMap::new(),
        tasks: tokio::task::JoinSet::new(),
        storing: tokio::task::JoinSet::new(),
    };
    loop {
        let pdu = match reader.next().await {
            Ok(Received::Data(values)) => match session.on_values(values).await {
                Ok(()) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "sending a response failed");
                    break;
                }
            },
            Ok(Received::Other(pdu)) => pdu,
            Err(LinkError::Pdu(e)) => {
                tracing::warn!(error = %e, "invalid PDU; aborting");
                abort(&writer, AbortRQServiceProviderReason::InvalidPduParameter).await;
                break;
            }
            Err(e) => {
                tracing::info!(error = %e, "association ended without release");
                break;
            }
        };
        match pdu {
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
                abort(&writer, AbortRQServiceProviderReason::UnexpectedPdu).await;
                break;
            }
        }
    }
    session.shutdown().await;
}

/// Send an A-ABORT from the service provider (the association ends after it).
async fn abort(writer: &Writer, reason: AbortRQServiceProviderReason) {
    let source = AbortRQSource::ServiceProvider(reason);
    let _ = writer.control(&Pdu::AbortRQ { source }).await;
}

impl Session {
    fn context(&self, id: u8) -> Option<&PresentationContext> {
        self.contexts.iter().find(|c| c.id == id)
    }

    fn transfer_syntax(&self, id: u8) -> TransferSyntax {
        self.context(id)
            .map(|c| c.transfer_syntax.clone())
            .unwrap_or_else(TransferSyntax::implicit_vr_le)
    }

    /// The association is over: stop what can be stopped, close the socket.
    async fn shutdown(mut self) {
        for token in self.cancellable.values() {
            token.cancel();
        }
        self.writer.mark_closed();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        // Stores in progress finish (their answers find the association closed).
        while self.storing.join_next().await.is_some() {}
        self.writer.close().await;
    }

    /// Wait (bounded) for the operations in progress.
    async fn reap_all(&mut self) {
        let all = async {
            while self.storing.join_next().await.is_some() {}
            while self.tasks.join_next().await.is_some() {}
        };
        let drain = std::time::Duration::from_secs(self.ctx.config.dimse.drain_secs);
        if tokio::time::timeout(drain, all).await.is_err() {
            tracing::warn!("operations still running at release; stopping them");
            self.tasks.abort_all();
        }
        self.cancellable.clear();
    }

    fn reap_finished(&mut self) {
        while self.storing.try_join_next().is_some() {}
        while let Some(done) = self.tasks.try_join_next() {
            if let Ok(message_id) = done {
                self.cancellable.remove(&message_id);
            }
        }
    }

    async fn reply(&self, context: u8, command: Vec<u8>) -> Result<(), LinkError> {
        self.writer.message(context, &command, None).await
    }

    async fn on_values(&mut self, values: Vec<Value>) -> Result<(), LinkError> {
        for pdv in values {
            self.on_value(pdv).await?;
        }
        Ok(())
    }

    async fn on_value(&mut self, pdv: Value) -> Result<(), LinkError> {
        if !pdv.command {
            return self.on_data(pdv).await;
        }
        match self.assembler.command_fragment(&pdv.data, pdv.last) {
            None => Ok(()),
            Some(Ok(command)) => self.on_command(command, pdv.context).await,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "undecodable command");
                let unknown = Status::UNRECOGNIZED_OPERATION;
                let rsp = command::response(&Command::default(), 0x8000, unknown);
                self.reply(pdv.context, rsp).await
            }
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
                let (ingest, calling) = (&self.ctx.ingest, &self.calling);
                let incoming = Incoming::start(ingest, &command, &ts, calling, &self.peer).await;
                self.in_flight = Some(InFlight::Store {
                    request: command,
                    context,
                    incoming: Box::new(incoming),
                });
                Ok(())
            }
            field::C_FIND_RQ
            | field::C_MOVE_RQ
            | field::C_GET_RQ
            | field::N_ACTION_RQ
            | field::N_EVENT_REPORT_RQ
            | field::N_CREATE_RQ
            | field::N_SET_RQ => {
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
                let unknown = Status::UNRECOGNIZED_OPERATION;
                self.reply(
                    context,
                    command::response(&command, other | 0x8000, unknown),
                )
                .await
            }
        }
    }

    /// A data set fragment: stream it into the spool (C-STORE) or gather it; on the last
    /// one, carry out the operation.
    async fn on_data(&mut self, pdv: Value) -> Result<(), LinkError> {
        match self.in_flight.as_mut() {
            None => return Ok(()),
            Some(InFlight::Store { incoming, .. }) => incoming.write(&pdv.data).await,
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
        if !pdv.last {
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
                let rsp =
                    command::response(&request, request.field | 0x8000, Status::OUT_OF_RESOURCES);
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
            }) => self.stored(request, context, *incoming).await,
        }
    }

    /// The C-STORE's data set is complete: store it and answer with its status, both on a
    /// blocking thread (the instance and its answer pass through no other thread; this
    /// task reads on meanwhile). At most [`MAX_STORING`] at once per association.
    async fn stored(
        &mut self,
        request: Command,
        context: u8,
        incoming: Incoming,
    ) -> Result<(), LinkError> {
        let spooled = match incoming.finish(&request).await {
            Ok(spooled) => spooled,
            Err(refused) => {
                return self
                    .reply(context, store_response(&request, &refused))
                    .await
            }
        };
        while self.storing.len() >= MAX_STORING {
            self.storing.join_next().await;
        }
        let (ctx, writer) = (self.ctx.clone(), self.writer.clone());
        let runtime = tokio::runtime::Handle::current();
        self.storing.spawn_blocking(move || {
            let outcome = spooled.store(&ctx.ingest, &runtime);
            let rsp = store_response(&request, &outcome);
            if let Err(e) = runtime.block_on(writer.message(context, &rsp, None)) {
                tracing::info!(error = %e, "the C-STORE response could not be sent");
            }
        });
        Ok(())
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
        let expected: &[&str] = match request.field {
            field::C_FIND_RQ => &[
                find::STUDY_ROOT_FIND,
                find::PATIENT_ROOT_FIND,
                worklist::MODALITY_WORKLIST_FIND,
            ],
            field::C_MOVE_RQ => &[retrieve::STUDY_ROOT_MOVE, retrieve::PATIENT_ROOT_MOVE],
            field::C_GET_RQ => &[retrieve::STUDY_ROOT_GET, retrieve::PATIENT_ROOT_GET],
            field::N_CREATE_RQ | field::N_SET_RQ => &[mpps::MPPS],
            _ => &[commit::STORAGE_COMMITMENT],
        };
        if !expected.contains(&abstract_syntax.as_str()) {
            // Not on this presentation context.
            let unsupported = Status::SOP_CLASS_NOT_SUPPORTED;
            let rsp = command::response(&request, request.field | 0x8000, unsupported);
            return self.reply(context, rsp).await;
        }
        match request.field {
            field::N_ACTION_RQ => self.commitment(request, context, data).await,
            field::N_CREATE_RQ => {
                let ts = self.transfer_syntax(context);
                let index = self.ctx.index();
                let rsp = mpps::create(index, &request, &data, &ts, &self.calling).await;
                self.reply(context, rsp).await
            }
            field::N_SET_RQ => {
                let ts = self.transfer_syntax(context);
                let rsp = mpps::set(self.ctx.index(), &request, &data, &ts).await;
                self.reply(context, rsp).await
            }
            field::N_EVENT_REPORT_RQ => {
                let ts = self.transfer_syntax(context);
                let status = commit_scu::on_report(&self.ctx, &request, &data, ts.as_str()).await;
                let rsp = command::response(&request, field::N_EVENT_REPORT_RSP, status);
                self.reply(context, rsp).await
            }
            field::C_FIND_RQ => {
                let worklist = abstract_syntax == worklist::MODALITY_WORKLIST_FIND;
                self.find(request, context, data, worklist);
                Ok(())
            }
            _ => {
                self.retrieve(request, context, data);
                Ok(())
            }
        }
    }

    /// Storage commitment: answer the N-ACTION now; the report follows on a task of its
    /// own, not tied to this association (it may go out on a new one).
    async fn commitment(
        &mut self,
        request: Command,
        context: u8,
        data: Vec<u8>,
    ) -> Result<(), LinkError> {
        let ts = self.transfer_syntax(context);
        match commit::accept(&request, &data, ts.as_str()) {
            Ok(commitment) => {
                let ok = command::response(&request, field::N_ACTION_RSP, Status::SUCCESS);
                self.reply(context, ok).await?;
                let (ctx, writer) = (self.ctx.clone(), self.writer.clone());
                let ts = ts.to_string();
                let calling = self.calling.clone();
                tokio::spawn(commit::report(
                    ctx, writer, context, ts, calling, commitment,
                ));
                Ok(())
            }
            Err(status) => {
                let rsp = command::response(&request, field::N_ACTION_RSP, status);
                self.reply(context, rsp).await
            }
        }
    }

    /// C-FIND: pending answers from a task of its own, cancellable.
    fn find(&mut self, request: Command, context: u8, identifier: Vec<u8>, worklist: bool) {
        let event = AuditEvent::new(
            self.calling.as_str(),
            "dimse",
            Some(self.peer.clone()),
            "query",
        );
        let what = if worklist {
            "C-FIND worklist"
        } else {
            "C-FIND"
        };
        self.ctx.index().audit(event.detail(what));
        let (ctx, writer) = (self.ctx.clone(), self.writer.clone());
        let ts = self.transfer_syntax(context);
        let message_id = request.message_id;
        let cancel = self.cancellable(message_id);
        let calling = worklist.then(|| self.calling.clone());
        self.tasks.spawn(async move {
            let query = Query {
                request: &request,
                context,
                ts: &ts,
                identifier: &identifier,
                worklist_of: calling.as_ref(),
            };
            find_replies(&ctx, &writer, query, cancel).await;
            message_id
        });
    }

    /// C-MOVE or C-GET: sub-operations from a task of its own, cancellable.
    fn retrieve(&mut self, request: Command, context: u8, identifier: Vec<u8>) {
        let message_id = request.message_id;
        let r = Retrieve {
            request,
            context,
            transfer_syntax: self.transfer_syntax(context),
            identifier,
            cancel: self.cancellable(message_id),
            who: self.calling.to_string(),
            address: self.peer.clone(),
        };
        let (ctx, writer, contexts) =
            (self.ctx.clone(), self.writer.clone(), self.contexts.clone());
        self.tasks.spawn(async move {
            if r.request.field == field::C_MOVE_RQ {
                retrieve::c_move(ctx, writer, r).await;
            } else {
                retrieve::c_get(ctx, writer, contexts, r).await;
            }
            message_id
        });
    }

    /// A cancellation token for the operation of `message_id` (C-CANCEL stops it).
    fn cancellable(&mut self, message_id: u16) -> CancellationToken {
        let cancel = CancellationToken::new();
        self.cancellable.insert(message_id, cancel.clone());
        cancel
    }
}

/// The C-STORE-RSP for an outcome.
fn store_response(request: &Command, outcome: &crate::ingest::Outcome) -> Vec<u8> {
    if let crate::ingest::Outcome::Rejected(r) = outcome {
        tracing::info!(sop = ?request.affected_sop_instance, reason = %r, "C-STORE refused");
    }
    command::response(request, field::C_STORE_RSP, Status::of_store(outcome))
}

/// About how many bytes of C-FIND answers are written at once.
const FIND_BATCH: usize = 64 * 1024;

/// A C-FIND request with its identifier.
struct Query<'a> {
    request: &'a Command,
    context: u8,
    ts: &'a TransferSyntax,
    identifier: &'a [u8],
    /// A Modality Worklist query, from this calling AE.
    worklist_of: Option<&'a AeTitle>,
}

/// Pending responses with identifiers, then the final status (Cancel when cancelled).
async fn find_replies(ctx: &Context, writer: &Writer, q: Query<'_>, cancel: CancellationToken) {
    let ae = &ctx.config.dimse.ae_title;
    let found = match q.worklist_of {
        Some(calling) => {
            let config = &ctx.config.dimse.worklist;
            let found = worklist::find(ctx.index(), q.identifier, q.ts, calling, config).await;
            let class = found.as_ref().err().map_or("success", |s| s.class());
            let counter = &crate::metrics::get().worklist;
            counter.with_label_values(&["find", class]).inc();
            found
        }
        None => find::find(ctx.index(), q.identifier, q.ts, ae).await,
    };
    let status = match found {
        Ok(matches) => {
            // Pending answers go out in writes of about FIND_BATCH bytes; a C-CANCEL is
            // looked at between them.
            let pending =
                command::response_with_data(q.request, field::C_FIND_RSP, Status::PENDING);
            let mut status = Status::SUCCESS;
            let mut batch = Vec::new();
            let mut batch_len = 0;
            let mut matches = matches.into_iter().peekable();
            while let Some(identifier) = matches.next() {
                batch_len += identifier.len() + pending.len();
                batch.push((pending.clone(), identifier));
                if batch_len < FIND_BATCH && matches.peek().is_some() {
                    continue;
                }
                if cancel.is_cancelled() {
                    status = Status::CANCEL;
                    break;
                }
                if writer.messages(q.context, &batch).await.is_err() {
                    return;
                }
                batch.clear();
                batch_len = 0;
            }
            status
        }
        Err(status) => status,
    };
    let last = command::response(q.request, field::C_FIND_RSP, status);
    let _ = writer.message(q.context, &last, None).await;
}
