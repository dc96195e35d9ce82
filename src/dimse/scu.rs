//! Associations this server opens itself, over TCP or TLS: to C-MOVE destinations and, for
//! storage commitment, back to a requester whose association has closed. The negotiation is
//! dicom-ul's; afterwards the association runs on [`link`](super::link) like an accepted one,
//! with a reader task that hands responses to the requests waiting for them.

use std::sync::Arc;
use std::time::Duration;

use dicom_ul::association::client::{AsyncClientAssociation, ClientAssociationOptions};
use dicom_ul::pdu::Pdu;
use tokio::io::{AsyncRead, AsyncWrite};

use super::link::{self, Assembler, Received, Writer, MAX_PDU};
use super::transport::Connection;
use super::PresentationContext;
use crate::config::Destination;
use crate::model::AeTitle;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to propose: abstract syntax, transfer syntaxes, and whether we ask to be its SCP.
pub struct Proposal {
    pub abstract_syntax: String,
    pub transfer_syntaxes: Vec<String>,
}

/// An association we requested.
pub struct Peer {
    pub writer: Arc<Writer>,
    pub contexts: Vec<PresentationContext>,
    reader: tokio::task::JoinHandle<()>,
}

/// Why no association was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The peer answered but accepted none of the proposed presentation contexts: it takes
    /// none of these SOP classes (in these transfer syntaxes), and asking again will not
    /// change that.
    NoContext(String),
    /// Anything else: unreachable, rejected, timed out, TLS.
    Failed(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::NoContext(why) | ConnectError::Failed(why) => f.write_str(why),
        }
    }
}

/// Open an association to `dest`, over TLS when it says so. `scp_roles` lists the SOP
/// classes for which we ask to be the SCP (SCP/SCU role selection, PS3.7 D.3.3.4).
pub async fn connect(
    dest: &Destination,
    calling_ae: &AeTitle,
    proposals: &[Proposal],
    scp_roles: &[&str],
) -> Result<Peer, ConnectError> {
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(calling_ae.to_string())
        .called_ae_title(dest.ae.to_string())
        .max_pdu_length(MAX_PDU)
        .connection_timeout(CONNECT_TIMEOUT)
        .read_timeout(CONNECT_TIMEOUT);
    for p in proposals {
        options = options
            .with_presentation_context(p.abstract_syntax.clone(), p.transfer_syntaxes.clone());
    }
    for class in scp_roles {
        options = options.with_role_selection(class.to_string(), false, true);
    }
    let address = (dest.host.as_str(), dest.port);
    let failed = |e: dicom_ul::association::Error| {
        let why = format!(
            "association with {} at {}:{}{} failed: {}",
            dest.ae,
            dest.host,
            dest.port,
            if dest.tls { " over TLS" } else { "" },
            super::causes(&e)
        );
        match e {
            dicom_ul::association::Error::NoAcceptedPresentationContexts { .. } => {
                ConnectError::NoContext(why)
            }
            _ => ConnectError::Failed(why),
        }
    };
    let late = || {
        ConnectError::Failed(format!(
            "no association with {} within {CONNECT_TIMEOUT:?}",
            dest.ae
        ))
    };
    if dest.tls {
        let config = crate::tls::client(dest).map_err(|e| ConnectError::Failed(e.to_string()))?;
        let options = options.tls_config(config).server_name(&dest.host);
        let association =
            tokio::time::timeout(CONNECT_TIMEOUT, options.establish_tls_async(address))
                .await
                .map_err(|_| late())?
                .map_err(failed)?;
        finish(association, dest)
    } else {
        let association = tokio::time::timeout(CONNECT_TIMEOUT, options.establish_async(address))
            .await
            .map_err(|_| late())?
            .map_err(failed)?;
        finish(association, dest)
    }
}

/// The negotiated association as a link, with a task reading the peer's responses.
fn finish<S>(
    association: AsyncClientAssociation<S>,
    dest: &Destination,
) -> Result<Peer, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    AsyncClientAssociation<S>: Connection,
{
    let contexts = PresentationContext::accepted(association.presentation_contexts(), |_| true);
    let peer_max = association.acceptor_max_pdu_length();
    let (reader, writer) = association.into_link(peer_max).map_err(|e| {
        ConnectError::Failed(format!("cannot use the connection to {}: {e}", dest.ae))
    })?;
    let reader = tokio::spawn(read_responses(reader, writer.clone()));
    Ok(Peer {
        writer,
        contexts,
        reader,
    })
}

/// Hand the peer's responses to the requests waiting for them, until the association ends.
async fn read_responses(mut reader: link::Reader, w: Arc<Writer>) {
    let mut assembler = Assembler::default();
    loop {
        match reader.next().await {
            Ok(Received::Data(values)) => {
                for pdv in values {
                    if !pdv.command {
                        continue;
                    }
                    if let Some(Ok(command)) = assembler.command_fragment(&pdv.data, pdv.last) {
                        if !w.deliver(command) {
                            tracing::debug!("unexpected message from a peer we called");
                        }
                    }
                }
            }
            Ok(Received::Other(Pdu::ReleaseRQ)) => {
                let _ = w.control(&Pdu::ReleaseRP).await;
                break;
            }
            Ok(Received::Other(Pdu::ReleaseRP | Pdu::AbortRQ { .. })) | Err(_) => break,
            Ok(Received::Other(other)) => {
                tracing::warn!(pdu = %other.short_description(), "unexpected PDU from a peer we called");
                break;
            }
        }
    }
    w.mark_closed();
}

impl Peer {
    /// Release the association (and wait, briefly, for the peer's answer).
    pub async fn release(self) {
        if self.writer.is_open() && self.writer.control(&Pdu::ReleaseRQ).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), self.reader).await;
        } else {
            self.reader.abort();
        }
        self.writer.close().await;
    }
}
