//! Locating pixel data in the stored bytes: where the data set starts, where Pixel Data
//! sits, and the byte ranges of every frame — without decoding anything.
//!
//! It walks the raw encoding with [`super::walker`]: only headers and item delimiters are
//! read and values skipped, so it costs a few reads whatever the object's size, and a value
//! that runs past the end of the bytes (a truncated object) is an error.

use std::io::{Read, Seek, SeekFrom};

pub use super::walker::{Encoding, WalkError};
use super::walker::{Walker, ITEM, ITEM_END, PIXEL_DATA, SEQ_END, UNDEFINED};

/// Where the Pixel Data element lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PixelData {
    /// Native pixel data: the value's offset and length, and its VR (`OB`/`OW`, or `None`
    /// when the encoding is implicit).
    Native {
        offset: u64,
        length: u64,
        vr: Option<[u8; 2]>,
    },
    /// Encapsulated: the basic offset table and each fragment's (value offset, length),
    /// plus the offset of the first fragment's item header (BOT entries count from there).
    Encapsulated {
        offset_table: Vec<u32>,
        fragments: Vec<(u64, u32)>,
        first_item: u64,
    },
}

/// A frame as the list of byte ranges (offset, length) that make it up.
pub type Frame = Vec<(u64, u32)>;

/// How a Part-10 object begins: where its file meta group and data set start, and the
/// transfer syntax the meta group declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Whether the `DICM` marker is present (after a 128-byte preamble or at offset 0).
    /// Some writers (pydicom without `enforce_file_format`) emit the meta group bare.
    pub has_marker: bool,
    pub meta_start: u64,
    /// The first meta element after the group length element (if there is one).
    pub meta_body_start: u64,
    pub dataset_start: u64,
    pub transfer_syntax: Option<String>,
}

/// Find the file meta group and the start of the data set of a Part-10 object.
pub fn layout<R: Read + Seek>(r: &mut R, len: u64) -> Result<Layout, WalkError> {
    let mut magic = [0u8; 6];
    let mut meta_start = None;
    for candidate in [128u64, 0] {
        if len >= candidate + 4 {
            r.seek(SeekFrom::Start(candidate))?;
            r.read_exact(&mut magic[..4])?;
            if &magic[..4] == b"DICM" {
                meta_start = Some(candidate + 4);
                break;
            }
        }
    }
    let has_marker = meta_start.is_some();
    if meta_start.is_none() && len >= 6 {
        // A bare meta group: (0002,xxxx) with an explicit VR right at the start.
        r.seek(SeekFrom::Start(0))?;
        r.read_exact(&mut magic)?;
        if magic[..2] == [0x02, 0x00] && magic[4..6].iter().all(u8::is_ascii_uppercase) {
            meta_start = Some(0);
        }
    }
    let meta_start = meta_start.ok_or(WalkError::NotPart10)?;
    let mut w = Walker {
        r,
        len,
        pos: meta_start,
        enc: Encoding::ExplicitLe,
    };
    w.seek(meta_start)?;
    let mut transfer_syntax = None;
    let mut meta_body_start = meta_start;
    loop {
        let start = w.pos;
        if start == len {
            break;
        }
        // The data set may use another encoding: look at the group before reading a VR.
        let group = u16::from_le_bytes(w.read::<2>("file meta group")?);
        w.seek(start)?;
        if group != 0x0002 {
            break;
        }
        let (tag, _, length) = w.header(Encoding::ExplicitLe)?;
        if length == UNDEFINED || length > 1 << 20 {
            return Err(WalkError::Malformed(format!(
                "file meta element ({:04X},{:04X}) has length {length}",
                tag.0, tag.1
            )));
        }
        if tag == (0x0002, 0x0000) && start == meta_start {
            meta_body_start = start + 12;
        }
        if tag == (0x0002, 0x0010) && length <= 128 {
            let mut v = vec![0u8; length as usize];
            if w.pos + length as u64 > len {
                return Err(WalkError::Truncated("file meta group"));
            }
            w.r.read_exact(&mut v)?;
            w.pos += length as u64;
            let ts = String::from_utf8_lossy(&v)
                .trim_end_matches(['\0', ' '])
                .to_owned();
            transfer_syntax = Some(ts);
        } else {
            w.skip(length as u64, "file meta group")?;
        }
    }
    if meta_start == w.pos {
        return Err(WalkError::NotPart10);
    }
    Ok(Layout {
        has_marker,
        meta_start,
        meta_body_start,
        dataset_start: w.pos,
        transfer_syntax,
    })
}

/// Walk the top level of the data set to the Pixel Data element, if any.
pub fn find_pixel_data<R: Read + Seek>(
    r: &mut R,
    len: u64,
    start: u64,
    enc: Encoding,
) -> Result<Option<PixelData>, WalkError> {
    if enc == Encoding::Deflated {
        return Ok(None);
    }
    let mut w = Walker {
        r,
        len,
        pos: start,
        enc,
    };
    w.seek(start)?;
    while w.pos < len {
        let (tag, vr, length) = w.header(enc)?;
        if tag == PIXEL_DATA {
            return w.pixel_data(vr, length).map(Some);
        }
        if tag > PIXEL_DATA {
            return Ok(None);
        }
        w.skip_value(vr, length)?;
    }
    Ok(None)
}

/// Split pixel data into frames. Returns `None` when frames cannot be located without
/// decoding (encapsulated with more fragments than frames and no usable offset table, or
/// 1-bit native data).
pub fn frames(
    pd: &PixelData,
    number_of_frames: u64,
    native_frame_len: Option<u64>,
) -> Option<Vec<Frame>> {
    let n = number_of_frames.max(1);
    match pd {
        PixelData::Native { offset, length, .. } => {
            let flen = native_frame_len?;
            if flen == 0 || flen * n > *length || flen > u32::MAX as u64 {
                return None;
            }
            Some(
                (0..n)
                    .map(|i| vec![(offset + i * flen, flen as u32)])
                    .collect(),
            )
        }
        PixelData::Encapsulated {
            offset_table,
            fragments,
            first_item,
        } => {
            if fragments.is_empty() {
                return None;
            }
            if n == 1 {
                return Some(vec![fragments.clone()]);
            }
            if fragments.len() as u64 == n {
                return Some(fragments.iter().map(|f| vec![*f]).collect());
            }
            if offset_table.len() as u64 != n {
                return None;
            }
            // Fragment item headers sit 8 bytes before each value.
            let mut out: Vec<Frame> = Vec::with_capacity(n as usize);
            for (i, &rel) in offset_table.iter().enumerate() {
                let begin = first_item + rel as u64;
                let end = offset_table
                    .get(i + 1)
                    .map(|&e| first_item + e as u64)
                    .unwrap_or(u64::MAX);
                let frame: Frame = fragments
                    .iter()
                    .filter(|(off, _)| *off - 8 >= begin && *off - 8 < end)
                    .copied()
                    .collect();
                if frame.is_empty() {
                    return None;
                }
                out.push(frame);
            }
            Some(out)
        }
    }
}

/// Encode frames for the index: per frame a u32 count, then (u64 offset, u32 length) pairs.
pub fn encode_table(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames.len() * 16);
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        for (off, len) in f {
            out.extend_from_slice(&off.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
        }
    }
    out
}

/// Decode what [`encode_table`] wrote; `None` if it is malformed.
pub fn decode_table(mut b: &[u8]) -> Option<Vec<Frame>> {
    let mut frames = Vec::new();
    while !b.is_empty() {
        let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        b = &b[4..];
        let mut f = Vec::with_capacity(n);
        for _ in 0..n {
            let off = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
            let len = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?);
            f.push((off, len));
            b = &b[12..];
        }
        frames.push(f);
    }
    Some(frames)
}
impl<R: Read + Seek> Walker<'_, R> {
    fn skip_value(&mut self, vr: Option<[u8; 2]>, length: u32) -> Result<(), WalkError> {
        if length != UNDEFINED {
            return self.skip(length as u64, "element value");
        }
        // Undefined length: a sequence (or UN holding one, encoded implicit little endian).
        let inner = if vr == Some(*b"UN") {
            Encoding::ImplicitLe
        } else {
            self.enc
        };
        self.skip_sequence(inner, 0)
    }

    fn skip_sequence(&mut self, enc: Encoding, depth: u32) -> Result<(), WalkError> {
        if depth > 64 {
            return Err(WalkError::Malformed(
                "sequences nested more than 64 deep".into(),
            ));
        }
        loop {
            let (tag, _, len) = self.header(enc)?;
            match tag {
                SEQ_END => return Ok(()),
                ITEM if len == UNDEFINED => self.skip_item(enc, depth)?,
                ITEM => self.skip(len as u64, "sequence item")?,
                other => {
                    return Err(WalkError::Malformed(format!(
                        "({:04X},{:04X}) inside a sequence where an item was expected",
                        other.0, other.1
                    )))
                }
            }
        }
    }

    fn skip_item(&mut self, enc: Encoding, depth: u32) -> Result<(), WalkError> {
        loop {
            let (tag, vr, len) = self.header(enc)?;
            if tag == ITEM_END {
                return Ok(());
            }
            if len == UNDEFINED {
                let inner = if vr == Some(*b"UN") {
                    Encoding::ImplicitLe
                } else {
                    enc
                };
                self.skip_sequence(inner, depth + 1)?;
            } else {
                self.skip(len as u64, "sequence item")?;
            }
        }
    }

    fn pixel_data(&mut self, vr: Option<[u8; 2]>, length: u32) -> Result<PixelData, WalkError> {
        if length != UNDEFINED {
            let offset = self.pos;
            self.skip(length as u64, "pixel data")?;
            return Ok(PixelData::Native {
                offset,
                length: length as u64,
                vr,
            });
        }
        let enc = self.enc;
        let (tag, _, bot_len) = self.header(enc)?;
        if tag != ITEM {
            return Err(WalkError::Malformed(
                "encapsulated pixel data without an offset table item".into(),
            ));
        }
        let mut offset_table = Vec::with_capacity(bot_len as usize / 4);
        for _ in 0..bot_len / 4 {
            offset_table.push(self.u32(enc, "basic offset table")?);
        }
        self.skip((bot_len % 4) as u64, "basic offset table")?;
        let first_item = self.pos;
        let mut fragments = Vec::new();
        loop {
            let (tag, _, len) = self.header(enc)?;
            match tag {
                SEQ_END => break,
                ITEM if len != UNDEFINED => {
                    fragments.push((self.pos, len));
                    self.skip(len as u64, "pixel data fragment")?;
                }
                _ => {
                    return Err(WalkError::Malformed(
                        "unexpected element among pixel data fragments".into(),
                    ))
                }
            }
        }
        Ok(PixelData::Encapsulated {
            offset_table,
            fragments,
            first_item,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::walker::long_vr;
    use super::*;
    use std::io::Cursor;

    fn el(out: &mut Vec<u8>, g: u16, e: u16, vr: &[u8; 2], val: &[u8]) {
        out.extend_from_slice(&g.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
        out.extend_from_slice(vr);
        if long_vr(vr) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(val.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(val.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(val);
    }

    fn part10(body: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        el(&mut out, 0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1\0");
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn native_frames_are_located() {
        let mut body = Vec::new();
        el(&mut body, 0x0008, 0x0018, b"UI", b"1.2.3\0");
        // an undefined-length sequence with one undefined-length item
        body.extend_from_slice(&[
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        el(&mut body, 0x0008, 0x1150, b"UI", b"1.2\0");
        body.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        body.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        el(&mut body, 0x7FE0, 0x0010, b"OW", &[7u8; 32]);
        let bytes = part10(&body);
        let len = bytes.len() as u64;
        let mut c = Cursor::new(bytes);
        let layout = layout(&mut c, len).unwrap();
        let start = layout.dataset_start;
        assert_eq!(start, 132 + 8 + 20);
        assert_eq!(
            layout.transfer_syntax.as_deref(),
            Some("1.2.840.10008.1.2.1")
        );
        assert!(layout.has_marker);
        let pd = find_pixel_data(&mut c, len, start, Encoding::ExplicitLe)
            .unwrap()
            .unwrap();
        let PixelData::Native { offset, length, .. } = pd.clone() else {
            panic!()
        };
        assert_eq!(length, 32);
        assert_eq!(offset, len - 32);
        let f = frames(&pd, 2, Some(16)).unwrap();
        assert_eq!(f, vec![vec![(offset, 16)], vec![(offset + 16, 16)]]);
        assert_eq!(decode_table(&encode_table(&f)).unwrap(), f);
        assert!(
            frames(&pd, 3, Some(16)).is_none(),
            "frames beyond the value are refused"
        );
    }

    #[test]
    fn encapsulated_fragments_map_to_frames_and_truncation_is_seen() {
        let mut body = Vec::new();
        body.extend_from_slice(&[
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        // BOT with 2 entries: frame 0 at 0, frame 1 at 2 items later (12 + 12 bytes)
        body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 8, 0, 0, 0, 0, 0, 0, 0, 24, 0, 0, 0]);
        for _ in 0..3 {
            body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 4, 0, 0, 0, 1, 2, 3, 4]);
        }
        body.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let bytes = part10(&body);
        let len = bytes.len() as u64;
        let mut c = Cursor::new(bytes.clone());
        let start = layout(&mut c, len).unwrap().dataset_start;
        let pd = find_pixel_data(&mut c, len, start, Encoding::ExplicitLe)
            .unwrap()
            .unwrap();
        let f = frames(&pd, 2, None).unwrap();
        assert_eq!(f[0].len(), 2);
        assert_eq!(f[1].len(), 1);
        assert_eq!(frames(&pd, 1, None).unwrap()[0].len(), 3);

        let cut = &bytes[..bytes.len() - 10];
        let mut c = Cursor::new(cut.to_vec());
        let err =
            find_pixel_data(&mut c, cut.len() as u64, start, Encoding::ExplicitLe).unwrap_err();
        assert!(matches!(err, WalkError::Truncated(_)), "{err}");
    }

    #[test]
    fn unknown_vrs_have_long_lengths() {
        // (0020,0037) with the unknown VR "DW": as a short VR its value would be 24 bytes;
        // read as PS3.5 and dicom-rs read it (reserved field, 4-byte length) it claims
        // ~1.5 GB, which the walker must refuse before any parser allocates for it.
        let mut body = Vec::new();
        body.extend_from_slice(&[0x20, 0x00, 0x37, 0x00, b'D', b'W', 0x18, 0x00]);
        body.extend_from_slice(b"1.0\\0.0\\0.0\\0.0\\1.0\\0.0 ");
        el(&mut body, 0x7FE0, 0x0010, b"OW", &[7u8; 8]);
        let bytes = part10(&body);
        let len = bytes.len() as u64;
        let mut c = Cursor::new(bytes);
        let start = layout(&mut c, len).unwrap().dataset_start;
        let err = find_pixel_data(&mut c, len, start, Encoding::ExplicitLe).unwrap_err();
        assert!(matches!(err, WalkError::Truncated(_)), "{err}");
    }

    #[test]
    fn not_part10_is_refused() {
        let mut c = Cursor::new(vec![0u8; 300]);
        assert!(matches!(layout(&mut c, 300), Err(WalkError::NotPart10)));
    }

    #[test]
    fn a_bare_meta_group_is_accepted() {
        let with_marker = part10(&[0x08, 0x00, 0x18, 0x00, b'U', b'I', 2, 0, b'1', 0]);
        let bare = with_marker[132..].to_vec();
        let len = bare.len() as u64;
        let l = layout(&mut Cursor::new(bare), len).unwrap();
        assert!(!l.has_marker);
        assert_eq!(
            (l.meta_start, l.meta_body_start, l.dataset_start),
            (0, 0, 28)
        );
    }
}
