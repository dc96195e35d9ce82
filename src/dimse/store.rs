//! C-STORE (PS3.4 Annex B): the data set arrives in P-DATA fragments; it is written to an
//! ingest spool behind a file meta group built from the command and the presentation
//! context (`dicom::meta`), then stored through the one ingest path. Whatever happens —
//! a command without its UIDs, a data set over the size limit, a header that does not
//! parse — the C-STORE gets one ingest outcome, counted by ingest, and its status from
//! `status.rs`. The storing and the answer run on a blocking thread of their own
//! (`session.rs`), so an instance passes through no other thread once received.

use super::command::Command;
use crate::ingest::{Expected, Ingest, Outcome, Reason, Receiving, Rejection};
use crate::model::{AeTitle, Origin, OriginKind, TransferSyntax, Uid};
use crate::storage::SpooledFile;

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

    /// The data set is complete: the spooled instance and what the command says it is,
    /// ready for [`Ingest::store_spooled_here`] — or the outcome that refused it.
    pub async fn finish(self, command: &Command) -> Result<Spooled, Outcome> {
        let receiving = self.receiving?;
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
        let spooled = receiving.finish().await?;
        Ok(Spooled {
            spooled,
            origin,
            expected,
        })
    }
}

/// A C-STORE's data set, spooled: to be stored (blocking) by [`Spooled::store`].
pub struct Spooled {
    spooled: SpooledFile,
    origin: Origin,
    expected: Expected,
}

impl Spooled {
    /// Store it through the one ingest path, on this blocking thread. A panic on the way
    /// (a bug) is a counted processing failure, so that the C-STORE still gets its answer.
    pub fn store(self, ingest: &Ingest, runtime: &tokio::runtime::Handle) -> Outcome {
        let origin = self.origin.clone();
        let stored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ingest.store_spooled_here(self.spooled, self.origin, &self.expected, runtime)
        }));
        stored.unwrap_or_else(|_| {
            let detail = "storing the instance failed (an internal error, logged)";
            ingest.refuse(&origin, Rejection::new(Reason::ProcessingFailure, detail))
        })
    }
}
