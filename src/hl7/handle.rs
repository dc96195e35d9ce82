//! One inbound HL7 message, start to end: its character set (MSH-18), its parse, what it
//! asks for (`orders.rs`), the order change that is (checked as the REST API checks it),
//! applied once in one transaction with its acknowledgement, and that acknowledgement in
//! the message's character set. Every message gets an answer; none is half-applied.

use hl7kit::Message;
use sha2::{Digest, Sha256};

use super::ack::{ack, Refusal};
use super::orders::{self, Control, Inbound};
use super::text::{self, Charset};
use crate::index::orders::{Applied, MessageKey, Order, OrderChange, Step, Taken};
use crate::index::Index;
use crate::model::clock::{iso8601, now_millis};
use crate::model::OrderStatus;

/// What became of a message, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Duplicate,
    Refused,
}

/// The acknowledgement (its bytes, unframed) of `bytes`, and what became of it.
pub async fn handle(index: &Index, bytes: &[u8]) -> (Vec<u8>, Verdict) {
    let (text, charset) = match text::decode(bytes) {
        Ok(t) => t,
        Err(r) => return (refuse(None, &r, Charset::Utf8), Verdict::Refused),
    };
    let text = text.replace("\r\n", "\r").replace('\n', "\r");
    let msg = match Message::parse(text.trim_end_matches('\r')) {
        Ok(m) => m,
        Err(e) => {
            let r = Refusal::rejected(100, &format!("not an HL7 v2 message: {e}"));
            return (refuse(None, &r, charset), Verdict::Refused);
        }
    };
    match take(index, &msg, bytes).await {
        Ok((ack, verdict)) => (text::encode(&ack, charset), verdict),
        Err(r) => (refuse(Some(&msg), &r, charset), Verdict::Refused),
    }
}

fn refuse(msg: Option<&Message>, r: &Refusal, charset: Charset) -> Vec<u8> {
    tracing::info!(code = r.code, reason = %r.message, "HL7 message refused");
    text::encode(&ack(msg, Some(r), &control_id(), &timestamp()), charset)
}

async fn take(index: &Index, msg: &Message, bytes: &[u8]) -> Result<(String, Verdict), Refusal> {
    let field = |p: &str| msg.get(p).unwrap_or("").to_owned();
    let control = field("MSH-10");
    if control.is_empty() {
        return Err(Refusal::error(101, "MSH-10 (the message control id) is empty").at("MSH", 10));
    }
    let change = change(orders::read(msg)?)?;
    let key = MessageKey {
        sender: format!("{}^{}", field("MSH-3"), field("MSH-4")),
        control_id: control,
        sha256: hex::encode(Sha256::digest(bytes)),
    };
    let accepted = ack(Some(msg), None, &control_id(), &timestamp());
    let unknown = |a: &Applied| matches!(a, Applied::Status(false));
    match index
        .take_hl7(&key, &change, &accepted, |a| !unknown(a))
        .await
    {
        Ok(Taken::Duplicate(first)) => {
            tracing::info!(control_id = %key.control_id, "HL7 message taken before; its ACK again");
            Ok((first, Verdict::Duplicate))
        }
        Ok(Taken::Applied(a)) if unknown(&a) => {
            Err(Refusal::error(204, "no order with this placer order number").at("ORC", 2))
        }
        Ok(Taken::Applied(_)) => Ok((accepted, Verdict::Accepted)),
        Err(e) => {
            tracing::error!(error = %e, "HL7 message not applied");
            Err(Refusal::error(
                207,
                "the index is unavailable; send the message again",
            ))
        }
    }
}

/// The order change a message asks for, checked as the REST API checks orders.
fn change(inbound: Inbound) -> Result<OrderChange, Refusal> {
    Ok(match inbound {
        Inbound::Order(o) => match o.control {
            Control::Cancel | Control::Discontinue => OrderChange::Status {
                id: o.id,
                status: OrderStatus::Discontinued,
            },
            Control::New | Control::Change => {
                let order = order(*o);
                crate::worklist::check(&order).map_err(|e| {
                    let r = Refusal::error(102, &e.to_string());
                    match location(&e.field) {
                        Some((segment, field)) => r.at(segment, field),
                        None => r,
                    }
                })?;
                crate::worklist::put_change(order, false)
            }
        },
        Inbound::PatientUpdate(p) => OrderChange::Patient(p),
        Inbound::Merge { patient, prior } => OrderChange::Merge { prior, patient },
    })
}

fn order(o: orders::Order) -> Order {
    let steps = o
        .steps
        .into_iter()
        .filter(|s| {
            s.id.is_some() || s.modality.is_some() || s.station_ae.is_some() || s.start.is_some()
        })
        .map(|s| Step {
            id: s.id.unwrap_or_default(),
            modality: s.modality,
            station_ae: s.station_ae,
            start: s.start,
            description: s.description,
        })
        .collect();
    Order {
        order_id: o.id,
        accession_number: o.accession,
        patient_id: Some(o.patient.id),
        issuer_of_patient_id: o.patient.issuer,
        patient_name: o.patient.name,
        patient_birth_date: o.patient.birth_date,
        patient_sex: o.patient.sex,
        requested_procedure_id: o.requested_procedure_id,
        requested_procedure_description: o.requested_procedure_description,
        referring_physician: o.referring_physician,
        study_instance_uid: o.study_uid,
        status: OrderStatus::Scheduled,
        scheduled_procedure_steps: steps,
    }
}

/// Where an order field comes from in ORM^O01 (OMI^O23: IPC for the step's station).
fn location(field: &str) -> Option<(&'static str, u16)> {
    let step = field.rsplit('.').next().unwrap_or("");
    Some(match field {
        "accession_number" => ("OBR", 18),
        "patient_id" | "issuer_of_patient_id" => ("PID", 3),
        "patient_name" => ("PID", 5),
        "patient_birth_date" => ("PID", 7),
        "patient_sex" => ("PID", 8),
        "requested_procedure_id" => ("OBR", 19),
        "requested_procedure_description" => ("OBR", 44),
        "referring_physician" => ("PV1", 8),
        _ if field.starts_with("scheduled_procedure_steps") => match step {
            "id" => ("OBR", 20),
            "modality" => ("OBR", 24),
            "station_ae" => ("IPC", 9),
            "start" => ("TQ1", 7),
            _ => ("OBR", 4),
        },
        _ => return None,
    })
}

/// The ACK's own MSH-10.
fn control_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Now as an HL7 timestamp, UTC: `YYYYMMDDHHMMSS+0000`.
fn timestamp() -> String {
    let iso = iso8601(now_millis());
    let digits: String = iso.chars().filter(char::is_ascii_digit).take(14).collect();
    format!("{digits}+0000")
}
