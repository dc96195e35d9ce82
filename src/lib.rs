//! pacs-lite: a small, durable DICOM archive and gateway. Modalities push over DIMSE,
//! viewers read (and write) over DICOMweb, the hospital app uploads over a REST flow with
//! acknowledgements — and all of them share one study → series → instance model, one
//! ingest path, one index and one object store.
//!
//! # Layers
//!
//! Modules are stacked; imports run one way, from a module to those below it, never up
//! and never sideways into a cycle (`scripts/check_layers.py`, run by `scripts/test.sh`,
//! fails the build otherwise; its list is this one, bottom first).
//!
//! ```text
//! main.rs      the command: serve | import | verify | migrate | sync | api-key | retention | compress
//! app          assembly: back ends, context, listeners, background work, shutdown
//! http         router, middleware (authorization, metrics, CORS), /metrics, /readyz,
//!              the listeners (plain TCP with zero-copy sends, TLS)
//! ── protocol adapters: parse into domain types, call the context, render the answer
//! sync, import, viewer, forward, hl7, dimse, admin, uploads, radiology, dicomweb
//! ── services
//! context      the handle every adapter gets: config, ingest (index, store), auth
//! worklist, retention, compress, verify, render, auth, ingest
//! ── storage and index
//! index, storage
//! ── foundations
//! tls, metrics, config, dicom, model
//! ```
//!
//! (Each line lists its modules from the top down: an adapter may import the adapters
//! listed after it on its line — `uploads` takes the REST errors of `radiology`, `admin`
//! the resource paths of `dicomweb` — never those before.)
//!
//! # Where each concern lives
//!
//! - [`model`]: domain types parsed once at the boundary and trusted inside — [`model::Uid`],
//!   [`model::AeTitle`], [`model::TransferSyntax`], dates and ranges, [`model::Sha256`],
//!   [`model::ObjectKey`], [`model::OrderId`], roles, an instance's [`model::Origin`], the
//!   query model of QIDO-RS and C-FIND, the clock. No I/O.
//! - [`dicom`]: the format — element walker, frame tables, header parsing and checks,
//!   DICOM JSON, file meta groups, photos as Secondary Capture. Only `dicom` knows how
//!   DICOM bytes are laid out.
//! - [`config`] (defaults < TOML < `PACS_*`) and [`metrics`] (the process-wide registry).
//! - [`tls`]: rustls for the HTTPS and DICOM TLS listeners (certificates re-read when their
//!   files change, mutual TLS) and for the associations we open.
//! - [`storage`]: every object and file access (opendal: filesystem or S3), the spool,
//!   the object journal and durable puts. [`index`]: every SQL statement (SQLite or
//!   PostgreSQL), the group-committing writers, typed rows.
//! - [`ingest`]: the one path every instance is stored through, and its
//!   [`ingest::Outcome`] — the only source of ingest metrics and store audit events.
//!   [`auth`]: principals, API keys, JWTs, study tokens, signed URLs. [`render`]: rendered
//!   images, thumbnails, transcoding. [`verify`]: re-hashing, orphans, start-up recovery.
//!   [`compress`]: lossless re-encoding at rest, verified pixel for pixel.
//!   [`retention`]: local cache mode. [`worklist`]: the rules for writing orders (shared
//!   by REST and HL7) and the MPPS state machine.
//! - [`context`]: the [`context::Context`] every adapter holds.
//! - Adapters: [`dicomweb`] (STOW-RS, QIDO-RS, WADO-RS, WADO-URI, the change feed), [`dimse`]
//!   (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, storage commitment, Modality Worklist, MPPS),
//!   [`hl7`] (orders in over MLLP), [`forward`] (store-and-forward), [`uploads`] (the
//!   offline upload flow), [`radiology`] (the hospital app's REST API), [`admin`]
//!   (deletes, the audit trail), [`viewer`] (OHIF same-origin), [`import`] and the
//!   [`sync`] client. Each maps the ingest outcome to its protocol in one file:
//!   `dicomweb/stow.rs` (STOW failure reasons), `dimse/status.rs` (DIMSE statuses),
//!   `uploads/outcome.rs` (REST error codes).
//! - [`http`]: the HTTP face; [`app`]: start-up and shutdown.
//!
//! # One STOW-RS request, file by file
//!
//! `POST /dicom-web/studies` reaches `http/mod.rs` (the router), passes `http/metrics.rs`
//! (timing) and `http/auth.rs` (the bearer token checked by `auth/`, the uploader role
//! required by `http/policy.rs`), and lands in `dicomweb/stow.rs`. There each multipart
//! part streams into `ingest::Ingest::spool` (`ingest/mod.rs`), which writes it through a
//! SHA-256 hasher into `storage/spool.rs`, and is handed to `Ingest::store_spooled` on a
//! task of its own while the next part is read. `ingest/pipeline.rs` parses the header on
//! a blocking thread with `dicom/header.rs` (walker, frames, attributes, JSON), checks it
//! against the URL's study, puts the object under its `model::ObjectKey` through
//! `storage/mod.rs` (the journal in `storage/journal.rs`, or `storage/local.rs` with its
//! own flushes; S3 through opendal) and queues its row for `index/sqlite_writer.rs` (or
//! `index/writer.rs` on PostgreSQL), which commits it with its neighbours' rows, its change
//! feed entry and its audit event. The `ingest::Outcome` comes back, is counted in
//! `ingest/outcome.rs`, and `dicomweb/stow.rs` turns the outcomes of all parts into the
//! response (ReferencedSOPSequence, FailedSOPSequence with failure reasons).
//!
//! # One C-STORE, file by file
//!
//! `dimse/association.rs` accepts the association (AE titles, SOP classes, transfer
//! syntaxes offered), and `dimse/session.rs` runs it: P-DATA values are assembled into a
//! command by `dimse/link.rs` and decoded by `dimse/command.rs`. A C-STORE-RQ starts a
//! `dimse/store.rs` `Incoming`: `Ingest::receive` opens a spool, the file meta group from
//! `dicom/meta.rs` is written first, then every data fragment as it arrives (a spool that
//! fills past `ingest.max_instance_bytes` becomes the instance's counted refusal). With the
//! last fragment the spooled object goes to `Ingest::store_spooled` — the same pipeline as
//! STOW-RS, with the command's SOP Class and Instance UIDs as expectations — and
//! `dimse/status.rs` maps the outcome to the C-STORE-RSP status.

pub mod admin;
pub mod app;
pub mod auth;
pub mod compress;
pub mod config;
pub mod context;
pub mod dicom;
pub mod dicomweb;
pub mod dimse;
pub mod forward;
pub mod hl7;
pub mod http;
pub mod import;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod radiology;
pub mod render;
pub mod retention;
pub mod storage;
pub mod sync;
pub mod tls;
pub mod uploads;
pub mod verify;
pub mod viewer;
pub mod worklist;
