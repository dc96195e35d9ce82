//! Object keys: the names of objects in the store.
//!
//! An instance is stored under `<StudyInstanceUID>/<sha256 of the bytes>.dcm`: built only
//! from a validated [`Uid`] and a digest, so no input can escape the store's root, and one
//! key always names one byte sequence (two versions of an instance can never overwrite each
//! other). Keys stay short (at most 133 bytes) so that every S3 implementation takes them.
//! The received parts of offline uploads in progress are `uploads/<uuid>/<start>.part`.

use std::fmt;

use super::{Sha256, Uid};

/// Where the parts of offline uploads in progress are kept in the store.
pub const UPLOADS_PREFIX: &str = "uploads/";

/// The name of one stored object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an object key of this store")]
pub struct KeyError(pub String);

impl ObjectKey {
    /// The key of an instance of `study` whose bytes hash to `sha256`.
    pub fn new(study: &Uid, sha256: &Sha256) -> Self {
        ObjectKey(format!("{study}/{sha256}.dcm"))
    }

    /// A received part of an offline upload in progress: `uploads/<uuid>/<start>.part`.
    /// Not an instance: listings report these under [`UPLOADS_PREFIX`], not as objects.
    pub fn upload_part(image_uuid: &uuid::Uuid, start: u64) -> Self {
        ObjectKey(format!("{UPLOADS_PREFIX}{image_uuid}/{start}.part"))
    }

    /// An instance key read back from the index or a listing, if it has our shape.
    pub fn parse(raw: &str) -> Option<Self> {
        let (study, file) = raw.split_once('/')?;
        let hash = file.strip_suffix(".dcm")?;
        let lower_hex = hash.len() == 64
            && hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (Uid::parse(study).is_ok() && lower_hex).then(|| ObjectKey(raw.to_owned()))
    }

    /// An upload part's key read back from the index, if it has the shape
    /// [`ObjectKey::upload_part`] gives.
    pub fn parse_upload_part(raw: &str) -> Option<Self> {
        let rest = raw.strip_prefix(UPLOADS_PREFIX)?;
        let (uuid, file) = rest.split_once('/')?;
        let start = file.strip_suffix(".part")?;
        let ok = uuid::Uuid::parse_str(uuid).is_ok()
            && !start.is_empty()
            && start.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| ObjectKey(raw.to_owned()))
    }

    /// Whether this names an instance (not an upload part).
    pub fn is_instance(&self) -> bool {
        !self.0.starts_with(UPLOADS_PREFIX)
    }

    /// The SHA-256 an instance key claims for its bytes (None for an upload part).
    pub fn sha256(&self) -> Option<Sha256> {
        let file = self.0.rsplit('/').next()?;
        Sha256::parse_hex(file.strip_suffix(".dcm")?).ok()
    }

    /// The study an instance key belongs to (None for an upload part).
    pub fn study(&self) -> Option<Uid> {
        self.is_instance()
            .then(|| Uid::parse(self.0.split('/').next()?).ok())
            .flatten()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = KeyError;
    /// Either shape of key (what the index holds).
    fn try_from(raw: String) -> Result<Self, KeyError> {
        ObjectKey::parse(&raw)
            .or_else(|| ObjectKey::parse_upload_part(&raw))
            .ok_or(KeyError(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> Uid {
        Uid::parse(s).unwrap()
    }

    #[test]
    fn keys_round_trip_and_refuse_foreign_shapes() {
        let digest = Sha256::from_bytes([0xab; 32]);
        let key = ObjectKey::new(&uid("1.2"), &digest);
        assert_eq!(key.as_str(), format!("1.2/{}.dcm", "ab".repeat(32)));
        assert_eq!(key.sha256(), Some(digest));
        assert_eq!(key.study(), Some(uid("1.2")));
        assert_eq!(ObjectKey::parse(key.as_str()), Some(key.clone()));
        assert_eq!(ObjectKey::try_from(key.to_string()), Ok(key));
        assert_eq!(ObjectKey::parse("1.2/x.dcm"), None);
        assert_eq!(
            ObjectKey::parse(&format!("../{}.dcm", "ab".repeat(32))),
            None
        );
        assert_eq!(
            ObjectKey::parse(&format!("1.2/1.3/{}.dcm", "ab".repeat(32))),
            None
        );
        assert_eq!(ObjectKey::parse(".spool-abc"), None);
        let longest = ObjectKey::new(&uid(&"1".repeat(64)), &Sha256::from_bytes([0; 32]));
        assert_eq!(longest.as_str().len(), 133);
    }

    #[test]
    fn upload_parts_are_not_instances() {
        let id = uuid::Uuid::new_v4();
        let part = ObjectKey::upload_part(&id, 4096);
        assert!(!part.is_instance());
        assert_eq!(part.sha256(), None);
        assert_eq!(ObjectKey::parse(part.as_str()), None);
        assert_eq!(
            ObjectKey::parse_upload_part(part.as_str()),
            Some(part.clone())
        );
        assert_eq!(ObjectKey::try_from(part.to_string()), Ok(part));
        assert_eq!(ObjectKey::parse_upload_part("uploads/../x.part"), None);
    }
}
