//! Transfer syntaxes: a UID that dicom-rs' registry knows, parsed once where it enters
//! (a file meta group, a presentation context, an Accept header, an index row).

use std::fmt;

use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::Uid;

/// A transfer syntax known to this server.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TransferSyntax(Uid);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferSyntaxError {
    #[error("transfer syntax {0:?} is not a valid UID")]
    NotAUid(String),
    #[error("transfer syntax {0} is not supported")]
    Unknown(String),
}

impl TransferSyntax {
    pub const IMPLICIT_VR_LE: &'static str = "1.2.840.10008.1.2";
    pub const EXPLICIT_VR_LE: &'static str = "1.2.840.10008.1.2.1";
    pub const EXPLICIT_VR_BE: &'static str = "1.2.840.10008.1.2.2";

    /// Parse a UID (padding trimmed) that names a transfer syntax dicom-rs knows.
    pub fn parse(raw: &str) -> Result<Self, TransferSyntaxError> {
        let uid = Uid::parse(raw).map_err(|_| TransferSyntaxError::NotAUid(raw.to_owned()))?;
        match TransferSyntaxRegistry.get(uid.as_str()) {
            Some(_) => Ok(TransferSyntax(uid)),
            None => Err(TransferSyntaxError::Unknown(uid.to_string())),
        }
    }

    /// Explicit VR Little Endian, the default of DICOMweb and of PS3.5.
    pub fn explicit_vr_le() -> Self {
        TransferSyntax(Uid::parse(Self::EXPLICIT_VR_LE).expect("a valid UID"))
    }

    /// Implicit VR Little Endian, the default of DIMSE.
    pub fn implicit_vr_le() -> Self {
        TransferSyntax(Uid::parse(Self::IMPLICIT_VR_LE).expect("a valid UID"))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn uid(&self) -> &Uid {
        &self.0
    }

    /// dicom-rs' description of it (codec, endianness, VR explicitness).
    pub fn entry(&self) -> &'static dicom_encoding::transfer_syntax::TransferSyntax {
        TransferSyntaxRegistry
            .get(self.as_str())
            .expect("parsed transfer syntaxes are in the registry")
    }

    /// Whether data sets in it can be read with their pixel data decoded to native form
    /// (no codec needed, or dicom-rs has the decoder).
    pub fn is_decodable(&self) -> bool {
        let ts = self.entry();
        ts.is_codec_free() || ts.can_decode_all()
    }

    /// Whether it is one of the two uncompressed little-endian syntaxes.
    pub fn is_native_le(&self) -> bool {
        matches!(self.as_str(), Self::EXPLICIT_VR_LE | Self::IMPLICIT_VR_LE)
    }
}

impl fmt::Display for TransferSyntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TransferSyntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransferSyntax({})", self.as_str())
    }
}

impl PartialEq<str> for TransferSyntax {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl TryFrom<String> for TransferSyntax {
    type Error = TransferSyntaxError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        TransferSyntax::parse(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_syntaxes_only() {
        let jpeg = TransferSyntax::parse("1.2.840.10008.1.2.4.50\0").unwrap();
        assert_eq!(jpeg.as_str(), "1.2.840.10008.1.2.4.50");
        assert!(jpeg.is_decodable() && !jpeg.is_native_le());
        assert!(TransferSyntax::explicit_vr_le().is_native_le());
        assert_eq!(
            TransferSyntax::parse("1.2.3.4"),
            Err(TransferSyntaxError::Unknown("1.2.3.4".into()))
        );
        assert!(matches!(
            TransferSyntax::parse("abc"),
            Err(TransferSyntaxError::NotAUid(_))
        ));
    }
}
