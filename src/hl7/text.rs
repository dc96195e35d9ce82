//! The character set of an HL7 v2 message (MSH-18, HL7 table 0211) and its text. The
//! delimiters and MSH are ASCII, so MSH-18 is read from the raw bytes before anything is
//! decoded: `UNICODE UTF-8` is UTF-8, `8859/1` ISO 8859-1 (byte = code point), `ASCII`
//! ASCII; absent, UTF-8 when the bytes are that, else ISO 8859-1 (what senders that leave
//! it out mostly mean). An answer goes back in the message's own character set.

use super::ack::Refusal;

/// A character set we read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Ascii,
    Utf8,
    Latin1,
}

impl Charset {
    /// The MSH-18 value that names it.
    pub fn msh18(self) -> &'static str {
        match self {
            Charset::Ascii => "ASCII",
            Charset::Utf8 => "UNICODE UTF-8",
            Charset::Latin1 => "8859/1",
        }
    }
}

/// MSH-18 as the message's bytes have it (`None`: not given).
fn msh18(bytes: &[u8]) -> Result<Option<&[u8]>, Refusal> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len());
    let msh = &bytes[..end];
    if msh.len() < 8 || !msh.starts_with(b"MSH") {
        return Err(Refusal::rejected(
            100,
            "the message does not start with an MSH segment",
        ));
    }
    let separator = msh[3];
    // MSH-1 is the separator itself: MSH-n is the n-1th piece after splitting.
    let field = msh.split(|&b| b == separator).nth(17);
    Ok(field.filter(|f| !f.is_empty()))
}

/// The message's text and character set.
pub fn decode(bytes: &[u8]) -> Result<(String, Charset), Refusal> {
    let named = msh18(bytes)?;
    let charset = match named.map(|f| f.split(|&b| b == b'^').next().unwrap_or(f)) {
        None => match std::str::from_utf8(bytes) {
            Ok(_) => Charset::Utf8,
            Err(_) => Charset::Latin1,
        },
        Some(b"UNICODE UTF-8") => Charset::Utf8,
        Some(b"8859/1") => Charset::Latin1,
        Some(b"ASCII") => Charset::Ascii,
        Some(other) => {
            return Err(Refusal::rejected(
                103,
                &format!(
                    "MSH-18 {:?}: only UNICODE UTF-8, 8859/1 and ASCII are taken",
                    String::from_utf8_lossy(other)
                ),
            )
            .at("MSH", 18))
        }
    };
    let text = match charset {
        Charset::Latin1 => bytes.iter().map(|&b| char::from(b)).collect(),
        Charset::Utf8 | Charset::Ascii => match std::str::from_utf8(bytes) {
            Ok(t) if charset == Charset::Utf8 || t.is_ascii() => t.to_owned(),
            _ => {
                return Err(Refusal::rejected(
                    102,
                    &format!("the bytes are not {} as MSH-18 says", charset.msh18()),
                )
                .at("MSH", 18))
            }
        },
    };
    Ok((text, charset))
}

/// `text` in `charset`; a character it cannot hold becomes `?`.
pub fn encode(text: &str, charset: Charset) -> Vec<u8> {
    match charset {
        Charset::Utf8 => text.as_bytes().to_vec(),
        Charset::Latin1 => text
            .chars()
            .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
            .collect(),
        Charset::Ascii => text
            .chars()
            .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msh(charset: &str) -> Vec<u8> {
        format!("MSH|^~\\&|RIS|H|PACS|C|20261207||ORM^O01|1|P|2.5.1||||||{charset}\rPID|||42||")
            .into_bytes()
    }

    #[test]
    fn latin1_and_utf8_by_msh18() {
        let mut latin = msh("8859/1");
        latin.extend_from_slice(b"M\xfcller^J\xfcrgen\r");
        let (text, cs) = decode(&latin).unwrap();
        assert_eq!(cs, Charset::Latin1);
        assert!(text.ends_with("Müller^Jürgen\r"));
        assert_eq!(encode("Müller", cs), b"M\xfcller");

        let mut utf8 = msh("UNICODE UTF-8");
        utf8.extend_from_slice("Müller\r".as_bytes());
        assert_eq!(decode(&utf8).unwrap().1, Charset::Utf8);
        // Said UTF-8, is not.
        let mut wrong = msh("UNICODE UTF-8");
        wrong.extend_from_slice(b"M\xfcller\r");
        assert_eq!(decode(&wrong).unwrap_err().code, 102);
    }

    #[test]
    fn absent_unknown_and_no_msh() {
        let mut plain = msh("");
        plain.extend_from_slice(b"M\xfcller\r");
        assert_eq!(decode(&plain).unwrap().1, Charset::Latin1);
        assert_eq!(decode(&msh("")).unwrap().1, Charset::Utf8);
        assert_eq!(decode(&msh("ISO IR87")).unwrap_err().code, 103);
        assert_eq!(decode(b"PID|x\r").unwrap_err().code, 100);
        assert_eq!(encode("Zoë 雪", Charset::Ascii), b"Zo? ?");
    }
}
