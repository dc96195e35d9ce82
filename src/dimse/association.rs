//! Accepting associations and running them: messages are assembled from P-DATA values and
//! dispatched; C-STORE data sets stream into the ingest spool as they arrive; C-FIND,
//! C-MOVE, C-GET and storage commitment run as tasks of their own, so C-CANCEL requests and
//! the responses to our C-GET sub-operations keep flowing meanwhile. An association that
//! breaks off mid-transfer leaves nothing behind (the spool is a drop guard).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::server::{AccessControl, Negotiation, ServerAssociationOptions};
use dicom_ul::association::Association as _;
use dicom_ul::pdu::{
    AbortRQSource, AssociationRJServiceUserReason, PDataValue, PDataValueType, Pdu, RequestorRoles,
    UserIdentity,
};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::command::{self, field, Command};
use super::link::{self, Assembler, DataSet, LinkError, Writer, MAX_PDU};
use super::retrieve::{self, Retrieve};
use super::store::{self, Incoming};
use super::{commit, echo, find, Context, Services};
use crate::config::DimseConfig;
use crate::ingest::{is_storage_class, Ingest};

pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// How long associations in progress may take to finish at shutdown.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(20);

/// The largest identifier or action information gathered in memory.
const MAX_SMALL_DATA_SET: usize = 16 << 20;

/// The SOP classes of the Query/Retrieve and Storage Commitment services.
pub const SERVICE_CLASSES: &[&str] = &[
    VERIFICATION,
    find::STUDY_ROOT_FIND,
    find::PATIENT_ROOT_FIND,
    retrieve::STUDY_ROOT_MOVE,
    retrieve::PATIENT_ROOT_MOVE,
    retrieve::STUDY_ROOT_GET,
    retrieve::PATIENT_ROOT_GET,
    commit::STORAGE_COMMITMENT,
];
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

/// SCP/SCU role selection: a requester may be the SCP of storage SOP classes (to receive
/// C-GET sub-operations); other proposals get the default roles.
struct Roles;

impl Negotiation for Roles {
    fn negotiate_roles(&self, sop_class_uid: &str, scu: bool, scp: bool) -> Option<RequestorRoles> {
        let storage = storage_sop_classes().iter().any(|c| c == sop_class_uid);
        storage.then_some(RequestorRoles { scu, scp })
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
        .max_pdu_length(MAX_PDU)
        .with_negotiation(Roles);
    for uid in SERVICE_CLASSES {
        options = options.with_abstract_syntax(*uid);
    }
    for uid in storage_sop_classes() {
        options = options.with_abstract_syntax(uid.as_str());
    }
    for ts in transfer_syntaxes() {
        options = options.with_transfer_syntax(ts);
    }
    let options = Arc::new(options);
    let services = Arc::new(Services {
        ingest,
        config: config.clone(),
    });
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
        let (options, services) = (options.clone(), services.clone());
        running.spawn(async move {
            let _ = socket.set_nodelay(true);
            let m = crate::metrics::get();
            match options.establish_async(socket).await {
                Ok(association) => {
                    m.dimse_associations
                        .with_label_values(&["established"])
                        .inc();
                    m.dimse_active.inc();
                    run(association, services, peer.ip().to_string()).await;
                    m.dimse_active.dec();
                }
                Err(e) => {
                    m.dimse_associations.with_label_values(&["rejected"]).inc();
                    tracing::info!(%peer, error = %e, "association not established");
                }
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
async fn run(mut association: Association, services: Arc<Services>, peer: String) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated appendix of the conformance statement: every storage SOP class and
    /// transfer syntax accepted, as the code lists them.
    fn conformance_appendix() -> String {
        use dicom_core::dictionary::UidDictionary;
        let mut out = String::from(
            "# DIMSE: SOP classes and transfer syntaxes accepted\n\n\
             Generated from the code by `cargo test` (`PACS_UPDATE_CONFORMANCE=1` rewrites it;\n\
             the test fails when it differs). See `dimse.md`.\n\n\
             ## Service SOP classes (SCP role)\n\n| UID | Name |\n| --- | --- |\n",
        );
        let name = |uid: &str| {
            dicom_dictionary_std::StandardSopClassDictionary
                .by_uid(uid)
                .map(|e| e.name.to_owned())
                .unwrap_or_default()
        };
        for uid in SERVICE_CLASSES {
            out.push_str(&format!("| {uid} | {} |\n", name(uid)));
        }
        out.push_str(&format!(
            "\n## Storage SOP classes ({}; SCP role, and SCU role for C-MOVE and C-GET)\n\n| UID | Name |\n| --- | --- |\n",
            storage_sop_classes().len()
        ));
        for uid in storage_sop_classes() {
            out.push_str(&format!("| {uid} | {} |\n", name(uid)));
        }
        out.push_str("\n## Transfer syntaxes\n\n| UID | Name |\n| --- | --- |\n");
        let mut syntaxes: Vec<_> = TransferSyntaxRegistry
            .iter()
            .filter(|ts| !ts.is_unsupported())
            .map(|ts| (ts.uid().to_owned(), ts.name().to_owned()))
            .collect();
        syntaxes.sort();
        for (uid, name) in syntaxes {
            out.push_str(&format!("| {uid} | {name} |\n"));
        }
        out
    }

    #[test]
    fn conformance_statement_matches_the_code() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conformance/dimse-sop-classes.md"
        );
        let generated = conformance_appendix();
        if std::env::var_os("PACS_UPDATE_CONFORMANCE").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let written = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            written == generated,
            "conformance/dimse-sop-classes.md is out of date: run PACS_UPDATE_CONFORMANCE=1 cargo test"
        );
        let statement =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conformance/dimse.md"))
                .unwrap();
        for uid in SERVICE_CLASSES {
            assert!(statement.contains(uid), "dimse.md does not mention {uid}");
        }
    }

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
