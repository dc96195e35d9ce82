//! pacs-lite: a small, durable DICOM archive and gateway.
//!
//! # Layout
//! - [`config`]: one typed `Config` (defaults < TOML < `PACS_*`).
//! - [`app`]: wiring and lifecycle of the server.
//! - [`model`]: domain newtypes parsed at the boundary (UIDs, …).
//! - [`ingest`]: the one path every entry point stores through, and its outcomes.
//! - [`index`]: the only module that speaks SQL (SQLite or PostgreSQL).
//! - [`storage`]: the only module that touches objects (filesystem or S3 via opendal).
//! - [`dimse`]: the DICOM upper layer (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, commitment).
//! - [`dicomweb`]: the DICOMweb HTTP routes (STOW-RS, QIDO-RS, WADO-RS).
//! - [`auth`]: principals, roles, API keys, JWTs, study tokens, signed URLs; the middleware.
//! - [`radiology`]: the hospital app's REST API (router, errors, orders, viewer endpoints).
//! - [`uploads`]: the offline upload flow (metadata → binary → acknowledge).
//! - [`sync`]: the reference offline client (`pacs-lite sync`).
//! - [`render`]: rendered images and thumbnails (decode, window, scale, encode).
//! - [`viewer`]: the OHIF viewer served same-origin.
//! - [`import`], [`verify`]: the `import` and `verify` commands.

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod context;
pub mod dicom;
pub mod dicomweb;
pub mod dimse;
pub mod http;
pub mod import;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod radiology;
pub mod render;
pub mod storage;
pub mod sync;
pub mod uploads;
pub mod verify;
pub mod viewer;
