//! The element walker under [`super::frames`] and [`super::nesting`]: element headers read
//! from the raw encoding (explicit/implicit VR little endian, explicit VR big endian) and
//! values skipped, with every length checked against the end of the bytes, as PS3.5 and
//! dicom-rs read them — so that what the walker accepts, the parser reads the same way.

use std::io::{self, Read, Seek, SeekFrom};

pub(super) const UNDEFINED: u32 = 0xFFFF_FFFF;
pub(super) const ITEM: (u16, u16) = (0xFFFE, 0xE000);
pub(super) const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
pub(super) const SEQ_END: (u16, u16) = (0xFFFE, 0xE0DD);
pub(super) const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

/// How the data set is encoded after the file meta group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    ExplicitLe,
    ImplicitLe,
    ExplicitBe,
    /// Deflated: nothing can be range-read.
    Deflated,
}

impl Encoding {
    /// The encoding of a transfer syntax dicom-rs knows; None for an unknown one.
    pub fn of(ts_uid: &str) -> Option<Encoding> {
        use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
        // As negotiated, a UID may keep its padding.
        let ts_uid = ts_uid.trim_end_matches(['\0', ' ']);
        let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry.get(ts_uid)?;
        Some(match (ts_uid, ts.codec()) {
            (_, Codec::Dataset(_)) => Encoding::Deflated,
            ("1.2.840.10008.1.2", _) => Encoding::ImplicitLe,
            ("1.2.840.10008.1.2.2", _) => Encoding::ExplicitBe,
            _ => Encoding::ExplicitLe,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("the object ends before its {0} is complete (truncated)")]
    Truncated(&'static str),
    #[error("not a DICOM Part-10 object: no 'DICM' marker")]
    NotPart10,
    #[error("malformed encoding: {0}")]
    Malformed(String),
    #[error("reading the object: {0}")]
    Io(#[from] io::Error),
}

/// An element header: tag (group, element), VR when explicit, value length.
type ElementHeader = ((u16, u16), Option<[u8; 2]>, u32);

pub(super) struct Walker<'a, R> {
    pub(super) r: &'a mut R,
    pub(super) len: u64,
    pub(super) pos: u64,
    pub(super) enc: Encoding,
}

/// Whether an explicit VR has a 2-byte reserved field and a 4-byte length: every VR but
/// the short ones of PS3.5 Table 7.1-2 — an unknown VR too, as PS3.5 §6.2 asks and as
/// dicom-rs reads it (as UN). Walking it any other way would let a value that runs past the
/// end of the object through to the parser.
pub(super) fn long_vr(vr: &[u8; 2]) -> bool {
    !matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

impl<R: Read + Seek> Walker<'_, R> {
    pub(super) fn seek(&mut self, pos: u64) -> Result<(), WalkError> {
        self.r.seek(SeekFrom::Start(pos))?;
        self.pos = pos;
        Ok(())
    }

    pub(super) fn read<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], WalkError> {
        if self.pos + N as u64 > self.len {
            return Err(WalkError::Truncated(what));
        }
        let mut buf = [0u8; N];
        self.r.read_exact(&mut buf)?;
        self.pos += N as u64;
        Ok(buf)
    }

    pub(super) fn u16(&mut self, enc: Encoding, what: &'static str) -> Result<u16, WalkError> {
        let b = self.read::<2>(what)?;
        Ok(if enc == Encoding::ExplicitBe {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    pub(super) fn u32(&mut self, enc: Encoding, what: &'static str) -> Result<u32, WalkError> {
        let b = self.read::<4>(what)?;
        Ok(if enc == Encoding::ExplicitBe {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    pub(super) fn skip(&mut self, n: u64, what: &'static str) -> Result<(), WalkError> {
        if self.pos + n > self.len {
            return Err(WalkError::Truncated(what));
        }
        self.r.seek(SeekFrom::Current(n as i64))?;
        self.pos += n;
        Ok(())
    }

    /// Read an element header: tag, VR (explicit encodings only) and value length.
    pub(super) fn header(&mut self, enc: Encoding) -> Result<ElementHeader, WalkError> {
        let tag = (
            self.u16(enc, "element header")?,
            self.u16(enc, "element header")?,
        );
        if tag.0 == 0xFFFE {
            // Items and delimiters have no VR in any encoding.
            return Ok((tag, None, self.u32(enc, "item header")?));
        }
        match enc {
            Encoding::ImplicitLe => Ok((tag, None, self.u32(enc, "element header")?)),
            _ => {
                let vr = self.read::<2>("element header")?;
                if !vr.iter().all(u8::is_ascii_uppercase) {
                    return Err(WalkError::Malformed(format!(
                        "invalid VR bytes {vr:02X?} at ({:04X},{:04X})",
                        tag.0, tag.1
                    )));
                }
                let len = if long_vr(&vr) {
                    self.skip(2, "element header")?;
                    self.u32(enc, "element header")?
                } else {
                    self.u16(enc, "element header")? as u32
                };
                Ok((tag, Some(vr), len))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_of_padded_uids() {
        assert_eq!(
            Encoding::of("1.2.840.10008.1.2\0"),
            Some(Encoding::ImplicitLe)
        );
        assert_eq!(
            Encoding::of("1.2.840.10008.1.2.2 "),
            Some(Encoding::ExplicitBe)
        );
        assert_eq!(
            Encoding::of("1.2.840.10008.1.2.1"),
            Some(Encoding::ExplicitLe)
        );
        assert_eq!(
            Encoding::of("1.2.840.10008.1.2.1.99"),
            Some(Encoding::Deflated)
        );
        assert_eq!(Encoding::of("1.2.3"), None);
    }

    #[test]
    fn short_and_long_vrs() {
        assert!(long_vr(b"DW") && long_vr(b"UN") && long_vr(b"OB") && long_vr(b"SQ"));
        assert!(!long_vr(b"US") && !long_vr(b"UI") && !long_vr(b"PN"));
    }
}
