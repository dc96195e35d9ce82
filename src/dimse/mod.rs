//! DIMSE: the DICOM upper-layer service for modalities and other PACS.
//!
//! [`association`] accepts associations (storage SOP classes from the dictionary,
//! Verification, Query/Retrieve FIND/MOVE/GET in both information models, Storage
//! Commitment; every transfer syntax dicom-rs reads) and dispatches messages; [`link`] is the
//! message layer both accepted and requested associations run on; [`scu`] opens associations
//! (C-MOVE destinations, storage commitment reports). One file per service maps it onto the
//! shared layers: [`echo`], [`store`] (C-STORE through the one ingest path), [`find`] (C-FIND
//! on the QIDO query model), [`retrieve`] (C-MOVE, C-GET), [`commit`] (storage commitment).
//! Statuses have names, in [`status`], which also holds the one mapping from ingest
//! outcomes to C-STORE statuses. Every association gets the shared `Context`; started by
//! `app.rs`.

mod association;
pub mod command;
pub mod commit;
pub mod commit_scu;
mod echo;
pub mod find;
mod link;
pub mod mpps;
pub mod push;
pub mod retrieve;
mod scu;
mod session;
pub mod status;
pub mod store;
mod transport;
pub mod worklist;

pub use association::{serve, storage_sop_classes, transfer_syntaxes, Listeners, SERVICE_CLASSES};
pub use link::{parse_pdata, Assembler, DataSet, Value, MAX_COMMAND};
pub use scu::{connect, ConnectError, Peer, Proposal};
pub use status::Status;

use crate::model::TransferSyntax;

/// An accepted presentation context.
#[derive(Debug, Clone)]
pub struct PresentationContext {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntax: TransferSyntax,
    /// Whether the peer may act as SCP of the abstract syntax (receive C-STORE from us).
    pub peer_is_scp: bool,
}

impl PresentationContext {
    /// The accepted contexts of a negotiation; `peer_is_scp` tells the peer's role for an
    /// abstract syntax.
    pub fn accepted(
        negotiated: &[dicom_ul::pdu::PresentationContextNegotiated],
        peer_is_scp: impl Fn(&str) -> bool,
    ) -> Vec<PresentationContext> {
        negotiated
            .iter()
            .filter(|pc| pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance)
            .filter_map(|pc| {
                Some(PresentationContext {
                    id: pc.id,
                    abstract_syntax: pc.abstract_syntax.clone(),
                    transfer_syntax: TransferSyntax::parse(&pc.transfer_syntax).ok()?,
                    peer_is_scp: peer_is_scp(&pc.abstract_syntax),
                })
            })
            .collect()
    }
}

/// An error and its causes, on one line.
pub(crate) fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
