//! The one ingest path. C-STORE, STOW-RS, the offline upload API, `import` and recovery all
//! hand their bytes here and get an [`Outcome`] back; each entry point maps it to its own
//! protocol in one place (`dicomweb/stow.rs`, `dimse/status.rs`, `uploads/outcome.rs`).
//!
//! The steps, in order: stream the bytes to a spool (in memory up to 1 MiB, a file beyond)
//! while hashing SHA-256 → parse the header (up to Pixel Data) and locate the frames →
//! check it → put the object durably → commit the index row → answer ([`pipeline`]). Every
//! outcome is counted once, in [`outcome`], whichever step decided it — a body that broke
//! off while spooling and a size limit passed included. Only `ingest/` decides what is
//! stored.
//!
//! Below: `storage` (spool, puts), `index` (the row), `dicom` (the header). Above: the
//! context that hands [`Ingest`] to every adapter.

mod commit;
mod outcome;
mod pipeline;
mod routes;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{Stream, StreamExt};

pub use outcome::{Accepted, Outcome, Reason, Rejection};

use crate::config::ConflictPolicy;
use crate::index::Index;
use crate::model::{Origin, Uid};
use crate::storage::{Spool, SpooledFile, StorageError, Store};

pub use routes::Routes;

/// What the request itself says about the instance, checked against the data set.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub study_uid: Option<Uid>,
    pub series_uid: Option<Uid>,
    pub sop_instance_uid: Option<Uid>,
    pub sop_class_uid: Option<Uid>,
}

#[derive(Clone)]
pub struct Ingest {
    store: Store,
    index: Index,
    on_conflict: ConflictPolicy,
    max_instance_bytes: u64,
    routes: Arc<Routes>,
    commits: Arc<commit::Commits>,
}

impl Ingest {
    pub fn new(
        store: Store,
        index: Index,
        on_conflict: ConflictPolicy,
        max_instance_bytes: u64,
    ) -> Self {
        Ingest {
            store,
            index,
            on_conflict,
            max_instance_bytes,
            routes: Arc::new(Routes::default()),
            commits: Arc::default(),
        }
    }

    /// Forward what these rules match: each instance indexed gets its outbox jobs in the
    /// same transaction.
    pub fn with_routes(mut self, routes: Routes) -> Self {
        self.routes = Arc::new(routes);
        self
    }

    pub(crate) fn routes(&self) -> Arc<Routes> {
        self.routes.clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Ingest one Part-10 object arriving as a byte stream.
    #[tracing::instrument(skip_all, fields(origin = %origin.kind, who = %origin.who))]
    pub async fn ingest<S, E>(&self, body: S, origin: Origin, expected: &Expected) -> Outcome
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        match self.spool(&origin, body).await {
            Ok(spooled) => self.store_spooled(spooled, origin, expected).await,
            Err(refused) => refused,
        }
    }

    /// Ingest a file from disk (`import`); the file itself is left untouched.
    pub async fn ingest_file(&self, path: &Path, origin: Origin) -> Outcome {
        match tokio::fs::File::open(path).await {
            Ok(file) => {
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
                self.ingest(stream, origin, &Expected::default()).await
            }
            Err(e) => {
                let detail = format!("cannot open {}: {e}", path.display());
                self.refuse(&origin, Rejection::new(Reason::ProcessingFailure, detail))
            }
        }
    }

    /// First half of [`Ingest::ingest`]: stream the bytes into a new spool, hashing them.
    /// Entry points that receive several objects in a row (STOW multipart) spool each as
    /// it arrives and run [`Ingest::store_spooled`] for it concurrently with the next. A
    /// body that breaks off ([`Reason::Truncated`]) or passes the size limit is a counted
    /// rejection.
    pub async fn spool<S, E>(&self, origin: &Origin, body: S) -> Result<SpooledFile, Outcome>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let mut receiving = self.receive(origin.clone())?;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => receiving.write(&chunk).await?,
                // The reason says the body broke off; the detail is what broke it.
                Err(e) => {
                    let refused = Rejection::new(Reason::Truncated, e.to_string());
                    return Err(self.refuse(origin, refused));
                }
            }
        }
        receiving.finish().await
    }

    /// Begin receiving one instance that the entry point writes piece by piece (C-STORE,
    /// which puts a file meta group in front of the data set it receives).
    // The error is the instance's one outcome, made once per instance: not worth a box.
    #[allow(clippy::result_large_err)]
    pub fn receive(&self, origin: Origin) -> Result<Receiving, Outcome> {
        match Spool::create(self.store.spool_dir(), self.max_instance_bytes) {
            Ok(spool) => Ok(Receiving { spool, origin }),
            Err(e) => Err(self.refuse(&origin, Rejection::from(e))),
        }
    }

    /// Second half of [`Ingest::ingest`]: parse, check, store and index a spooled object.
    pub async fn store_spooled(
        &self,
        spooled: SpooledFile,
        origin: Origin,
        expected: &Expected,
    ) -> Outcome {
        let started = Instant::now();
        let entry = origin.kind;
        let outcome = pipeline::store(self, spooled, origin, expected).await;
        outcome::count(entry, outcome, Some(started.elapsed()))
    }

    /// [`Ingest::store_spooled`] from a blocking thread, every step on it (`runtime`
    /// drives what is asynchronous from here): an entry point that answers from this
    /// thread as well (C-STORE) so hands its instance to no other thread on the way.
    pub fn store_spooled_here(
        &self,
        spooled: SpooledFile,
        origin: Origin,
        expected: &Expected,
        runtime: &tokio::runtime::Handle,
    ) -> Outcome {
        let started = Instant::now();
        let entry = origin.kind;
        let outcome = pipeline::store_here(self, spooled, origin, expected, runtime);
        outcome::count(entry, outcome, Some(started.elapsed()))
    }

    /// A refusal an entry point decided before the pipeline (a command without its UIDs, a
    /// part that is not DICOM, bytes that are not what the sender declared): counted like
    /// every other outcome.
    pub fn refuse(&self, origin: &Origin, rejection: Rejection) -> Outcome {
        outcome::count(origin.kind, Outcome::Rejected(rejection), None)
    }

    /// A spool for bytes that are not an instance yet (parts of offline uploads, photos to
    /// be wrapped), limited like instances.
    pub fn new_spool(&self) -> Result<Spool, StorageError> {
        Spool::create(self.store.spool_dir(), self.max_instance_bytes)
    }
}

/// An instance being received: its spool and where it comes from. Dropped midway (the
/// association broke), it leaves nothing behind.
pub struct Receiving {
    spool: Spool,
    origin: Origin,
}

impl Receiving {
    /// Append bytes; a failure (the size limit, no room) is the instance's counted outcome
    /// and the rest of it is to be discarded.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), Outcome> {
        match self.spool.write(bytes).await {
            Ok(()) => Ok(()),
            Err(e) => Err(outcome::count(
                self.origin.kind,
                Outcome::Rejected(Rejection::from(e)),
                None,
            )),
        }
    }

    /// All bytes are in: the spooled object, ready for [`Ingest::store_spooled`].
    pub async fn finish(self) -> Result<SpooledFile, Outcome> {
        match self.spool.finish().await {
            Ok(spooled) => Ok(spooled),
            Err(e) => Err(outcome::count(
                self.origin.kind,
                Outcome::Rejected(Rejection::from(e)),
                None,
            )),
        }
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}
