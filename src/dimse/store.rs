//! C-STORE (PS3.4 Annex B): the data set arrives in P-DATA fragments; it is written to the
//! ingest spool behind a file meta group built from the command and the presentation
//! context, then stored through the one ingest path. This file holds the one mapping from
//! ingest outcomes to DIMSE statuses.

use dicom_object::FileMetaTableBuilder;

use crate::ingest::{Expected, Ingest, Outcome, Reason};
use crate::model::Uid;
use crate::model::{Origin, OriginKind};
use crate::storage::Spool;

/// Implementation Class UID of pacs-lite (a UUID-derived UID, PS3.5 §B.2).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.302357268713390145383935512016432473441";
pub const IMPLEMENTATION_VERSION: &str = "PACSLITE_01";

/// The C-STORE-RSP status for an ingest outcome.
pub fn status(outcome: &Outcome) -> u16 {
    match outcome {
        Outcome::Stored(_) => 0x0000,
        Outcome::AlreadyStored(a) if a.kept_original => 0xB000,
        Outcome::AlreadyStored(_) => 0x0000,
        Outcome::Rejected(r) => match r.reason {
            Reason::CannotUnderstand | Reason::MissingAttribute | Reason::InvalidUid => 0xC000,
            Reason::UnsupportedTransferSyntax => 0xC000,
            Reason::SopClassNotSupported => 0x0122,
            Reason::DataSetMismatch | Reason::StudyUidMismatch => 0xA900,
            // Another version of this SOP Instance is stored (and kept): an error of the
            // "cannot understand" family, 0xC111 echoing DIMSE's 0x0111 Duplicate SOP Instance.
            Reason::ConflictingDuplicate => 0xC111,
            Reason::TooLarge | Reason::OutOfResources => 0xA700,
            Reason::ProcessingFailure => 0x0110,
        },
    }
}

/// A C-STORE in progress: the spool the data set streams into.
pub struct Incoming {
    spool: Spool,
    sop_class: String,
    sop_instance: String,
}

impl Incoming {
    /// Start receiving: write the file meta group for the data set that follows.
    pub async fn start(
        ingest: &Ingest,
        sop_class: &str,
        sop_instance: &str,
        transfer_syntax: &str,
        calling_ae: &str,
    ) -> Result<Incoming, u16> {
        let mut spool = ingest.start_spool().map_err(|_| 0xA700u16)?;
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(sop_class)
            .media_storage_sop_instance_uid(sop_instance)
            .transfer_syntax(transfer_syntax)
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION)
            .source_application_entity_title(calling_ae)
            .build()
            .map_err(|_| 0xC000u16)?;
        let mut head = vec![0u8; 128];
        head.extend_from_slice(b"DICM");
        meta.write(&mut head).map_err(|_| 0xC000u16)?;
        spool.write(&head).await.map_err(|_| 0xA700u16)?;
        Ok(Incoming {
            spool,
            sop_class: sop_class.to_owned(),
            sop_instance: sop_instance.to_owned(),
        })
    }

    /// Append a fragment of the data set; Err(status) when it cannot be kept.
    pub async fn write(&mut self, fragment: &[u8]) -> Result<(), u16> {
        self.spool.write(fragment).await.map_err(|e| match e {
            crate::storage::StorageError::TooLarge { .. } => 0xA700,
            _ => 0xA700,
        })
    }

    /// The data set is complete: store it, and say how it went.
    pub async fn finish(self, ingest: &Ingest, calling_ae: &str, peer: &str) -> Outcome {
        let expected = Expected {
            sop_instance_uid: Uid::parse(&self.sop_instance).ok(),
            sop_class_uid: Uid::parse(&self.sop_class).ok(),
            ..Default::default()
        };
        let origin = Origin {
            kind: OriginKind::CStore,
            who: calling_ae.to_owned(),
            address: Some(peer.to_owned()),
        };
        match self.spool.finish().await {
            Ok(spooled) => ingest.store_spooled(spooled, origin, &expected).await,
            Err(e) => Outcome::Rejected(crate::ingest::Rejection {
                reason: Reason::OutOfResources,
                detail: e.to_string(),
                sop_class_uid: Some(self.sop_class),
                sop_instance_uid: Some(self.sop_instance),
            }),
        }
    }
}
