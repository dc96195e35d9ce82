//! The DICOM format: everything that knows how DICOM bytes are laid out.
//!
//! - [`walker`] reads element headers from the raw encoding and skips values; under it
//!   [`frames`] locates the file meta group, Pixel Data and every frame's byte ranges
//!   without decoding, and `nesting` checks that a data set is safe to hand to a
//!   recursive parser (nesting depth, whole binary values).
//! - [`header`] parses and checks one object as ingest stores it and extracts what the
//!   index keeps ([`attributes`], [`json`]: DICOM JSON with BulkDataURIs).
//! - [`open`] opens stored objects with dicom-object as ingest tolerates them; [`meta`]
//!   writes file meta groups; [`text`] reads values (and folds names for matching).
//!
//! Pure format code: it imports nothing of ours but `model`, does no I/O of its own beyond
//! the reader it is handed (or the file path it is given), and is called by `ingest/`,
//! `index/` (name folding), `render/`, `dimse/` (command sets and identifiers), `verify`
//! and the `sync` client.

pub mod attributes;
pub mod capture;
pub mod deidentify;
pub mod frames;
pub mod header;
pub mod json;
pub mod meta;
mod nesting;
pub mod open;
pub mod rle;
mod seekbuf;
pub mod text;
mod walker;

pub use attributes::{SeriesAttributes, StudyAttributes};
pub use header::{
    check_sop_class, is_storage_class, parse as parse_header, Header, HeaderError, Problem,
};
pub use nesting::check_data_set;
pub use open::{open_file, DicomFile};
pub use text::{fold as fold_name, text as element_text};
