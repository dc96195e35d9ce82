//! Transport security for every link: the HTTPS and DICOM TLS listeners and the client side
//! of the associations we open.
//!
//! rustls with the ring provider, TLS 1.2 and 1.3 only, its default cipher suites (AEAD
//! only: AES-GCM and ChaCha20-Poly1305 with ECDHE; listed in `conformance/tls.md`). A
//! listener's certificate and key are re-read when their files change or on SIGHUP
//! ([`keys::Reloading`]); with a client CA file, clients must present a certificate that
//! chains to it (mutual TLS, as IHE ATNA asks of secure nodes). Why a handshake failed is
//! sorted into a few [`refusal`] reasons, logged with the peer's address and counted.
//!
//! Depends on `config` and `metrics` only; `http/`, `dimse/` and `app.rs` use it.

mod keys;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{Destination, TlsFiles};

pub use keys::Reloading;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A TLS listener's configuration, with the certificate that follows its files.
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub keys: Arc<Reloading>,
}

/// The TLS side of a listener named `listener` ("http", "dimse"): the certificate and key
/// of `files`, client certificates verified against `files.client_ca_file` when set, and
/// these ALPN protocols offered.
pub fn server(
    listener: &'static str,
    files: &TlsFiles,
    alpn: &[&[u8]],
) -> Result<ServerTls, TlsError> {
    let keys = Arc::new(Reloading::load(
        listener,
        &files.cert_file,
        &files.key_file,
    )?);
    let builder = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ]);
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots(ca)?))
                .build()
                .map_err(|e| TlsError::File {
                    path: ca.clone(),
                    why: format!("cannot verify clients with it: {e}"),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(keys.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(ServerTls {
        config: Arc::new(config),
        keys,
    })
}

/// The CA certificates of a PEM file.
fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in keys::certificates(path)? {
        store.add(cert).map_err(|e| TlsError::File {
            path: path.to_owned(),
            why: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

/// The client side of an association to `dest`: its certificate verified against
/// `dest.ca_file` (or the public web CAs without one), ours presented when configured.
pub fn client(dest: &Destination) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &dest.ca_file {
        Some(ca) => roots(ca)?,
        None => RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    };
    let builder = ClientConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_root_certificates(roots);
    let config = match (&dest.cert_file, &dest.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(keys::certificates(cert)?, keys::private_key(key)?)
            .map_err(|e| TlsError::File {
                path: key.clone(),
                why: format!("does not go with {}: {e}", cert.display()),
            })?,
        _ => {
            return Err(TlsError::Config(format!(
                "destination {}: cert_file and key_file go together",
                dest.ae
            )))
        }
    };
    Ok(Arc::new(config))
}

/// Why a handshake failed, in a word for the metrics: the peer spoke something else
/// (`not_tls`), its certificate chains to no CA we trust (`unknown_ca`), is expired or not
/// yet valid (`expired`), is missing where one is required (`no_client_certificate`) or is
/// otherwise unacceptable (`bad_certificate`); the peer refused ours (`peer_alert`); no
/// common version or cipher (`incompatible`); the connection broke (`io`).
pub fn refusal(error: &(dyn std::error::Error + 'static)) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    let mut cause = Some(error);
    while let Some(e) = cause {
        let tls = e.downcast_ref::<E>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<E>())
        });
        if let Some(tls) = tls {
            return match tls {
                E::InvalidMessage(_) | E::InappropriateMessage { .. } => "not_tls",
                E::InvalidCertificate(C::UnknownIssuer) => "unknown_ca",
                E::InvalidCertificate(
                    C::Expired
                    | C::ExpiredContext { .. }
                    | C::NotValidYet
                    | C::NotValidYetContext { .. },
                ) => "expired",
                E::InvalidCertificate(_) => "bad_certificate",
                E::NoCertificatesPresented => "no_client_certificate",
                E::AlertReceived(_) => "peer_alert",
                E::PeerIncompatible(_) => "incompatible",
                _ => "other",
            };
        }
        cause = e.source();
    }
    "io"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_named() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let unknown = io(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert_eq!(refusal(&unknown), "unknown_ca");
        assert_eq!(
            refusal(&io(rustls::Error::NoCertificatesPresented)),
            "no_client_certificate"
        );
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(refusal(&eof), "io");
    }

    /// `conformance/tls.md` lists the cipher suites the provider offers, in its order.
    #[test]
    fn conformance_lists_the_cipher_suites() {
        let statement =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conformance/tls.md"))
                .unwrap();
        let documented: Vec<&str> = statement
            .lines()
            .filter_map(|l| l.strip_prefix("| TLS 1."))
            .filter_map(|l| l.split('|').nth(1))
            .map(str::trim)
            .collect();
        let offered: Vec<String> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(documented, offered);
    }

    #[test]
    fn a_missing_file_is_named() {
        let files = TlsFiles {
            cert_file: "/nonexistent/server.pem".into(),
            key_file: "/nonexistent/server.key".into(),
            client_ca_file: None,
        };
        let err = server("http", &files, &[]).err().expect("refused");
        assert!(err.to_string().contains("/nonexistent/server.pem"), "{err}");
    }
}
