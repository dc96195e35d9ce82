//! C-STORE (PS3.4 Annex B): the data set arrives in P-DATA fragments; it is written to an
//! ingest spool behind a file meta group built from the command and the presentation
//! context (`dicom::meta`), then stored through the one ingest path. Whatever happens —
//! a command without its UIDs, a data set over the size limit, a header that does not
//! parse — the C-STORE gets one ingest outcome, counted by ingest, and its status from
//! `status.rs`.

use super::command::Command;
use crate::ingest::{Expected, Ingest, Outcome, Reason, Receiving, Rejection};
use crate::model::{AeTitle, Origin, OriginKind, TransferSyntax, Uid};

/// A C-STORE in progress: the spool its data set streams into, or the outcome that refused
/// it already (the rest of the data set is then discarded).
pub struct Incoming {
    receiving: Result<Receiving, Outcome>,
}

impl Incoming {
    /// Start receiving the data set of `command` (sent on a context of transfer syntax
    /// `ts`): write the file meta group it will be stored behind.
    pub async fn start(
        ingest: &Ingest,
        command: &Command,
        ts: &TransferSyntax,
        calling: &AeTitle,
        peer: &str,
    ) -> Incoming {
        let origin = Origin::new(OriginKind::CStore, calling.as_str(), Some(peer.to_owned()));
        let (Some(class), Some(instance)) =
            (&command.affected_sop_class, &command.affected_sop_instance)
        else {
            let detail = "the C-STORE-RQ has no Affected SOP Class or Instance UID";
            let refused = ingest.refuse(&origin, Rejection::new(Reason::CannotUnderstand, detail));
            return Incoming {
                receiving: Err(refused),
            };
        };
        let head =
            match crate::dicom::meta::part10_head(class, instance, ts.as_str(), calling.as_str()) {
                Ok(head) => head,
                Err(e) => {
                    let detail = format!("no file meta group can be made for this C-STORE: {e}");
                    let refused =
                        ingest.refuse(&origin, Rejection::new(Reason::CannotUnderstand, detail));
                    return Incoming {
                        receiving: Err(refused),
                    };
                }
            };
        let mut incoming = Incoming {
            receiving: ingest.receive(origin),
        };
        incoming.write(&head).await;
        incoming
    }

    /// Append a fragment of the data set (discarded once the C-STORE was refused).
    pub async fn write(&mut self, fragment: &[u8]) {
        if let Ok(receiving) = &mut self.receiving {
            if let Err(refused) = receiving.write(fragment).await {
                self.receiving = Err(refused);
            }
        }
    }

    /// The data set is complete: store it (checked against the command's UIDs), and say
    /// how it went.
    pub async fn finish(self, ingest: &Ingest, command: &Command) -> Outcome {
        let receiving = match self.receiving {
            Ok(receiving) => receiving,
            Err(refused) => return refused,
        };
        let expected = Expected {
            sop_instance_uid: command
                .affected_sop_instance
                .as_deref()
                .and_then(|u| Uid::parse(u).ok()),
            sop_class_uid: command
                .affected_sop_class
                .as_deref()
                .and_then(|u| Uid::parse(u).ok()),
            ..Default::default()
        };
        let origin = receiving.origin().clone();
        match receiving.finish().await {
            Ok(spooled) => ingest.store_spooled(spooled, origin, &expected).await,
            Err(refused) => refused,
        }
    }
}
