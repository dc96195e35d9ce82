//! What an inbound HL7 v2 message asks for, read out of hl7kit's parse: an order to create,
//! change or cancel (ORM^O01 by ORC-1; OMI^O23 with its IPC segments), a patient update
//! (ADT^A08) or a patient merge (ADT^A40). Field positions are HL7 v2.5.1's, with IHE
//! Radiology's use of them (RAD-4/RAD-13: the accession number in OBR-18 or IPC-1, the
//! requested procedure in OBR-19 or IPC-2, the scheduled step in OBR-20/OBR-24 or
//! IPC-4/IPC-5/IPC-9, the Study Instance UID in ZDS-1 or IPC-3, the start in TQ1-7 or
//! OBR-27.4). A message that lacks what it needs is refused with the field that is wrong.

use hl7kit::Message;

use super::ack::Refusal;
pub use crate::index::orders::Patient;
use crate::model::{OrderId, Uid};

/// What ORC-1 asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// NW: a new order.
    New,
    /// XO, SC: the order changed (its details, or its status).
    Change,
    /// CA, OC: cancelled before anything was performed.
    Cancel,
    /// DC, OD: discontinued after something was.
    Discontinue,
}

/// One scheduled procedure step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    pub id: Option<String>,
    pub modality: Option<String>,
    pub station_ae: Option<String>,
    /// Local time, `YYYY-MM-DDTHH:MM`.
    pub start: Option<String>,
    pub description: Option<String>,
}

/// An order message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub control: Control,
    /// ORC-2.1, the placer order number: the order's id.
    pub id: OrderId,
    pub accession: Option<String>,
    pub patient: Patient,
    pub requested_procedure_id: Option<String>,
    pub requested_procedure_description: Option<String>,
    pub referring_physician: Option<String>,
    pub study_uid: Option<Uid>,
    pub steps: Vec<Step>,
}

/// What a message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Order(Box<Order>),
    /// ADT^A08: the patient's details changed.
    PatientUpdate(Patient),
    /// ADT^A40: `prior` (MRG-1) is now `patient`.
    Merge {
        patient: Patient,
        prior: String,
    },
}

/// Read `msg`.
pub fn read(msg: &Message) -> Result<Inbound, Refusal> {
    let kind = (text(msg, "MSH-9.1"), text(msg, "MSH-9.2"));
    match (kind.0.as_deref(), kind.1.as_deref()) {
        (Some("ORM"), Some("O01")) | (Some("OMI"), Some("O23")) => {
            order(msg).map(|o| Inbound::Order(Box::new(o)))
        }
        (Some("ADT"), Some("A08")) => Ok(Inbound::PatientUpdate(patient(msg)?)),
        (Some("ADT"), Some("A40")) => {
            let prior = text(msg, "MRG-1.1").ok_or_else(|| {
                Refusal::error(101, "MRG-1 (the prior patient ID) is empty").at("MRG", 1)
            })?;
            Ok(Inbound::Merge {
                patient: patient(msg)?,
                prior,
            })
        }
        (Some("ORM" | "OMI" | "ADT"), event) => Err(Refusal::rejected(
            201,
            &format!("event {} is not taken", event.unwrap_or("(none)")),
        )
        .at("MSH", 9)),
        (t, _) => Err(Refusal::rejected(
            200,
            &format!(
                "message type {} is not taken (ORM^O01, OMI^O23, ADT^A08, ADT^A40 are)",
                t.unwrap_or("(none)")
            ),
        )
        .at("MSH", 9)),
    }
}

fn order(msg: &Message) -> Result<Order, Refusal> {
    let control = match text(msg, "ORC-1").as_deref() {
        Some("NW") => Control::New,
        Some("XO" | "SC") => Control::Change,
        Some("CA" | "OC") => Control::Cancel,
        Some("DC" | "OD") => Control::Discontinue,
        other => {
            return Err(Refusal::error(
                103,
                &format!(
                    "ORC-1 {:?}: NW, XO, SC, CA, OC, DC or OD",
                    other.unwrap_or("")
                ),
            )
            .at("ORC", 1))
        }
    };
    let id = text(msg, "ORC-2.1").ok_or_else(|| {
        Refusal::error(101, "ORC-2 (the placer order number) is empty").at("ORC", 2)
    })?;
    let id = OrderId::parse(&id).map_err(|e| Refusal::error(102, &e.to_string()).at("ORC", 2))?;
    let study_uid = match text(msg, "IPC-3.1").or_else(|| text(msg, "ZDS-1.1")) {
        Some(raw) => Some(Uid::parse(&raw).map_err(|e| {
            let field = if msg.segment("IPC").is_some() {
                ("IPC", 3)
            } else {
                ("ZDS", 1)
            };
            Refusal::error(102, &format!("Study Instance UID {raw:?}: {e}")).at(field.0, field.1)
        })?),
        None => None,
    };
    Ok(Order {
        control,
        id,
        accession: text(msg, "IPC-1.1").or_else(|| text(msg, "OBR-18")),
        patient: patient(msg)?,
        requested_procedure_id: text(msg, "IPC-2.1").or_else(|| text(msg, "OBR-19")),
        requested_procedure_description: text(msg, "OBR-44.2").or_else(|| text(msg, "OBR-4.2")),
        referring_physician: person(msg, "PV1-8").or_else(|| person(msg, "ORC-12")),
        study_uid,
        steps: steps(msg)?,
    })
}

/// The scheduled steps: one per IPC segment (OMI), or the one OBR describes (ORM).
fn steps(msg: &Message) -> Result<Vec<Step>, Refusal> {
    let start = match text(msg, "TQ1-7.1").or_else(|| text(msg, "OBR-27.4")) {
        Some(ts) => Some(local_minute(&ts).ok_or_else(|| {
            Refusal::error(102, &format!("the start {ts:?} is not a date and time")).at("TQ1", 7)
        })?),
        None => None,
    };
    let description = text(msg, "OBR-4.2");
    let ipc = msg.segments_named("IPC").count();
    if ipc == 0 {
        return Ok(vec![Step {
            id: text(msg, "OBR-20"),
            modality: text(msg, "OBR-24"),
            station_ae: None,
            start,
            description,
        }]);
    }
    Ok((1..=ipc)
        .map(|i| Step {
            id: text(msg, &format!("IPC[{i}]-4")),
            modality: text(msg, &format!("IPC[{i}]-5")),
            station_ae: text(msg, &format!("IPC[{i}]-9")),
            start: start.clone(),
            description: description.clone(),
        })
        .collect())
}

fn patient(msg: &Message) -> Result<Patient, Refusal> {
    let id = text(msg, "PID-3.1")
        .ok_or_else(|| Refusal::error(101, "PID-3 (the patient ID) is empty").at("PID", 3))?;
    let birth_date = match text(msg, "PID-7.1") {
        Some(ts) if ts.len() >= 8 && ts[..8].bytes().all(|b| b.is_ascii_digit()) => {
            Some(ts[..8].to_owned())
        }
        Some(ts) => {
            return Err(Refusal::error(102, &format!("PID-7 {ts:?} is not a date")).at("PID", 7))
        }
        None => None,
    };
    let sex = text(msg, "PID-8").and_then(|s| match s.as_str() {
        "M" | "F" | "O" => Some(s),
        _ => None,
    });
    Ok(Patient {
        id,
        issuer: text(msg, "PID-3.4"),
        name: person(msg, "PID-5"),
        birth_date,
        sex,
    })
}

/// An XPN or XCN as a DICOM person name: HL7 orders the components family, given, middle,
/// suffix, prefix (XCN: after an ID); DICOM family, given, middle, prefix, suffix.
fn person(msg: &Message, field: &str) -> Option<String> {
    let xcn = field == "PV1-8" || field == "ORC-12";
    let first = if xcn { 2 } else { 1 };
    let part = |n: usize| text(msg, &format!("{field}.{}", first + n)).unwrap_or_default();
    let pn = [part(0), part(1), part(2), part(4), part(3)].join("^");
    let pn = pn.trim_end_matches('^').to_owned();
    (!pn.is_empty()).then_some(pn)
}

/// An HL7 timestamp (`YYYYMMDDHHMM[SS…][±ZZZZ]`) to the minute, as `YYYY-MM-DDTHH:MM`
/// (the time as the sender wrote it: the clinic's local time).
fn local_minute(ts: &str) -> Option<String> {
    let digits: String = ts.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.len() < 8 {
        return None;
    }
    let d = |r: std::ops::Range<usize>| digits.get(r).unwrap_or("00").to_owned();
    let (month, day) = (d(4..6).parse::<u8>().ok()?, d(6..8).parse::<u8>().ok()?);
    let (hour, minute) = (d(8..10).parse::<u8>().ok()?, d(10..12).parse::<u8>().ok()?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    Some(format!(
        "{}-{month:02}-{day:02}T{hour:02}:{minute:02}",
        d(0..4)
    ))
}

/// A field or component, unescaped; `None` when empty (or the HL7 null `""`).
fn text(msg: &Message, path: &str) -> Option<String> {
    let value = msg.get_decoded(path)?;
    let value = value.trim();
    (!value.is_empty() && value != "\"\"").then(|| value.to_owned())
}

#[cfg(test)]
#[path = "orders_tests.rs"]
mod tests;
