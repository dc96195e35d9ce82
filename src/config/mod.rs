//! Typed configuration: embedded defaults < TOML file (`--config`) < `PACS_*` environment.
//!
//! Nested keys are separated by a double underscore in the environment, e.g.
//! `PACS_STORAGE__BACKEND=s3` or `PACS_INDEX__URL=postgres://…`. Secrets are wrapped in
//! [`Secret`] so that they never appear in `Debug` output or logs.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod compression;
mod forward;
mod listeners;
mod retention;

pub use compression::CompressionConfig;
pub use forward::{
    Deidentify, DeidentifyOption, DeidentifyProfile, DestinationKind, ForwardConfig,
    ForwardDestination, ForwardRule, Source,
};
pub use listeners::{
    Destination, DimseConfig, DimseTlsConfig, Hl7Config, HttpConfig, TlsFiles, WorklistConfig,
};
pub use retention::RetentionConfig;

/// The whole configuration of one pacs-lite process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the embedded defaults keep the index and the objects.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub index: IndexConfig,
    pub storage: StorageConfig,
    pub ingest: IngestConfig,
    pub viewer: ViewerConfig,
    pub dimse: DimseConfig,
    pub hl7: Hl7Config,
    pub auth: AuthConfig,
    pub uploads: UploadsConfig,
    pub forward: ForwardConfig,
    pub retention: RetentionConfig,
    pub compression: CompressionConfig,
    pub log: LogConfig,
}

/// Who may call the HTTP API. With no API key and no JWT verifier configured, only
/// loopback clients are served (and they may do everything).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer API keys, stored as the SHA-256 (hex) of the key (`pacs-lite api-key` makes one).
    pub api_keys: Vec<ApiKeyConfig>,
    pub jwt: JwtConfig,
    /// Keys for the tokens and signed URLs this server issues: the first signs, all verify
    /// (rotate by putting a new key first). Without any, a random key is made at start-up:
    /// issued URLs then die with the process and are not valid on other processes.
    pub signing_keys: Vec<Secret>,
    /// Lifetime of signed image URLs and of viewer (study-scoped) tokens, in seconds.
    pub url_ttl_secs: u64,
    pub viewer_token_ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub name: String,
    /// SHA-256 of the key, lower-case hex.
    pub sha256: String,
    pub role: crate::model::Role,
}

/// Verifying JWTs issued by an identity provider.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256 shared secret.
    pub hs256_secret: Option<Secret>,
    /// RS256 public keys as a JWKS document: a file, or a URL fetched at start-up.
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// Required `iss` and `aud` values (checked when set).
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The claim holding the role (a string or a list; the highest known role wins).
    pub role_claim: String,
}

impl JwtConfig {
    pub fn is_configured(&self) -> bool {
        self.hs256_secret.is_some() || self.jwks_file.is_some() || self.jwks_url.is_some()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            api_keys: Vec::new(),
            jwt: JwtConfig {
                role_claim: "role".into(),
                ..Default::default()
            },
            signing_keys: Vec::new(),
            url_ttl_secs: 3600,
            viewer_token_ttl_secs: 3600,
        }
    }
}

impl AuthConfig {
    /// Whether callers must present credentials.
    pub fn is_enabled(&self) -> bool {
        !self.api_keys.is_empty() || self.jwt.is_configured()
    }
}

/// The offline upload API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadsConfig {
    /// Pending uploads without progress for this long are removed, with their chunks.
    pub expire_after_secs: u64,
    /// How often expired uploads are looked for.
    pub sweep_interval_secs: u64,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig {
            expire_after_secs: 7 * 24 * 3600,
            sweep_interval_secs: 600,
        }
    }
}

/// The OHIF viewer served under `/viewer` (see `ohif-config/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ViewerConfig {
    /// Where the prebuilt viewer is (`scripts/fetch-ohif.sh` puts it in `viewer-dist`).
    pub dir: PathBuf,
    /// The name the viewer shows for this server.
    pub name: String,
}

impl Default for ViewerConfig {
    fn default() -> Self {
        ViewerConfig {
            dir: PathBuf::from("viewer-dist"),
            name: "pacs-lite".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// `sqlite://path` or `postgres://…`; defaults to `<data_dir>/index.sqlite`.
    pub url: Option<Secret>,
    pub max_connections: u32,
    /// SQLite with a filesystem store: `normal` commits instance rows without an fsync
    /// each and re-indexes, at start-up, objects whose rows a power failure took; `full`
    /// fsyncs every commit. Ignored otherwise (every commit is durable).
    pub sqlite_synchronous: SqliteSync,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    #[default]
    Normal,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Fs,
    S3,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// Filesystem root for objects; defaults to `<data_dir>/objects`.
    pub root: Option<PathBuf>,
    /// Filesystem: how an object of up to 1 MiB becomes durable. `journal`: appended to a
    /// journal in `<data_dir>/journal` that concurrent puts flush together, the objects
    /// themselves flushed in bulk every second (`storage::journal`); `each`: its file and
    /// directory fsynced by every put.
    pub object_sync: ObjectSync,
    pub s3: S3Config,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectSync {
    #[default]
    Journal,
    Each,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// Key prefix inside the bucket.
    pub prefix: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
}

/// What to do when an instance arrives whose SOP Instance UID is stored with other bytes.
/// The stored copy never changes either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    /// Refuse the new instance (STOW failure, C-STORE 0xA900-family status).
    Reject,
    /// Report success but keep the original bytes (a warning is logged).
    KeepOriginal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub on_conflict: ConflictPolicy,
    /// Spool directory for bytes in flight; defaults to `<data_dir>/spool`. Keep it on the
    /// same filesystem as the objects so the filesystem store can rename instead of copy.
    pub spool_dir: Option<PathBuf>,
    /// Largest single instance accepted, in bytes.
    pub max_instance_bytes: u64,
    /// How many instances `import` ingests at once.
    pub import_parallelism: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `pacs_lite=debug`.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./pacs-data"),
            http: HttpConfig::default(),
            index: IndexConfig::default(),
            storage: StorageConfig::default(),
            ingest: IngestConfig::default(),
            viewer: ViewerConfig::default(),
            dimse: DimseConfig::default(),
            hl7: Hl7Config::default(),
            auth: AuthConfig::default(),
            uploads: UploadsConfig::default(),
            forward: ForwardConfig::default(),
            retention: RetentionConfig::default(),
            compression: CompressionConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            url: None,
            max_connections: 8,
            sqlite_synchronous: SqliteSync::Normal,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Fs,
            root: None,
            object_sync: ObjectSync::Journal,
            s3: S3Config::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            on_conflict: ConflictPolicy::Reject,
            spool_dir: None,
            max_instance_bytes: 4 << 30,
            import_parallelism: 4,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Plain,
            filter: "info".into(),
        }
    }
}

impl Config {
    /// Load defaults, then the TOML file if given, then `PACS_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "configuration file {} does not exist",
                    path.display()
                ))));
            }
            fig = fig.merge(Toml::file(path));
        }
        // PACS_CONFIG names the file itself, PACS_TEST_* belong to the test suite and
        // PACS_SYNC_* to the `sync` client.
        let env = Env::prefixed("PACS_")
            .filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                key != "config" && !key.starts_with("test_") && !key.starts_with("sync_")
            })
            .split("__");
        fig.merge(env).extract().map_err(Box::new)
    }

    /// The index URL, defaulting to SQLite inside the data directory.
    pub fn index_url(&self) -> String {
        match &self.index.url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("index.sqlite").display()),
        }
    }

    pub fn objects_root(&self) -> PathBuf {
        self.storage
            .root
            .clone()
            .unwrap_or_else(|| self.data_dir.join("objects"))
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.ingest
            .spool_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("spool"))
    }
}

/// A string that must not be logged.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use crate::model::AeTitle;

    #[test]
    fn defaults_are_the_embedded_setup() {
        let c = Config::default();
        assert_eq!(c.http.listen.port(), 8080);
        assert!(c.http.listen.ip().is_loopback());
        assert_eq!(c.index_url(), "sqlite://./pacs-data/index.sqlite");
        assert_eq!(c.objects_root(), PathBuf::from("./pacs-data/objects"));
        assert_eq!(c.storage.backend, StorageBackend::Fs);
    }

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "pacs.toml",
                "data_dir = \"/srv/pacs\"\n[http]\nmax_request_bytes = 1000\n[storage]\nbackend = \"s3\"\n",
            )?;
            jail.set_env("PACS_HTTP__MAX_REQUEST_BYTES", "2000");
            jail.set_env("PACS_STORAGE__S3__SECRET_ACCESS_KEY", "hunter2");
            jail.set_env("PACS_CONFIG", "pacs.toml");
            jail.set_env("PACS_TEST_BACKENDS", "sqlite-fs");
            let c = Config::load(Some(Path::new("pacs.toml"))).map_err(|e| *e)?;
            assert_eq!(c.data_dir, PathBuf::from("/srv/pacs"));
            assert_eq!(c.http.max_request_bytes, 2000);
            assert_eq!(c.storage.backend, StorageBackend::S3);
            assert!(!format!("{c:?}").contains("hunter2"));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("pacs.toml", "[http]\nlisten_adress = \"0.0.0.0:1\"\n")?;
            assert!(Config::load(Some(Path::new("pacs.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn dimse_over_tls_only() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "pacs.toml",
                "[dimse]\nlisten = \"\"\n[dimse.tls]\nlisten = \"127.0.0.1:2762\"\n\
                 cert_file = \"server.pem\"\nkey_file = \"server.key\"\n\
                 [[dimse.destinations]]\nae = \"ARCHIVE\"\nhost = \"archive.example\"\n\
                 port = 2762\ntls = true\nca_file = \"ca.pem\"\n",
            )?;
            let c = Config::load(Some(Path::new("pacs.toml"))).map_err(|e| *e)?;
            assert_eq!(c.dimse.listen, None);
            let tls = c.dimse.tls.expect("configured");
            assert_eq!(tls.listen.port(), 2762);
            assert_eq!(tls.client_ca_file, None);
            let d = &c.dimse.destinations[0];
            assert!(d.tls && d.ca_file.is_some() && d.cert_file.is_none());
            jail.set_env("PACS_DIMSE__LISTEN", "127.0.0.1:0");
            let c = Config::load(Some(Path::new("pacs.toml"))).map_err(|e| *e)?;
            assert_eq!(c.dimse.listen.map(|a| a.port()), Some(0));
            jail.set_env("PACS_DIMSE__LISTEN", "nowhere");
            assert!(Config::load(Some(Path::new("pacs.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn dimse_destinations_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "PACS_DIMSE__DESTINATIONS",
                r#"[{ae="StoreSCP",host="127.0.0.1",port=11113}]"#,
            );
            let c = Config::load(None).map_err(|e| *e)?;
            let ae = |s: &str| AeTitle::parse(s).unwrap();
            let d = c.dimse.destination(&ae("StoreSCP ")).expect("configured");
            assert_eq!((d.host.as_str(), d.port), ("127.0.0.1", 11113));
            assert!(c.dimse.destination(&ae("OTHER")).is_none());
            Ok(())
        });
    }
}
