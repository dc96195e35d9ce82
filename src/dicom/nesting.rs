//! The checks every data set a peer sends passes before a parser sees it: sequences nest
//! at most [`MAX_NESTING`] deep (dicom-object's parser recurses per level, so a data set
//! nested thousands of levels deep would exhaust the stack), and the values of binary VRs
//! are whole (a parser that reads whole values only loses its place otherwise, and takes
//! value bytes for element headers that may claim gigabytes). Checked: objects on the
//! ingest path (deflated ones too, through their inflated stream), and the command sets,
//! identifiers and action information of DIMSE messages.

use std::io::{self, Cursor, Read, Seek, SeekFrom};

use dicom_core::VR;
use flate2::read::DeflateDecoder;

use super::walker::{Encoding, WalkError, Walker, ITEM, ITEM_END, PIXEL_DATA, SEQ_END, UNDEFINED};

/// How deep sequences may nest (DICOM SR trees are rarely deeper than a few dozen levels).
pub const MAX_NESTING: u32 = 64;

/// Check that sequences nest at most [`MAX_NESTING`] deep in the data set before Pixel
/// Data, whatever their lengths: parsers that recurse per level (dicom-object's) are only
/// handed data sets that cannot exhaust the stack.
pub fn check_nesting<R: Read + Seek>(
    r: &mut R,
    len: u64,
    start: u64,
    enc: Encoding,
) -> Result<(), WalkError> {
    walk(r, len, start, enc, true)
}

/// [`check_nesting`] for a deflated data set starting at `start`: it is inflated twice as a
/// stream (once for its length, once to walk it), never held in memory.
pub fn check_deflated<R: Read + Seek>(r: &mut R, start: u64) -> Result<(), WalkError> {
    r.seek(SeekFrom::Start(start))?;
    let len = io::copy(&mut DeflateDecoder::new(&mut *r), &mut io::sink()).map_err(|e| {
        WalkError::Malformed(format!("the deflated data set does not inflate: {e}"))
    })?;
    r.seek(SeekFrom::Start(start))?;
    let mut inflated = Forward {
        inner: DeflateDecoder::new(&mut *r),
        pos: 0,
    };
    walk(&mut inflated, len, 0, Encoding::ExplicitLe, true)
}

/// Check a whole data set held in memory (a DIMSE command set, identifier or action
/// information) in the encoding of transfer syntax `ts_uid`, Pixel Data and what follows it
/// included: these are parsed in full.
pub fn check_data_set(bytes: &[u8], ts_uid: &str) -> Result<(), String> {
    let enc = Encoding::of(ts_uid).ok_or_else(|| format!("unknown transfer syntax {ts_uid}"))?;
    let checked = match enc {
        Encoding::Deflated => {
            let len = io::copy(&mut DeflateDecoder::new(bytes), &mut io::sink())
                .map_err(|e| format!("the deflated data set does not inflate: {e}"))?;
            let mut inflated = Forward {
                inner: DeflateDecoder::new(bytes),
                pos: 0,
            };
            walk(&mut inflated, len, 0, Encoding::ExplicitLe, false)
        }
        enc => walk(&mut Cursor::new(bytes), bytes.len() as u64, 0, enc, false),
    };
    checked.map_err(|e| e.to_string())
}

fn walk<R: Read + Seek>(
    r: &mut R,
    len: u64,
    start: u64,
    enc: Encoding,
    header_only: bool,
) -> Result<(), WalkError> {
    let mut w = Walker {
        r,
        len,
        pos: start,
        enc,
    };
    w.seek(start)?;
    w.walk_elements(None, enc, 0, header_only)
}

/// A stream that seeks forward only, by reading (an inflated data set cannot seek).
struct Forward<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Forward<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> Seek for Forward<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(_) => None,
        };
        let Some(target) = target.filter(|t| *t >= self.pos) else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "an inflated data set can only be read forward",
            ));
        };
        let skipped = io::copy(
            &mut (&mut self.inner).take(target - self.pos),
            &mut io::sink(),
        )?;
        self.pos += skipped;
        if self.pos < target {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(self.pos)
    }
}

/// The VR an element is read with: the explicit one, or the dictionary's in implicit VR.
fn element_vr(tag: (u16, u16), vr: Option<[u8; 2]>) -> Option<VR> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    match vr {
        Some(vr) => VR::from_binary(vr),
        None => dicom_dictionary_std::StandardDataDictionary
            .by_tag(dicom_core::Tag(tag.0, tag.1))
            .and_then(|e| match e.vr() {
                VirtualVr::Exact(vr) => Some(vr),
                _ => None,
            }),
    }
}

/// The size of one value of a binary VR: its length must be a multiple of it (PS3.5
/// §6.2). A parser that reads whole values only would otherwise lose its place in the
/// data set and take the next bytes for an element header (dicom-rs does).
fn value_size(vr: VR) -> u32 {
    match vr {
        VR::OW | VR::SS | VR::US => 2,
        VR::AT | VR::FL | VR::OF | VR::OL | VR::SL | VR::UL => 4,
        VR::FD | VR::OD | VR::OV | VR::SV | VR::UV => 8,
        _ => 1,
    }
}

impl<R: Read + Seek> Walker<'_, R> {
    /// Walk the elements of a data set or item (to `end`, or to its delimiter when `end` is
    /// None), descending into every sequence.
    fn walk_elements(
        &mut self,
        end: Option<u64>,
        enc: Encoding,
        depth: u32,
        header_only: bool,
    ) -> Result<(), WalkError> {
        loop {
            if self.pos >= end.unwrap_or(self.len) {
                return Ok(());
            }
            let (tag, vr, length) = self.header(enc)?;
            if header_only && depth == 0 && tag >= PIXEL_DATA {
                return Ok(());
            }
            if tag == ITEM_END && end.is_none() && depth > 0 {
                return Ok(());
            }
            let encapsulated = length == UNDEFINED
                && (tag == PIXEL_DATA || matches!(vr, Some(v) if &v == b"OB" || &v == b"OW"));
            if encapsulated {
                // Nested encapsulated pixel data (an icon, say): fragments, not items.
                self.skip_fragments(enc)?;
            } else if element_vr(tag, vr) == Some(VR::SQ) || length == UNDEFINED {
                let inner = if vr == Some(*b"UN") {
                    Encoding::ImplicitLe
                } else {
                    enc
                };
                self.walk_sequence(length, inner, depth + 1, header_only)?;
            } else {
                let size = element_vr(tag, vr).map_or(1, value_size);
                if length % size != 0 {
                    return Err(WalkError::Malformed(format!(
                        "the value of ({:04X},{:04X}) is {length} bytes, not a multiple of {size}",
                        tag.0, tag.1
                    )));
                }
                self.skip(length as u64, "element value")?;
            }
        }
    }

    fn skip_fragments(&mut self, enc: Encoding) -> Result<(), WalkError> {
        loop {
            let (tag, _, len) = self.header(enc)?;
            match tag {
                SEQ_END => return Ok(()),
                ITEM if len != UNDEFINED => self.skip(len as u64, "pixel data fragment")?,
                _ => {
                    return Err(WalkError::Malformed(
                        "malformed encapsulated pixel data fragments".into(),
                    ))
                }
            }
        }
    }

    fn walk_sequence(
        &mut self,
        length: u32,
        enc: Encoding,
        depth: u32,
        header_only: bool,
    ) -> Result<(), WalkError> {
        if depth > MAX_NESTING {
            return Err(WalkError::Malformed(format!(
                "sequences nested more than {MAX_NESTING} deep"
            )));
        }
        let end = (length != UNDEFINED).then(|| self.pos + length as u64);
        loop {
            if end.is_some_and(|e| self.pos >= e) {
                return Ok(());
            }
            let (tag, _, len) = self.header(enc)?;
            match tag {
                SEQ_END if end.is_none() => return Ok(()),
                ITEM => {
                    let item_end = (len != UNDEFINED).then(|| self.pos + len as u64);
                    self.walk_elements(item_end, enc, depth, header_only)?;
                }
                other => {
                    return Err(WalkError::Malformed(format!(
                        "({:04X},{:04X}) inside a sequence where an item was expected",
                        other.0, other.1
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const IMPLICIT: &str = "1.2.840.10008.1.2";
    const EXPLICIT: &str = "1.2.840.10008.1.2.1";
    const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

    /// ContentSequence items nested `depth` deep, undefined lengths, little endian.
    fn nested(depth: usize, explicit: bool) -> Vec<u8> {
        let mut b = Vec::new();
        for _ in 0..depth {
            b.extend_from_slice(&[0x40, 0x00, 0x30, 0xA7]);
            if explicit {
                b.extend_from_slice(b"SQ\0\0");
            }
            b.extend_from_slice(&[0xFF; 4]);
            b.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        for _ in 0..depth {
            b.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
            b.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        }
        b
    }

    fn deflate(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn data_sets_in_memory_are_bounded() {
        assert!(check_data_set(&nested(10, false), IMPLICIT).is_ok());
        assert!(check_data_set(&nested(10, true), EXPLICIT).is_ok());
        let deep = check_data_set(&nested(5000, false), IMPLICIT).unwrap_err();
        assert!(deep.contains("nested more than 64"), "{deep}");
        assert!(check_data_set(&nested(100, true), EXPLICIT).is_err());
        assert!(check_data_set(b"", IMPLICIT).is_ok());
        assert!(check_data_set(&nested(1, false), "1.2.3.4").is_err());
    }

    #[test]
    fn deflated_data_sets_are_walked_inflated() {
        assert!(check_data_set(&deflate(&nested(10, true)), DEFLATED).is_ok());
        let deep = check_data_set(&deflate(&nested(5000, true)), DEFLATED).unwrap_err();
        assert!(deep.contains("nested more than 64"), "{deep}");
        assert!(check_data_set(b"not deflate at all", DEFLATED).is_err());
        // In a file: the deflated data set starts after the (here: fake) meta group.
        let mut file = b"META".to_vec();
        file.extend(deflate(&nested(5000, true)));
        assert!(check_deflated(&mut Cursor::new(&file), 4).is_err());
        let mut file = b"META".to_vec();
        file.extend(deflate(&nested(3, true)));
        assert!(check_deflated(&mut Cursor::new(&file), 4).is_ok());
    }

    #[test]
    fn binary_values_must_be_whole() {
        // (0008,0016) as FD with 26 bytes (found by the dicom_header fuzz target): dicom-rs
        // reads three doubles and takes the last two bytes for the next element's header.
        let mut b = vec![0x08, 0x00, 0x16, 0x00, b'F', b'D', 26, 0];
        b.extend_from_slice(&[0x31; 26]);
        let err = check_data_set(&b, EXPLICIT).unwrap_err();
        assert!(err.contains("not a multiple of 8"), "{err}");
        // Rows (US) with 3 bytes, implicit VR: the dictionary's VR counts.
        let rows = [0x28, 0x00, 0x10, 0x00, 3, 0, 0, 0, 1, 2, 3];
        assert!(check_data_set(&rows, IMPLICIT).is_err());
        let rows = [0x28, 0x00, 0x10, 0x00, 2, 0, 0, 0, 1, 2];
        assert!(check_data_set(&rows, IMPLICIT).is_ok());
    }

    #[test]
    fn identifiers_are_checked_past_pixel_data() {
        // Pixel Data (OB, 2 bytes), then a deep sequence in a private group after it.
        let mut b = vec![0xE0, 0x7F, 0x10, 0x00];
        b.extend_from_slice(b"OB\0\0");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend(nested(100, true).iter().enumerate().map(|(i, v)| {
            // Move the outer sequence to group 0x7FE1, after Pixel Data.
            match i {
                0 => 0xE1,
                1 => 0x7F,
                _ => *v,
            }
        }));
        let whole = check_data_set(&b, EXPLICIT);
        let header = check_nesting(
            &mut Cursor::new(&b),
            b.len() as u64,
            0,
            Encoding::ExplicitLe,
        );
        assert!(whole.is_err());
        assert!(header.is_ok());
    }
}
