//! Certificates and keys from PEM files: read with errors that name the file, and a
//! server certificate that is re-read when its files change (or on SIGHUP) without a
//! restart. A bad file at a reload leaves the certificate in use as it was.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// How often the certificate and key files are looked at.
const POLL: Duration = Duration::from_secs(1);

/// Every certificate of a PEM file, in order (a chain: the end entity first).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |why: String| TlsError::File {
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE in the file".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        why: format!("no usable private key: {e}"),
    })
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(cert_file)?;
    let key = private_key(key_file)?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::File {
        path: key_file.to_owned(),
        why: format!("does not go with {}: {e}", cert_file.display()),
    })
}

/// The files' modification times and sizes: what tells that they changed.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &[&Path]) -> Stamp {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        })
        .collect()
}

/// A server certificate that follows its files.
#[derive(Debug)]
pub struct Reloading {
    listener: &'static str,
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<Stamp>,
}

impl Reloading {
    pub fn load(
        listener: &'static str,
        cert_file: &Path,
        key_file: &Path,
    ) -> Result<Reloading, TlsError> {
        let seen = stamp(&[cert_file, key_file]);
        let key = certified_key(cert_file, key_file)?;
        Ok(Reloading {
            listener,
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(Arc::new(key)),
            seen: Mutex::new(seen),
        })
    }

    /// Re-read the files if they changed since they were last looked at (or always, when
    /// `force`). Returns whether a new certificate is in use.
    pub fn reload(&self, force: bool) -> bool {
        let now = stamp(&[&self.cert_file, &self.key_file]);
        {
            let mut seen = self.seen.lock().expect("not poisoned");
            if !force && *seen == now {
                return false;
            }
            // Remembered whatever the outcome: a bad file is reported once, not every poll;
            // writing the other file of the pair (or the same again) is a change.
            *seen = now;
        }
        let result = certified_key(&self.cert_file, &self.key_file);
        let m = crate::metrics::get();
        match result {
            Ok(key) => {
                *self.current.write().expect("not poisoned") = Arc::new(key);
                m.tls_reloads
                    .with_label_values(&[self.listener, "ok"])
                    .inc();
                tracing::info!(listener = self.listener, cert = %self.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                m.tls_reloads
                    .with_label_values(&[self.listener, "failed"])
                    .inc();
                tracing::error!(listener = self.listener, error = %e, "TLS certificate not reloaded; the previous one stays in use");
                false
            }
        }
    }

    /// Follow the files until `stop`: every second, and at once on SIGHUP.
    pub async fn watch(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let force = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => false,
                _ = hup => true,
            };
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.reload(force)).await;
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("not poisoned").clone())
    }
}
