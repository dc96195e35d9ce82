//! A bound on how deep sequences nest, checked before any recursive parser sees a data set:
//! dicom-object's parser recurses per level, so a data set nested thousands of levels deep
//! would exhaust the stack.

use std::io::{Read, Seek};

use super::frames::{Encoding, WalkError, Walker, ITEM, ITEM_END, PIXEL_DATA, SEQ_END, UNDEFINED};

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
    if enc == Encoding::Deflated {
        return Ok(());
    }
    let mut w = Walker {
        r,
        len,
        pos: start,
        enc,
    };
    w.seek(start)?;
    w.walk_elements(None, enc, 0)
}

fn is_sequence(tag: (u16, u16), vr: Option<[u8; 2]>) -> bool {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    match vr {
        Some(vr) => &vr == b"SQ",
        None => dicom_dictionary_std::StandardDataDictionary
            .by_tag(dicom_core::Tag(tag.0, tag.1))
            .is_some_and(|e| matches!(e.vr(), VirtualVr::Exact(dicom_core::VR::SQ))),
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
    ) -> Result<(), WalkError> {
        loop {
            if self.pos >= end.unwrap_or(self.len) {
                return Ok(());
            }
            let (tag, vr, length) = self.header(enc)?;
            if depth == 0 && tag >= PIXEL_DATA {
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
            } else if is_sequence(tag, vr) || length == UNDEFINED {
                let inner = if vr == Some(*b"UN") {
                    Encoding::ImplicitLe
                } else {
                    enc
                };
                self.walk_sequence(length, inner, depth + 1)?;
            } else {
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

    fn walk_sequence(&mut self, length: u32, enc: Encoding, depth: u32) -> Result<(), WalkError> {
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
                    self.walk_elements(item_end, enc, depth)?;
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
