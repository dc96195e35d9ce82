//! Authentication and authorization of HTTP callers.
//!
//! A caller is a [`Principal`] with a [`Role`]: **viewer** (read only), **uploader** (store
//! and upload, plus read), **admin** (everything). Credentials are Bearer API keys (kept
//! as their SHA-256 in the configuration), JWTs from an identity provider (HS256 shared
//! secret, or RS256 keys from a JWKS document, with issuer and audience checks), and the
//! tokens this server issues itself: study-scoped, read-only viewer tokens (HS256 JWTs
//! signed with `auth.signing_keys`). Signed URLs are HMACs over the path and its expiry,
//! with the same keys: the first key signs, every key verifies, so keys can be rotated.
//!
//! Without any configured credentials only loopback clients are served. Which role each
//! HTTP route needs, and the middleware that checks it, are `http/`'s; DIMSE peers are
//! checked by AE title in `dimse/`.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;
use crate::model::clock::now_secs;
pub use crate::model::Role;

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// No credentials configured; a loopback client.
    Loopback,
    ApiKey,
    Jwt,
    /// A study-scoped token issued by this server.
    StudyToken,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// Set for study-scoped tokens: the only study this principal may read.
    pub study: Option<String>,
    pub via: Via,
}

impl Principal {
    pub fn may_read_study(&self, study_uid: &str) -> bool {
        self.study.as_deref().is_none_or(|s| s == study_uid)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no credentials")]
    Missing,
    #[error("invalid credentials: {0}")]
    Invalid(String),
    #[error("expired")]
    Expired,
}

#[derive(Debug, thiserror::Error)]
#[error("authentication configuration: {0}")]
pub struct ConfigError(pub String);

/// Issuer of the tokens this server makes.
const ISSUER: &str = "pacs-lite";

#[derive(Debug, Serialize, Deserialize)]
struct StudyClaims {
    iss: String,
    sub: String,
    role: Role,
    study: String,
    exp: u64,
    iat: u64,
}

type HmacSha256 = Hmac<Sha256>;

/// A signing key and its identifier (the first 8 bytes of its SHA-256, hex).
struct SigningKey {
    id: String,
    secret: Vec<u8>,
}

pub struct Auth {
    enabled: bool,
    api_keys: HashMap<[u8; 32], (String, Role)>,
    jwt_hs256: Option<DecodingKey>,
    jwt_rsa: HashMap<String, DecodingKey>,
    jwt_rsa_any: Vec<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    role_claim: String,
    keys: Vec<SigningKey>,
    pub url_ttl_secs: u64,
    pub viewer_token_ttl_secs: u64,
}

/// The SHA-256 of an API key, hex: what `auth.api_keys[].sha256` holds.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random API key (256 bits, URL-safe).
pub fn new_api_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("pl_{}", B64.encode(bytes))
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

impl Auth {
    /// Build from the configuration; a JWKS URL is fetched here (once, at start-up).
    pub async fn from_config(config: &AuthConfig) -> Result<Auth, ConfigError> {
        let mut api_keys = HashMap::new();
        for k in &config.api_keys {
            let digest: [u8; 32] = hex::decode(k.sha256.trim())
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| {
                    ConfigError(format!(
                        "auth.api_keys: {:?} does not have a 64-digit hex sha256",
                        k.name
                    ))
                })?;
            api_keys.insert(digest, (k.name.clone(), k.role));
        }
        let jwt = &config.jwt;
        let jwt_hs256 = jwt
            .hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.expose().as_bytes()));
        let mut jwks_text = None;
        if let Some(path) = &jwt.jwks_file {
            jwks_text = Some(std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "cannot read auth.jwt.jwks_file {}: {e}",
                    path.display()
                ))
            })?);
        } else if let Some(url) = &jwt.jwks_url {
            jwks_text = Some(fetch_jwks(url).await?);
        }
        let (mut jwt_rsa, mut jwt_rsa_any) = (HashMap::new(), Vec::new());
        if let Some(text) = jwks_text {
            let jwks: Jwks = serde_json::from_str(&text)
                .map_err(|e| ConfigError(format!("malformed JWKS document: {e}")))?;
            for k in jwks.keys.into_iter().filter(|k| k.kty == "RSA") {
                let (Some(n), Some(e)) = (&k.n, &k.e) else {
                    continue;
                };
                let key = DecodingKey::from_rsa_components(n, e)
                    .map_err(|e| ConfigError(format!("bad RSA key in JWKS: {e}")))?;
                match k.kid {
                    Some(kid) => {
                        jwt_rsa.insert(kid, key);
                    }
                    None => jwt_rsa_any.push(key),
                }
            }
            if jwt_rsa.is_empty() && jwt_rsa_any.is_empty() {
                return Err(ConfigError("the JWKS document has no RSA key".into()));
            }
        }
        let mut keys: Vec<SigningKey> = config
            .signing_keys
            .iter()
            .map(|s| signing_key(s.expose().as_bytes().to_vec()))
            .collect();
        if keys.is_empty() {
            let random: [u8; 32] = rand::random();
            keys.push(signing_key(random.to_vec()));
            if config.is_enabled() {
                tracing::warn!("auth.signing_keys is not set: signed URLs and viewer tokens are valid in this process only, until it stops");
            }
        }
        Ok(Auth {
            enabled: config.is_enabled(),
            api_keys,
            jwt_hs256,
            jwt_rsa,
            jwt_rsa_any,
            issuer: jwt.issuer.clone(),
            audience: jwt.audience.clone(),
            role_claim: jwt.role_claim.clone(),
            keys,
            url_ttl_secs: config.url_ttl_secs,
            viewer_token_ttl_secs: config.viewer_token_ttl_secs,
        })
    }

    /// Whether callers must present credentials.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Who presents this Bearer token.
    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((name, role)) = self.api_keys.get(&digest) {
            return Ok(Principal {
                name: name.clone(),
                role: *role,
                study: None,
                via: Via::ApiKey,
            });
        }
        if token.matches('.').count() != 2 {
            return Err(AuthError::Invalid("not a known API key".into()));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token: {e}")))?;
        if header.alg == Algorithm::HS256 {
            if let Some(kid) = &header.kid {
                if let Some(key) = self.keys.iter().find(|k| &k.id == kid) {
                    return self.study_principal(token, key);
                }
            }
        }
        self.external_principal(token, &header)
    }

    fn study_principal(&self, token: &str, key: &SigningKey) -> Result<Principal, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<StudyClaims>(
            token,
            &DecodingKey::from_secret(&key.secret),
            &validation,
        )
        .map_err(jwt_error)?;
        let c = data.claims;
        Ok(Principal {
            name: c.sub,
            // Study tokens are read-only whatever they say.
            role: Role::Viewer,
            study: Some(c.study),
            via: Via::StudyToken,
        })
    }

    fn external_principal(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
    ) -> Result<Principal, AuthError> {
        let key = match header.alg {
            Algorithm::HS256 => self.jwt_hs256.as_ref(),
            Algorithm::RS256 => match &header.kid {
                Some(kid) => self.jwt_rsa.get(kid).or(self.jwt_rsa_any.first()),
                None => self.jwt_rsa_any.first().or(self.jwt_rsa.values().next()),
            },
            other => {
                return Err(AuthError::Invalid(format!(
                    "algorithm {other:?} is not accepted"
                )))
            }
        }
        .ok_or_else(|| AuthError::Invalid("no key to verify this token".into()))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 30;
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key,
            &validation,
        )
        .map_err(jwt_error)?;
        let claims = data.claims;
        let role = match claims.get(&self.role_claim) {
            Some(serde_json::Value::String(s)) => s.split([' ', ',']).filter_map(Role::parse).max(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(|v| v.as_str().and_then(Role::parse))
                .max(),
            _ => None,
        }
        .ok_or_else(|| {
            AuthError::Invalid(format!(
                "the token has no known role in claim {:?}",
                self.role_claim
            ))
        })?;
        let name = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .unwrap_or("jwt")
            .to_owned();
        Ok(Principal {
            name,
            role,
            study: None,
            via: Via::Jwt,
        })
    }

    /// A read-only token for one study, valid for `ttl_secs`.
    pub fn study_token(&self, subject: &str, study_uid: &str, ttl_secs: u64) -> (String, u64) {
        let key = &self.keys[0];
        let now = now_secs();
        let claims = StudyClaims {
            iss: ISSUER.into(),
            sub: subject.into(),
            role: Role::Viewer,
            study: study_uid.into(),
            iat: now,
            exp: now + ttl_secs,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.id.clone());
        let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&key.secret))
            .expect("HS256 encoding cannot fail");
        (token, claims.exp)
    }

    /// The query string that signs `path` until `expires` (seconds since the epoch):
    /// `expires=…&kid=…&signature=…`.
    pub fn sign_path(&self, path: &str, expires: u64) -> String {
        let key = &self.keys[0];
        let sig = url_signature(key, path, expires);
        format!("expires={expires}&kid={}&signature={sig}", key.id)
    }

    /// Check a signed URL's parameters for `path`.
    pub fn verify_signed_path(
        &self,
        path: &str,
        expires: &str,
        kid: &str,
        signature: &str,
    ) -> Result<(), AuthError> {
        let expires: u64 = expires
            .parse()
            .map_err(|_| AuthError::Invalid("bad expires".into()))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or_else(|| AuthError::Invalid("unknown signing key".into()))?;
        let given = B64
            .decode(signature)
            .map_err(|_| AuthError::Invalid("bad signature".into()))?;
        let mut mac = HmacSha256::new_from_slice(&key.secret).expect("any key length");
        mac.update(signed_text(path, expires).as_bytes());
        mac.verify_slice(&given)
            .map_err(|_| AuthError::Invalid("signature does not match".into()))?;
        if now_secs() > expires {
            return Err(AuthError::Expired);
        }
        Ok(())
    }
}

fn signing_key(secret: Vec<u8>) -> SigningKey {
    let id = hex::encode(&Sha256::digest(&secret)[..8]);
    SigningKey { id, secret }
}

fn signed_text(path: &str, expires: u64) -> String {
    format!("pacs-lite-url-v1\n{path}\n{expires}")
}

fn url_signature(key: &SigningKey, path: &str, expires: u64) -> String {
    let mut mac = HmacSha256::new_from_slice(&key.secret).expect("any key length");
    mac.update(signed_text(path, expires).as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

fn jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        _ => AuthError::Invalid(e.to_string()),
    }
}

async fn fetch_jwks(url: &str) -> Result<String, ConfigError> {
    // A small HTTP GET without another client library: hyper is already in the tree.
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| ConfigError(format!("auth.jwt.jwks_url {url:?}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(ConfigError(
            "auth.jwt.jwks_url: only http:// is fetched directly; for https, put the JWKS in a file (auth.jwt.jwks_file)".into(),
        ));
    }
    let host = uri.host().unwrap_or("localhost").to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| ConfigError(format!("fetching {url}: {e}")))?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| ConfigError(format!("fetching {url}: {e}")))?;
    let mut response = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut response)
        .await
        .map_err(|e| ConfigError(format!("fetching {url}: {e}")))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ConfigError(format!("fetching {url}: malformed response")))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(ConfigError(format!(
            "fetching {url}: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKeyConfig, AuthConfig, Secret};

    async fn auth(config: AuthConfig) -> Auth {
        Auth::from_config(&config).await.unwrap()
    }

    #[tokio::test]
    async fn api_keys_are_matched_by_hash() {
        let key = new_api_key();
        let mut c = AuthConfig::default();
        c.api_keys.push(ApiKeyConfig {
            name: "app".into(),
            sha256: hash_api_key(&key),
            role: Role::Uploader,
        });
        let a = auth(c).await;
        assert!(a.is_enabled());
        let p = a.authenticate(&key).unwrap();
        assert_eq!(
            (p.name.as_str(), p.role, p.via),
            ("app", Role::Uploader, Via::ApiKey)
        );
        assert!(a.authenticate("pl_wrong").is_err());
        assert_eq!(a.authenticate(" ").unwrap_err(), AuthError::Missing);
    }

    #[tokio::test]
    async fn study_tokens_are_read_only_and_expire() {
        let mut c = AuthConfig {
            signing_keys: vec![Secret::new("k1")],
            ..Default::default()
        };
        let a = auth(c.clone()).await;
        let (t, _) = a.study_token("someone", "1.2.3", 60);
        let p = a.authenticate(&t).unwrap();
        assert_eq!((p.role, p.study.as_deref()), (Role::Viewer, Some("1.2.3")));
        assert!(p.may_read_study("1.2.3") && !p.may_read_study("1.2.4"));
        // Rotation: a new first key signs, the old one still verifies.
        c.signing_keys = vec![Secret::new("k2"), Secret::new("k1")];
        let rotated = auth(c).await;
        assert!(rotated.authenticate(&t).is_ok());
        // Expired.
        let (old, _) = a.study_token("someone", "1.2.3", 0);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(a.authenticate(&old).unwrap_err(), AuthError::Expired);
        // Tampered payload.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = B64.encode(br#"{"iss":"pacs-lite","sub":"x","role":"admin","study":"9.9","exp":99999999999,"iat":0}"#);
        parts[1] = &forged;
        assert!(a.authenticate(&parts.join(".")).is_err());
    }

    #[tokio::test]
    async fn external_hs256_jwts_carry_roles() {
        let mut c = AuthConfig::default();
        c.jwt.hs256_secret = Some(Secret::new("shared"));
        c.jwt.issuer = Some("idp".into());
        c.jwt.audience = Some("pacs".into());
        let a = auth(c).await;
        let make = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(b"shared"),
            )
            .unwrap()
        };
        let exp = now_secs() + 60;
        let t = make(
            serde_json::json!({"sub":"dr","iss":"idp","aud":"pacs","exp":exp,"role":["viewer","uploader"]}),
        );
        let p = a.authenticate(&t).unwrap();
        assert_eq!(
            (p.name.as_str(), p.role, p.via),
            ("dr", Role::Uploader, Via::Jwt)
        );
        let wrong_aud =
            make(serde_json::json!({"sub":"dr","iss":"idp","aud":"x","exp":exp,"role":"admin"}));
        assert!(a.authenticate(&wrong_aud).is_err());
        let no_role = make(serde_json::json!({"sub":"dr","iss":"idp","aud":"pacs","exp":exp}));
        assert!(a.authenticate(&no_role).is_err());
    }

    #[tokio::test]
    async fn signed_paths_check_path_expiry_and_signature() {
        let c = AuthConfig {
            signing_keys: vec![Secret::new("k1")],
            ..Default::default()
        };
        let a = auth(c).await;
        let exp = now_secs() + 60;
        let q = a.sign_path("/a/b", exp);
        let params: HashMap<_, _> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        let ok = |path: &str, exp: &str| {
            a.verify_signed_path(path, exp, &params["kid"], &params["signature"])
        };
        assert!(ok("/a/b", &params["expires"]).is_ok());
        assert!(ok("/a/c", &params["expires"]).is_err());
        assert!(ok("/a/b", &(exp + 1).to_string()).is_err());
        let past = now_secs() - 1;
        let q = a.sign_path("/a/b", past);
        let p2: HashMap<_, _> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        assert_eq!(
            a.verify_signed_path("/a/b", &p2["expires"], &p2["kid"], &p2["signature"]),
            Err(AuthError::Expired)
        );
    }
}
