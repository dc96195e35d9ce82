//! Store-and-forward: where instances go (`[[forward.destinations]]`) and which ones go
//! where (`[[forward.rules]]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Destination, Secret};
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
    /// The secret behind de-identification's UID and patient ID mapping (HMAC-SHA256): the
    /// same source UID maps to the same new UID for a destination as long as this stays the
    /// same. Needed when a rule de-identifies; every process of a deployment shares it.
    pub deidentify_key: Option<Secret>,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            destinations: Vec::new(),
            rules: Vec::new(),
            lease_secs: 30,
            deidentify_key: None,
        }
    }
}

/// How a destination is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    /// C-STORE to an AE (`ae`, `host`, `port`).
    Dimse,
    /// STOW-RS to a DICOMweb service (`url`).
    Dicomweb,
}

/// A remote archive that receives forwarded instances.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardDestination {
    /// The name rules, the status API and the metrics use.
    pub name: String,
    pub kind: DestinationKind,
    /// DIMSE: the peer's AE title, host and port.
    #[serde(default)]
    pub ae: Option<AeTitle>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// DIMSE: the calling AE title; defaults to `dimse.ae_title`.
    #[serde(default)]
    pub calling_ae: Option<AeTitle>,
    /// DIMSE: TLS to the peer (see `dimse.destinations`).
    #[serde(default)]
    pub tls: bool,
    /// The CA certificates that sign the peer's certificate (PEM; DIMSE with `tls`, or an
    /// `https` DICOMweb URL); without it, the Mozilla roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// DIMSE: our client certificate, when the peer asks for one.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// DIMSE: ask the peer to commit each batch (Storage Commitment Push Model); a job is
    /// delivered only once the peer confirms its instance.
    #[serde(default)]
    pub commitment: bool,
    /// With `commitment`: how long to wait for the peer's report before sending again.
    #[serde(default = "default_commitment_timeout")]
    pub commitment_timeout_secs: u64,
    /// DICOMweb: the service's root (`…/dicom-web`); instances go to `{url}/studies`.
    #[serde(default)]
    pub url: Option<String>,
    /// DICOMweb: a bearer token, or `user:password` for basic authentication.
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub basic: Option<Secret>,
    /// DICOMweb: the most bytes of instances in one STOW-RS request (an instance larger
    /// than this goes alone).
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: u64,
    /// Instances sent per association or request (at most).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Associations (or requests) in flight at once.
    #[serde(default = "default_max_associations")]
    pub max_associations: usize,
    /// A cap on the bytes sent per second (a thin link shared with other traffic).
    #[serde(default)]
    pub max_bytes_per_sec: Option<u64>,
    /// After this many failed attempts an instance's job fails for good (with its last
    /// error; `retry` queues it again). Unset: it is tried until it goes.
    #[serde(default)]
    pub max_attempts: Option<u32>,
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
fn default_commitment_timeout() -> u64 {
    600
}
fn default_batch_bytes() -> u64 {
    16 << 20
}
fn default_max_associations() -> usize {
    1
}
fn default_retry_initial() -> u64 {
    2
}
fn default_retry_max() -> u64 {
    300
}

impl ForwardDestination {
    /// The peer as the DIMSE client addresses it (`None` for a DICOMweb destination).
    pub fn peer(&self) -> Option<Destination> {
        Some(Destination {
            ae: self.ae.clone()?,
            host: self.host.clone()?,
            port: self.port?,
            tls: self.tls,
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        })
    }

    /// Where it is, for logs and the audit trail.
    pub fn address(&self) -> String {
        match self.kind {
            DestinationKind::Dimse => format!(
                "{}@{}:{}",
                self.ae.as_ref().map_or("?", |a| a.as_str()),
                self.host.as_deref().unwrap_or("?"),
                self.port.unwrap_or(0)
            ),
            DestinationKind::Dicomweb => self.url.clone().unwrap_or_default(),
        }
    }

    /// What is missing or wrong for its kind.
    fn check(&self) -> Result<(), String> {
        let name = &self.name;
        let wrong = |what: &str| Err(format!("forward.destinations {name:?}: {what}"));
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            return wrong("a name must be printable and not empty");
        }
        match self.kind {
            DestinationKind::Dimse => {
                if self.peer().is_none() {
                    return wrong("a dimse destination needs ae, host and port");
                }
                if self.url.is_some() || self.token.is_some() || self.basic.is_some() {
                    return wrong("url, token and basic are for dicomweb destinations");
                }
            }
            DestinationKind::Dicomweb => {
                let Some(url) = &self.url else {
                    return wrong("a dicomweb destination needs url");
                };
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return wrong("url must start with http:// or https://");
                }
                if self.ae.is_some() || self.host.is_some() || self.port.is_some() || self.tls {
                    return wrong("ae, host, port and tls are for dimse destinations");
                }
                if self.commitment {
                    return wrong("commitment is for dimse destinations");
                }
                if self.token.is_some() && self.basic.is_some() {
                    return wrong("give token or basic, not both");
                }
                if self
                    .basic
                    .as_ref()
                    .is_some_and(|b| !b.expose().contains(':'))
                {
                    return wrong("basic must be user:password");
                }
            }
        }
        if self.batch == 0 || self.max_associations == 0 || self.batch_bytes == 0 {
            return wrong("batch, batch_bytes and max_associations must be at least 1");
        }
        if self.max_bytes_per_sec == Some(0) || self.max_attempts == Some(0) {
            return wrong("max_bytes_per_sec and max_attempts must be at least 1 when given");
        }
        Ok(())
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
    /// De-identify what goes to this destination (PS3.15 Annex E).
    #[serde(default)]
    pub deidentify: Option<DeidentifyProfile>,
    /// Options of the profile: `retain-longitudinal-dates`, `retain-device-identity`.
    #[serde(default)]
    pub deidentify_options: Vec<DeidentifyOption>,
}

/// A de-identification profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeidentifyProfile {
    /// The Basic Application Level Confidentiality Profile.
    Basic,
}

/// An option of the Basic profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeidentifyOption {
    /// Retain Longitudinal Temporal Information with Full Dates.
    RetainLongitudinalDates,
    /// Retain Device Identity.
    RetainDeviceIdentity,
}

/// How a destination's instances are de-identified, as its rules say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deidentify {
    pub profile: DeidentifyProfile,
    pub options: Vec<DeidentifyOption>,
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

impl ForwardRule {
    fn deidentification(&self) -> Option<Deidentify> {
        let mut options = self.deidentify_options.clone();
        options.sort_unstable();
        options.dedup();
        Some(Deidentify {
            profile: self.deidentify?,
            options,
        })
    }
}

impl ForwardConfig {
    /// How `destination`'s instances are de-identified (the rules to it agree; `check`).
    pub fn deidentification(&self, destination: &str) -> Option<Deidentify> {
        self.rules
            .iter()
            .find(|r| r.destination == destination)
            .and_then(ForwardRule::deidentification)
    }

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
        for d in &self.destinations {
            d.check()?;
            let rules: Vec<&ForwardRule> = self
                .rules
                .iter()
                .filter(|r| r.destination == d.name)
                .collect();
            let first = rules.first().map(|r| r.deidentification());
            if rules.iter().any(|r| Some(r.deidentification()) != first) {
                return Err(format!(
                    "forward.rules: the rules to {:?} must agree on deidentify and its options \
                     (the UID mapping is per destination)",
                    d.name
                ));
            }
        }
        if let Some(r) = self
            .rules
            .iter()
            .find(|r| r.deidentify.is_none() && !r.deidentify_options.is_empty())
        {
            return Err(format!(
                "forward.rules to {:?}: deidentify_options without deidentify",
                r.destination
            ));
        }
        if let Some(key) = &self.deidentify_key {
            if key.expose().len() < crate::dicom::deidentify::MIN_KEY_LEN {
                return Err(format!(
                    "forward.deidentify_key must be at least {} bytes (a short key lets \
                     pseudonyms be reversed by trying patient IDs)",
                    crate::dicom::deidentify::MIN_KEY_LEN
                ));
            }
        }
        if self.rules.iter().any(|r| r.deidentify.is_some()) && self.deidentify_key.is_none() {
            return Err(
                "forward.deidentify_key is needed when a rule de-identifies: a secret \
                        that keeps the UID mapping the same across restarts and processes"
                    .into(),
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Destination names travel as lines (PostgreSQL's writer) and in metrics labels: an
    /// empty one, or one with a control character, is refused.
    #[test]
    fn a_destination_needs_a_printable_name() {
        let check = |name: &str| {
            let d: ForwardDestination = serde_json::from_value(serde_json::json!({
                "name": name, "kind": "dimse", "ae": "ARCHIVE", "host": "archive", "port": 104
            }))
            .unwrap();
            ForwardConfig {
                destinations: vec![d],
                ..ForwardConfig::default()
            }
            .check()
        };
        assert!(check("central").is_ok());
        for bad in ["", " ", "a\nb", "tab\there"] {
            let e = check(bad).unwrap_err();
            assert!(e.contains("printable"), "{bad:?}: {e}");
        }
    }
}
