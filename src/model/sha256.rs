//! SHA-256 digests: of every stored object (its key names it), of offline uploads (the
//! client's checksum), of API keys. Parsed from hex once, kept as bytes.

use std::fmt;

use sha2::Digest;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256([u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a SHA-256 in hex (64 hexadecimal digits)")]
pub struct Sha256Error(pub String);

impl Sha256 {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Sha256(bytes)
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Sha256(sha2::Sha256::digest(bytes).into())
    }

    /// Parse 64 hexadecimal digits (either case; surrounding spaces are trimmed).
    pub fn parse_hex(raw: &str) -> Result<Self, Sha256Error> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(raw.trim(), &mut out).map_err(|_| Sha256Error(raw.to_owned()))?;
        Ok(Sha256(out))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as stored in the index and shown to clients.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl From<sha2::digest::Output<sha2::Sha256>> for Sha256 {
    fn from(out: sha2::digest::Output<sha2::Sha256>) -> Self {
        Sha256(out.into())
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

impl TryFrom<String> for Sha256 {
    type Error = Sha256Error;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Sha256::parse_hex(&s)
    }
}

impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let d = Sha256::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256::parse_hex(&d.to_hex().to_uppercase()), Ok(d));
        assert!(Sha256::parse_hex("abc").is_err());
        assert!(Sha256::parse_hex(&"g".repeat(64)).is_err());
    }
}
