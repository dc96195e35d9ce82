//! The shared handle every protocol adapter gets: the services below the protocols, built
//! once by `app.rs` and passed down, never reached back for.
//!
//! The pattern is Orthanc's `ServerContext` and mini-redis's `Db`: DICOMweb handlers,
//! DIMSE associations, the upload API, the radiology API, the viewer and the admin routes
//! all hold an `Arc<Context>` and call the one ingest path, the index, the object store and
//! the signer through it. Nothing here speaks a protocol; only the public base URL of a
//! request (which every HTTP adapter that writes absolute URLs needs) is worked out here.

use axum::http::HeaderMap;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use crate::auth::Auth;
use crate::config::Config;
use crate::index::read::InstanceLocation;
use crate::index::Index;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::storage::{StorageError, Store};

/// The bytes of an instance, streamed.
pub type InstanceStream = BoxStream<'static, Result<Bytes, StorageError>>;

mod urls;

/// What every adapter works with.
pub struct Context {
    pub config: Config,
    /// The one ingest path (it holds the index and the object store).
    pub ingest: Ingest,
    /// Principals, API keys, JWTs, study tokens and URL signatures.
    pub auth: Auth,
}

impl Context {
    pub fn new(config: Config, ingest: Ingest, auth: Auth) -> Self {
        Context {
            config,
            ingest,
            auth,
        }
    }

    pub fn index(&self) -> &Index {
        self.ingest.index()
    }

    pub fn store(&self) -> &Store {
        self.ingest.store()
    }

    /// The process-wide metrics.
    pub fn metrics(&self) -> &'static Metrics {
        crate::metrics::get()
    }

    /// The `scheme://host[:port]` clients reach this server by: the configured
    /// `http.public_base_url`, else what the request's `Forwarded` / `X-Forwarded-*` /
    /// `Host` headers say (`https` by default when the listener speaks TLS).
    pub fn base_url(&self, headers: &HeaderMap) -> String {
        let scheme = match self.config.http.tls {
            Some(_) => "https",
            None => "http",
        };
        urls::base_url(self.config.http.public_base_url.as_deref(), scheme, headers)
    }

    /// The Part-10 bytes of a stored instance, streamed: the object as stored, with the
    /// preamble and `DICM` in front that it lacks, if it lacks them. Its length is
    /// `loc.size + loc.part10_prefix`.
    pub async fn instance_stream(
        &self,
        loc: &InstanceLocation,
    ) -> Result<InstanceStream, StorageError> {
        let body = self.store().stream(&loc.object_key, None).await?;
        Ok(match crate::dicom::meta::missing_head(loc.part10_prefix) {
            None => body,
            Some(head) => stream::once(async move { Ok(Bytes::from(head)) })
                .chain(body)
                .boxed(),
        })
    }

    /// The Part-10 bytes of a stored instance as mapped from the page cache (see
    /// `storage::mapped`): the head it lacks, if any, then the object; `None` unless the
    /// store is a filesystem and the kernel holds the whole object. Never waits.
    pub fn instance_mapped(&self, loc: &InstanceLocation) -> Option<Vec<Bytes>> {
        let object = self.store().mapped(&loc.object_key, None)?;
        let head = crate::dicom::meta::missing_head(loc.part10_prefix);
        Some(head.map(Bytes::from).into_iter().chain([object]).collect())
    }

    /// The Part-10 bytes of a stored instance in one buffer (for small ones: one read).
    pub async fn instance_whole(&self, loc: &InstanceLocation) -> Result<Bytes, StorageError> {
        let head = crate::dicom::meta::missing_head(loc.part10_prefix).unwrap_or_default();
        self.store().read_after(&loc.object_key, head).await
    }
}
