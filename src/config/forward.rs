//! Store-and-forward: where instances go (`[[forward.destinations]]`) and which ones go
//! where (`[[forward.rules]]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Destination;
use crate::model::{AeTitle, OriginKind};

/// Store-and-forward settings; nothing is forwarded without destinations and rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    pub destinations: Vec<ForwardDestination>,
    pub rules: Vec<ForwardRule>,
    /// How long a claimed job stays this process's without being renewed (a worker renews
    /// its claims while it sends; a process that dies loses them after this long).
    pub lease_secs: u64,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            destinations: Vec::new(),
            rules: Vec::new(),
            lease_secs: 30,
        }
    }
}

/// How a destination is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    Dimse,
}

/// A remote archive that receives forwarded instances.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardDestination {
    /// The name rules, the status API and the metrics use.
    pub name: String,
    pub kind: DestinationKind,
    /// DIMSE: the peer's AE title, host and port.
    pub ae: AeTitle,
    pub host: String,
    pub port: u16,
    /// The calling AE title; defaults to `dimse.ae_title`.
    #[serde(default)]
    pub calling_ae: Option<AeTitle>,
    /// TLS to the peer (see `dimse.destinations`).
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Instances sent per association (at most).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// After a failed attempt, the wait before the next one: doubled each time from
    /// `retry_initial_secs` up to `retry_max_secs`, with jitter.
    #[serde(default = "default_retry_initial")]
    pub retry_initial_secs: u64,
    #[serde(default = "default_retry_max")]
    pub retry_max_secs: u64,
}

fn default_batch() -> usize {
    100
}
fn default_retry_initial() -> u64 {
    2
}
fn default_retry_max() -> u64 {
    300
}

impl ForwardDestination {
    /// The peer as the DIMSE client addresses it.
    pub fn peer(&self) -> Destination {
        Destination {
            ae: self.ae.clone(),
            host: self.host.clone(),
            port: self.port,
            tls: self.tls,
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

/// Instances that go to `destination`: every one, or those matching every filter given.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRule {
    pub destination: String,
    #[serde(default)]
    pub modality: Option<String>,
    #[serde(default)]
    pub calling_ae: Option<AeTitle>,
    #[serde(default)]
    pub source: Option<Source>,
    #[serde(default)]
    pub sop_class: Option<String>,
}

/// An entry point, as rules name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Dimse,
    Stow,
    Upload,
    Import,
}

impl Source {
    pub fn is(self, kind: OriginKind) -> bool {
        matches!(
            (self, kind),
            (Source::Dimse, OriginKind::CStore)
                | (Source::Stow, OriginKind::Stow)
                | (Source::Upload, OriginKind::Upload)
                | (Source::Import, OriginKind::Import)
        )
    }
}

impl ForwardConfig {
    /// A rule naming an unknown destination, or two destinations of one name: the problem.
    pub fn check(&self) -> Result<(), String> {
        let mut names: Vec<&str> = self.destinations.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "forward.destinations: the name {:?} is used twice",
                w[0]
            ));
        }
        if self.lease_secs == 0 {
            return Err("forward.lease_secs must be at least 1".into());
        }
        if let Some(d) = self.destinations.iter().find(|d| d.batch == 0) {
            return Err(format!(
                "forward.destinations {:?}: batch must be at least 1",
                d.name
            ));
        }
        match self
            .rules
            .iter()
            .find(|r| !names.contains(&r.destination.as_str()))
        {
            Some(r) => Err(format!(
                "forward.rules: no destination named {:?} in forward.destinations",
                r.destination
            )),
            None => Ok(()),
        }
    }
}
