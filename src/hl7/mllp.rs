//! MLLP framing (HL7 v2 over TCP, the Minimal Lower Layer Protocol of HL7's
//! Implementation Guide, appendix C): a message is `0x0B`, the message's bytes, `0x1C 0x0D`.
//! Bytes before a start block (line noise, a half-sent frame of a dropped connection) are
//! skipped; a frame longer than the limit is an error that closes the connection, so a
//! sender of garbage cannot make us buffer without bound.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

const START: u8 = 0x0B;
const END: [u8; 2] = [0x1C, 0x0D];

/// The MLLP codec, with the largest message it takes.
#[derive(Debug, Clone, Copy)]
pub struct Mllp {
    pub max_len: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    #[error("an MLLP frame longer than {0} bytes")]
    TooLong(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Decoder for Mllp {
    type Item = Bytes;
    type Error = MllpError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, MllpError> {
        match src.iter().position(|&b| b == START) {
            Some(at) => src.advance(at),
            None => {
                src.clear();
                return Ok(None);
            }
        }
        let body = &src[1..];
        match body.windows(2).position(|w| w == END) {
            Some(len) if len > self.max_len => Err(MllpError::TooLong(self.max_len)),
            Some(len) => {
                let mut frame = src.split_to(1 + len + 2);
                frame.advance(1);
                frame.truncate(len);
                Ok(Some(frame.freeze()))
            }
            None if body.len() > self.max_len + 1 => Err(MllpError::TooLong(self.max_len)),
            None => Ok(None),
        }
    }
}

impl Encoder<&[u8]> for Mllp {
    type Error = MllpError;

    fn encode(&mut self, message: &[u8], dst: &mut BytesMut) -> Result<(), MllpError> {
        dst.reserve(message.len() + 3);
        dst.put_u8(START);
        dst.put_slice(message);
        dst.put_slice(&END);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> Mllp {
        Mllp { max_len: 64 }
    }

    #[test]
    fn frames_come_out_whole_however_the_bytes_arrive() {
        let mut c = codec();
        let mut buf = BytesMut::from(&b"noise\x0bMSH|one\r\x1c\x0d\x0bMSH|tw"[..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), &b"MSH|one\r"[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"o\r\x1c");
        assert!(c.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"\x0d");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), &b"MSH|two\r"[..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_is_dropped_and_long_frames_refused() {
        let mut c = codec();
        let mut buf = BytesMut::from(&b"no start block here"[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
        let mut long = BytesMut::from(&b"\x0b"[..]);
        long.extend_from_slice(&[b'x'; 100]);
        assert!(matches!(c.decode(&mut long), Err(MllpError::TooLong(64))));
    }

    #[test]
    fn encoding_frames() {
        let mut out = BytesMut::new();
        codec().encode(&b"MSH|x\r"[..], &mut out).unwrap();
        assert_eq!(&out[..], b"\x0bMSH|x\r\x1c\x0d");
    }
}
