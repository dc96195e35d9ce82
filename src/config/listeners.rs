//! The network side of the configuration: the HTTP and DIMSE listeners, the TLS files of
//! each, and the remote AEs we connect to.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::AeTitle;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Base URL clients reach this server by (for RetrieveURL and BulkDataURI), e.g.
    /// `https://pacs.example.org`. Without it the request's `Forwarded`/`Host` is used.
    pub public_base_url: Option<String>,
    /// Largest request body accepted, in bytes; larger requests get 413.
    pub max_request_bytes: u64,
    /// Origins allowed to call the API from a browser (CORS); `*` for any. Empty: none.
    pub cors_origins: Vec<String>,
    /// At shutdown, how long requests in progress may take to finish before their
    /// connections are closed.
    pub shutdown_grace_secs: u64,
    /// HTTPS: with it the listener speaks TLS 1.2 and 1.3 only, HTTP/2 and HTTP/1.1.
    pub tls: Option<TlsFiles>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_base_url: None,
            max_request_bytes: 8 << 30,
            cors_origins: Vec::new(),
            shutdown_grace_secs: 20,
            tls: None,
        }
    }
}

/// The DICOM upper-layer listeners: plain TCP and DICOM TLS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DimseConfig {
    /// Set to false to run without any DIMSE listener.
    pub enabled: bool,
    /// The plain (unencrypted) listener; `""` turns it off (with `tls` set, DIMSE is then
    /// served over TLS only).
    #[serde(with = "optional_addr")]
    pub listen: Option<SocketAddr>,
    /// The DICOM TLS listener (PS3.15 Annex B), off unless set.
    pub tls: Option<DimseTlsConfig>,
    /// The called AE title this server answers to.
    pub ae_title: AeTitle,
    /// Calling AE titles allowed to associate; empty: any.
    pub allowed_calling_aes: Vec<AeTitle>,
    pub max_associations: usize,
    /// At shutdown (and at an association's release), how long operations in progress
    /// may take to finish before they are stopped.
    pub drain_secs: u64,
    /// The Modality Worklist SCP.
    pub worklist: WorklistConfig,
    /// Where C-MOVE sends instances and where storage commitment results go when the
    /// requesting association has closed: the AE titles this server may connect to.
    pub destinations: Vec<Destination>,
}

/// The Modality Worklist SCP's answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorklistConfig {
    /// Answer a calling AE with the steps scheduled on its own station (its AE title) only,
    /// whatever ScheduledStationAETitle it asks for.
    pub only_own_station: bool,
}

/// HL7 v2 orders in over MLLP: off unless `listen` is set. HL7 has no authentication of
/// its own, so only the peers listed (loopback when none are) may connect.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hl7Config {
    #[serde(with = "optional_addr")]
    pub listen: Option<SocketAddr>,
    /// IP addresses allowed to connect; empty: loopback only.
    pub allowed_peers: Vec<std::net::IpAddr>,
    pub max_connections: usize,
    /// A connection that completes no message in this long is closed.
    pub idle_timeout_secs: u64,
    /// The largest message taken; a longer frame closes the connection.
    pub max_message_bytes: usize,
}

impl Default for Hl7Config {
    fn default() -> Self {
        Hl7Config {
            listen: None,
            allowed_peers: Vec::new(),
            max_connections: 32,
            idle_timeout_secs: 60,
            max_message_bytes: 1 << 20,
        }
    }
}

impl Hl7Config {
    /// May `peer` connect?
    pub fn allows(&self, peer: std::net::IpAddr) -> bool {
        if self.allowed_peers.is_empty() {
            peer.is_loopback()
        } else {
            self.allowed_peers.contains(&peer)
        }
    }
}

/// The DICOM TLS listener: its address (2762 is the registered port), certificate and key,
/// and, for mutual TLS, the CAs the calling AEs' certificates must chain to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DimseTlsConfig {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl DimseTlsConfig {
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_ca_file: self.client_ca_file.clone(),
        }
    }
}

/// A TLS server's certificate (PEM, chain included) and private key (PEM), re-read when the
/// files change; with `client_ca_file` (PEM), clients must present a certificate that
/// chains to one of its CAs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// A remote application entity: its AE title and network address, and how to reach it
/// over TLS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub ae: AeTitle,
    pub host: String,
    pub port: u16,
    /// Open the association over TLS (DICOM TLS, PS3.15 Annex B); the peer's certificate
    /// must be valid for `host` and chain to `ca_file` (PEM), or to the public web CAs.
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Our client certificate and key (PEM), for peers that require one.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl DimseConfig {
    /// The configured destination with this AE title.
    pub fn destination(&self, ae: &AeTitle) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.ae == *ae)
    }
}

impl Default for DimseConfig {
    fn default() -> Self {
        DimseConfig {
            enabled: true,
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 11112))),
            tls: None,
            ae_title: AeTitle::parse("PACSLITE").expect("a valid AE title"),
            allowed_calling_aes: Vec::new(),
            max_associations: 32,
            drain_secs: 20,
            worklist: WorklistConfig::default(),
            destinations: Vec::new(),
        }
    }
}

/// A listen address that may be turned off with an empty string.
mod optional_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let raw = String::deserialize(d)?;
        match raw.trim() {
            "" => Ok(None),
            addr => addr.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }
}
