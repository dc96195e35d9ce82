//! Buffered reading with cheap seeks for the element walkers.

use std::io::{Read, Seek, SeekFrom};

/// A buffered reader whose seeks stay inside the buffer when they can: the element walker
/// seeks around every element header, which `BufReader` would turn into a system call and
/// a refill each time.
pub struct SeekBuf<R> {
    inner: std::io::BufReader<R>,
    pos: u64,
}

impl<R: Read + Seek> SeekBuf<R> {
    pub fn new(capacity: usize, mut inner: R) -> std::io::Result<Self> {
        let pos = inner.stream_position()?;
        Ok(SeekBuf {
            inner: std::io::BufReader::with_capacity(capacity, inner),
            pos,
        })
    }
}

impl<R: Read + Seek> Read for SeekBuf<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for SeekBuf<R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before start")
            })?,
            SeekFrom::End(_) => {
                self.pos = self.inner.seek(to)?;
                return Ok(self.pos);
            }
        };
        // Within the buffer this moves the cursor only; otherwise it seeks the file.
        self.inner.seek_relative(target as i64 - self.pos as i64)?;
        self.pos = target;
        Ok(target)
    }
}

#[cfg(test)]
mod seekbuf_tests {
    use super::*;

    #[test]
    fn seeks_read_the_right_bytes() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = SeekBuf::new(64, std::io::Cursor::new(data.clone())).unwrap();
        let mut b = [0u8; 4];
        for &p in &[0u64, 10, 5, 60, 62, 200, 100, 9_990, 3] {
            r.seek(SeekFrom::Start(p)).unwrap();
            r.read_exact(&mut b).unwrap();
            assert_eq!(&b[..], &data[p as usize..p as usize + 4], "at {p}");
        }
        r.seek(SeekFrom::Current(-4)).unwrap();
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b[..], &data[3..7]);
    }
}
