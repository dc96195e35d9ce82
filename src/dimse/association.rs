//! Accepting associations: what is offered (SOP classes, transfer syntaxes, roles), who may
//! associate, the cap on concurrent associations and draining at shutdown. Each accepted
//! association then runs in [`session`](super::session).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::server::AsyncServerAssociation;
use dicom_ul::association::server::{AccessControl, Negotiation, ServerAssociationOptions};
use dicom_ul::pdu::{AssociationRJServiceUserReason, RequestorRoles, UserIdentity};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::link::MAX_PDU;
use super::transport::Connection;
use super::{commit, find, mpps, retrieve, worklist};
use crate::config::DimseConfig;
use crate::context::Context;
use crate::dicom::is_storage_class;
use crate::model::AeTitle;

pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// The SOP classes of the Query/Retrieve, Storage Commitment and worklist services.
pub const SERVICE_CLASSES: &[&str] = &[
    VERIFICATION,
    find::STUDY_ROOT_FIND,
    find::PATIENT_ROOT_FIND,
    retrieve::STUDY_ROOT_MOVE,
    retrieve::PATIENT_ROOT_MOVE,
    retrieve::STUDY_ROOT_GET,
    retrieve::PATIENT_ROOT_GET,
    commit::STORAGE_COMMITMENT,
    worklist::MODALITY_WORKLIST_FIND,
    mpps::MPPS,
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
    allowed_calling: Vec<AeTitle>,
}

impl AccessControl for AeRules {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if AeTitle::parse(called_ae_title).ok() != AeTitle::parse(this_ae_title).ok() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        let Ok(calling) = AeTitle::parse(calling_ae_title) else {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        };
        if !self.allowed_calling.is_empty() && !self.allowed_calling.contains(&calling) {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// SCP/SCU role selection: a requester may be the SCP of storage SOP classes (to receive
/// C-GET sub-operations) and of storage commitment (to report on instances we forwarded to
/// it); other proposals get the default roles.
struct Roles;

impl Negotiation for Roles {
    fn negotiate_roles(&self, sop_class_uid: &str, scu: bool, scp: bool) -> Option<RequestorRoles> {
        let storage = storage_sop_classes().iter().any(|c| c == sop_class_uid);
        let commitment = sop_class_uid == commit::STORAGE_COMMITMENT;
        (storage || commitment).then_some(RequestorRoles { scu, scp })
    }
}

/// What an association may be: our AE title, who may call, the SOP classes, transfer
/// syntaxes and roles offered.
fn offer(config: &DimseConfig) -> ServerAssociationOptions<'static, AeRules, Roles> {
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(AeRules {
            allowed_calling: config.allowed_calling_aes.clone(),
        })
        .ae_title(config.ae_title.to_string())
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
    options
}

/// The DIMSE listeners: plain TCP, DICOM TLS, or both.
pub struct Listeners {
    pub plain: Option<TcpListener>,
    pub tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
}

/// How long a peer has to complete the TLS handshake and the association negotiation.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What both listeners offer; the TLS one with its server configuration.
struct Offers {
    plain: ServerAssociationOptions<'static, AeRules, Roles>,
    tls: Option<ServerAssociationOptions<'static, AeRules, Roles>>,
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Accept associations on both listeners until `shutdown` resolves, at most
/// `dimse.max_associations` at a time; then give those in progress `dimse.drain_secs` to
/// finish.
pub async fn serve(
    listeners: Listeners,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let offers = Arc::new(Offers {
        plain: offer(&ctx.config.dimse),
        tls: listeners
            .tls
            .as_ref()
            .map(|(_, config)| offer(&ctx.config.dimse).tls_config(config.clone())),
    });
    let tls_listener = listeners.tls.as_ref().map(|(l, _)| l);
    let slots = Arc::new(Semaphore::new(ctx.config.dimse.max_associations.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut running = tokio::task::JoinSet::new();
    loop {
        let (accepted, secure) = tokio::select! {
            _ = &mut shutdown => break,
            a = accept(listeners.plain.as_ref()) => (a, false),
            a = accept(tls_listener) => (a, true),
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a DIMSE connection failed");
                continue;
            }
        };
        // Reap finished associations so the set only holds running ones.
        while running.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many associations; closing the connection");
            continue;
        };
        let (offers, ctx) = (offers.clone(), ctx.clone());
        running.spawn(async move {
            let _ = socket.set_nodelay(true);
            match secure {
                false => associate_plain(socket, peer, &offers.plain, ctx).await,
                true => {
                    let tls = offers.tls.as_ref().expect("a TLS listener has its offer");
                    associate_tls(socket, peer, tls, ctx).await
                }
            }
            drop(permit);
        });
    }
    drain(running, Duration::from_secs(ctx.config.dimse.drain_secs)).await;
}

/// Negotiate one association over plain TCP and run it to its end.
async fn associate_plain(
    socket: TcpStream,
    peer: SocketAddr,
    options: &Options,
    ctx: Arc<Context>,
) {
    let negotiated =
        tokio::time::timeout(NEGOTIATION_TIMEOUT, options.establish_async(socket)).await;
    match negotiated {
        Ok(Ok(association)) => run(association, peer, ctx).await,
        Ok(Err(dicom_ul::association::Error::TlsNotSupported)) => {
            refused(peer, "a TLS handshake on the plain DIMSE port");
        }
        Ok(Err(e)) => refused(peer, &super::causes(&e)),
        Err(_) => refused(peer, "no association request in time"),
    }
}

/// The TLS handshake, then the negotiation, then the association to its end.
async fn associate_tls(socket: TcpStream, peer: SocketAddr, options: &Options, ctx: Arc<Context>) {
    use dicom_ul::association::Error as E;
    let negotiated =
        tokio::time::timeout(NEGOTIATION_TIMEOUT, options.establish_tls_async(socket)).await;
    let reason = match &negotiated {
        Ok(Ok(_)) => None,
        Ok(Err(E::TlsHandshake { source, .. })) => Some(crate::tls::refusal(source)),
        Ok(Err(E::TlsConnection { source, .. })) => Some(crate::tls::refusal(source)),
        Ok(Err(_)) => None,
        Err(_) => Some("timeout"),
    };
    if let Some(reason) = reason {
        ctx.metrics()
            .tls_handshakes_refused
            .with_label_values(&["dimse", reason])
            .inc();
    }
    match negotiated {
        Ok(Ok(association)) => run(association, peer, ctx).await,
        Ok(Err(e)) => refused(
            peer,
            &format!(
                "{e}{}",
                reason.map(|r| format!(" ({r})")).unwrap_or_default()
            ),
        ),
        Err(_) => refused(peer, "no TLS handshake and association request in time"),
    }
}

type Options = ServerAssociationOptions<'static, AeRules, Roles>;

fn refused(peer: SocketAddr, why: &str) {
    crate::metrics::get()
        .dimse_associations
        .with_label_values(&["rejected"])
        .inc();
    tracing::info!(%peer, error = why, "association not established");
}

async fn run<S>(association: AsyncServerAssociation<S>, peer: SocketAddr, ctx: Arc<Context>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    AsyncServerAssociation<S>: Connection,
{
    let m = ctx.metrics();
    m.dimse_associations
        .with_label_values(&["established"])
        .inc();
    m.dimse_active.inc();
    super::session::run(association, ctx, peer.ip().to_string()).await;
    m.dimse_active.dec();
}

/// Stop accepting, then give the associations in progress time to finish their work.
async fn drain(mut running: tokio::task::JoinSet<()>, deadline: Duration) {
    tracing::info!(
        associations = running.len(),
        "DIMSE listener stopped; draining associations"
    );
    let drained = tokio::time::timeout(deadline, async {
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
