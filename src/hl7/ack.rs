//! Acknowledgements (original mode, as IHE Radiology requires): `MSH MSA [ERR]`. A message
//! that cannot be taken gets `AE` (its content is wrong) or `AR` (it is not one we process:
//! type, character set, structure) with an ERR segment saying where and why, codes from
//! HL7 table 0357.

use hl7kit::builder::{Builder, Value};
use hl7kit::Message;

/// MSA-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Accepted.
    Aa,
    /// Error: the message was understood and refused.
    Ae,
    /// Reject: not a message we take.
    Ar,
}

impl AckCode {
    fn as_str(self) -> &'static str {
        match self {
            AckCode::Aa => "AA",
            AckCode::Ae => "AE",
            AckCode::Ar => "AR",
        }
    }
}

/// Why a message was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub ack: AckCode,
    /// HL7 table 0357.
    pub code: u16,
    /// Segment and field the error is in (ERR-2).
    pub location: Option<(&'static str, u16)>,
    pub message: String,
}

impl Refusal {
    /// A message we do not process (AR).
    pub fn rejected(code: u16, message: &str) -> Self {
        Refusal {
            ack: AckCode::Ar,
            code,
            location: None,
            message: message.to_owned(),
        }
    }

    /// A message whose content we refuse (AE).
    pub fn error(code: u16, message: &str) -> Self {
        Refusal {
            ack: AckCode::Ae,
            ..Refusal::rejected(code, message)
        }
    }

    pub fn at(mut self, segment: &'static str, field: u16) -> Self {
        self.location = Some((segment, field));
        self
    }
}

/// The text of a table 0357 code.
fn meaning(code: u16) -> &'static str {
    match code {
        0 => "Message accepted",
        100 => "Segment sequence error",
        101 => "Required field missing",
        102 => "Data type error",
        103 => "Table value not found",
        200 => "Unsupported message type",
        201 => "Unsupported event code",
        202 => "Unsupported processing id",
        203 => "Unsupported version id",
        204 => "Unknown key identifier",
        205 => "Duplicate key identifier",
        206 => "Application record locked",
        207 => "Application internal error",
        _ => "Application internal error",
    }
}

/// The ACK to `original` (or, when it could not be parsed, an ACK that names nothing):
/// `control_id` and `now` (`YYYYMMDDHHMMSS`) are the ACK's own MSH-10 and MSH-7.
pub fn ack(
    original: Option<&Message>,
    refusal: Option<&Refusal>,
    control_id: &str,
    now: &str,
) -> String {
    let get = |path: &str| original.and_then(|m| m.get(path)).unwrap_or("").to_owned();
    let trigger = get("MSH-9.2");
    let mut b = Builder::new();
    b.segment("MSH")
        .set(3, get("MSH-5"))
        .set(4, get("MSH-6"))
        .set(5, get("MSH-3"))
        .set(6, get("MSH-4"))
        .set(7, now)
        .set(9, Value::components(["ACK", trigger.as_str(), "ACK"]))
        .set(10, control_id)
        .set(11, nonempty(get("MSH-11"), "P"))
        .set(12, nonempty(get("MSH-12"), "2.5.1"))
        .set(18, get("MSH-18"));
    let code = refusal.map_or(AckCode::Aa, |r| r.ack);
    b.segment("MSA").set(1, code.as_str()).set(2, get("MSH-10"));
    if let Some(r) = refusal {
        let err = b.segment("ERR");
        if let Some((segment, field)) = r.location {
            err.set(2, Value::components([segment, "1", &field.to_string()]));
        }
        err.set(
            3,
            Value::components([r.code.to_string().as_str(), meaning(r.code), "HL70357"]),
        )
        .set(4, "E")
        .set(8, r.message.as_str());
    }
    b.build()
}

fn nonempty(value: String, default: &str) -> String {
    if value.is_empty() {
        default.to_owned()
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORM: &str = "MSH|^~\\&|RIS|HOSP|PACS|CLINIC|20261207093000||ORM^O01^ORM_O01|MSG42|P|2.5.1||||||8859/1\r\
                       PID|||4711^^^HOSP||Doe^Jane\r";

    #[test]
    fn accepted_and_refused() {
        let msg = Message::parse(ORM).unwrap();
        let ok = Message::parse(ack(Some(&msg), None, "A1", "20261207093001")).unwrap();
        assert_eq!(ok.get("MSH-3"), Some("PACS"));
        assert_eq!(ok.get("MSH-5"), Some("RIS"));
        assert_eq!(ok.get("MSH-9"), Some("ACK^O01^ACK"));
        assert_eq!(ok.get("MSH-18"), Some("8859/1"));
        assert_eq!(ok.get("MSA-1"), Some("AA"));
        assert_eq!(ok.get("MSA-2"), Some("MSG42"));
        assert!(ok.segment("ERR").is_none());

        let why =
            Refusal::error(101, "ORC-2 (placer order number) is empty | required").at("ORC", 2);
        let ae = Message::parse(ack(Some(&msg), Some(&why), "A2", "20261207093001")).unwrap();
        assert_eq!(ae.get("MSA-1"), Some("AE"));
        assert_eq!(ae.get("ERR-2"), Some("ORC^1^2"));
        assert_eq!(ae.get("ERR-3"), Some("101^Required field missing^HL70357"));
        assert_eq!(ae.get("ERR-4"), Some("E"));
        // The message's own delimiters are escaped.
        assert_eq!(
            ae.get_decoded("ERR-8").unwrap(),
            "ORC-2 (placer order number) is empty | required"
        );
    }

    #[test]
    fn an_unparsable_message_still_gets_an_answer() {
        let why = Refusal::rejected(100, "no MSH");
        let ar = Message::parse(ack(None, Some(&why), "A3", "20261207093001")).unwrap();
        assert_eq!(ar.get("MSA-1"), Some("AR"));
        assert_eq!(ar.get("MSA-2"), Some(""));
        assert_eq!(ar.get("MSH-12"), Some("2.5.1"));
    }
}
