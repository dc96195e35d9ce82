//! DIMSE: the DICOM upper-layer service for modalities and other PACS.
//!
//! Owns every PDU: [`association`] accepts associations (storage SOP classes from the
//! dictionary plus Verification; every transfer syntax dicom-rs reads) and assembles
//! messages; one file per service maps it onto the shared layers: [`echo`] (C-ECHO) and
//! [`store`] (C-STORE through the one ingest path) and [`find`] (C-FIND on the QIDO query
//! model). Started by `app.rs`.

mod association;
pub mod command;
mod echo;
pub mod find;
pub mod store;

pub use association::{serve, storage_sop_classes, transfer_syntaxes};
