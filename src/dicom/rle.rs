//! RLE Lossless encoding (PS3.5 Annex G), which dicom-rs can decode but not write: a frame
//! of native little-endian samples becomes one fragment — a 64-byte header (the number of
//! segments and their offsets) and, for each sample and each of its bytes from the most
//! significant, one segment holding that byte of every pixel, PackBits-compressed.

/// The most segments a header can list.
const MAX_SEGMENTS: usize = 15;

/// Encode one frame of `pixels` pixels, each `samples` samples of `bytes` bytes
/// (interleaved, little-endian); `None` when the layout has more than 15 segments.
pub fn encode_frame(frame: &[u8], pixels: usize, samples: usize, bytes: usize) -> Option<Vec<u8>> {
    let segments = samples * bytes;
    if segments == 0 || segments > MAX_SEGMENTS || frame.len() < pixels * segments {
        return None;
    }
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(&(segments as u32).to_le_bytes());
    let mut plane = Vec::with_capacity(pixels);
    for s in 0..samples {
        for b in (0..bytes).rev() {
            let index = s * bytes + (bytes - 1 - b);
            let offset = out.len() as u32;
            out[4 + 4 * index..8 + 4 * index].copy_from_slice(&offset.to_le_bytes());
            plane.clear();
            let stride = samples * bytes;
            plane.extend((0..pixels).map(|p| frame[p * stride + s * bytes + b]));
            packbits(&plane, &mut out);
            if out.len() % 2 == 1 {
                out.push(0);
            }
        }
    }
    Some(out)
}

/// PackBits: a run of 2 to 128 equal bytes as `1 - n` and the byte; anything else as
/// literals, `n - 1` and up to 128 bytes.
fn packbits(data: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < data.len() {
        let run = data[i..]
            .iter()
            .take(128)
            .take_while(|&&b| b == data[i])
            .count();
        if run >= 2 {
            out.push((1i16 - run as i16) as i8 as u8);
            out.push(data[i]);
            i += run;
            continue;
        }
        // Literals up to the next run of at least 3 (a run of 2 inside literals costs
        // nothing more than as literals).
        let start = i;
        while i < data.len() && i - start < 128 {
            if i + 2 < data.len() && data[i] == data[i + 1] && data[i] == data[i + 2] {
                break;
            }
            i += 1;
        }
        out.push((i - start - 1) as u8);
        out.extend_from_slice(&data[start..i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PackBits decoding, as PS3.5 G.3.2 describes it.
    fn unpack(mut data: &[u8], len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < len && !data.is_empty() {
            let n = data[0] as i8;
            if n >= 0 {
                let k = n as usize + 1;
                out.extend_from_slice(&data[1..1 + k]);
                data = &data[1 + k..];
            } else if n != -128 {
                out.extend(std::iter::repeat_n(data[1], (1 - n as isize) as usize));
                data = &data[2..];
            } else {
                data = &data[1..];
            }
        }
        out
    }

    fn decode(fragment: &[u8], pixels: usize, samples: usize, bytes: usize) -> Vec<u8> {
        let n = u32::from_le_bytes(fragment[..4].try_into().unwrap()) as usize;
        assert_eq!(n, samples * bytes);
        let mut out = vec![0u8; pixels * n];
        for seg in 0..n {
            let start =
                u32::from_le_bytes(fragment[4 + 4 * seg..8 + 4 * seg].try_into().unwrap()) as usize;
            let plane = unpack(&fragment[start..], pixels);
            let (s, msb_index) = (seg / bytes, seg % bytes);
            let b = bytes - 1 - msb_index;
            for (p, v) in plane.iter().enumerate() {
                out[p * n + s * bytes + b] = *v;
            }
        }
        out
    }

    #[test]
    fn frames_round_trip() {
        let mut seed = 7u32;
        let mut noise = || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) as u8
        };
        for (samples, bytes) in [(1, 1), (1, 2), (3, 1), (1, 4)] {
            let pixels = 37 * 11;
            let frame: Vec<u8> = (0..pixels * samples * bytes)
                .map(|i| if i % 50 < 30 { 9 } else { noise() })
                .collect();
            let encoded = encode_frame(&frame, pixels, samples, bytes).unwrap();
            assert_eq!(encoded.len() % 2, 0);
            assert_eq!(
                decode(&encoded, pixels, samples, bytes),
                frame,
                "{samples}x{bytes}"
            );
        }
        assert!(encode_frame(&[0; 64], 4, 4, 4).is_none());
    }

    #[test]
    fn runs_and_literals() {
        let mut out = Vec::new();
        packbits(&[1, 1, 1, 1, 2, 3, 4, 4, 5], &mut out);
        assert_eq!(unpack(&out, 9), [1, 1, 1, 1, 2, 3, 4, 4, 5]);
        assert_eq!(&out[..2], &[(-3i8) as u8, 1]);
        let long = vec![0u8; 300];
        out.clear();
        packbits(&long, &mut out);
        assert_eq!(
            out,
            [(-127i8) as u8, 0, (-127i8) as u8, 0, (-43i8) as u8, 0]
        );
    }
}
