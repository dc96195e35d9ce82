//! Orders become worklist items and come back as performed steps: the rules shared by the
//! REST API, HL7 and DIMSE for writing an order (its steps numbered, its Study Instance
//! UID assigned once), and the MPPS state machine ([`mpps`]). The SQL is `index::orders`,
//! `index::worklist` and `index::mpps`; the protocols are `radiology`, `hl7` and `dimse`.

pub mod mpps;

use crate::index::orders::{Applied, Given, Order, OrderChange, Step};
use crate::index::{Index, IndexError};
use crate::model::{AeTitle, DicomDate, Uid};

/// The longest Scheduled Procedure Step ID (SH).
pub const MAX_STEP_ID: usize = 16;

/// A field of an order that cannot become a worklist attribute, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// The field's name in the REST API (`scheduled_procedure_steps[1].station_ae`).
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Text for a DICOM attribute of at most `max` characters: printable, no backslash (it
/// would split the value).
fn text(field: &str, v: Option<&str>, max: usize) -> Result<(), Invalid> {
    match v {
        Some(s) if s.chars().count() > max => {
            Err(invalid(field, format!("at most {max} characters")))
        }
        Some(s) if s.chars().any(|c| c.is_control() || c == '\\') => Err(invalid(
            field,
            "printable characters only, without a backslash",
        )),
        _ => Ok(()),
    }
}

/// `YYYYMMDD` naming a day of the calendar.
pub fn is_calendar_date(d: &str) -> bool {
    let n = |r: std::ops::Range<usize>| d.get(r).and_then(|v| v.parse::<u32>().ok());
    let (Some(y), Some(m), Some(day)) = (n(0..4), n(4..6), n(6..8)) else {
        return false;
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    d.len() == 8 && (1..=days).contains(&day)
}

/// `YYYY-MM-DDTHH:MM`.
pub fn is_local_minute(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 16
        && (b[4], b[7], b[10], b[13]) == (b'-', b'-', b'T', b':')
        && digits(0..4)
        && digits(5..7)
        && digits(8..10)
        && digits(11..13)
        && digits(14..16)
        && is_calendar_date(&s[..10].replace('-', ""))
        && s[11..13] < *"24"
        && s[14..16] < *"60"
}

fn check_step(i: usize, step: &Step) -> Result<(), Invalid> {
    let f = |name: &str| format!("scheduled_procedure_steps[{i}].{name}");
    text(&f("id"), Some(&step.id), MAX_STEP_ID)?;
    if let Some(m) = &step.modality {
        let ok = !m.is_empty()
            && m.len() <= 16
            && m.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(invalid(
                f("modality"),
                "a DICOM modality code such as CT or MR",
            ));
        }
    }
    if let Some(ae) = &step.station_ae {
        AeTitle::parse(ae).map_err(|e| invalid(f("station_ae"), e.to_string()))?;
    }
    if let Some(start) = &step.start {
        if !is_local_minute(start) {
            return Err(invalid(f("start"), "YYYY-MM-DDTHH:MM (local time)"));
        }
    }
    text(&f("description"), step.description.as_deref(), 64)
}

/// Whether every field of `order` can become the worklist attribute it feeds (VR and
/// length), so the REST API and HL7 refuse the same orders, naming the same field.
pub fn check(order: &Order) -> Result<(), Invalid> {
    text("accession_number", order.accession_number.as_deref(), 16)?;
    text("patient_id", order.patient_id.as_deref(), 64)?;
    text(
        "issuer_of_patient_id",
        order.issuer_of_patient_id.as_deref(),
        64,
    )?;
    text("patient_name", order.patient_name.as_deref(), 64 * 5)?;
    text(
        "requested_procedure_id",
        order.requested_procedure_id.as_deref(),
        16,
    )?;
    text(
        "requested_procedure_description",
        order.requested_procedure_description.as_deref(),
        64,
    )?;
    text(
        "referring_physician",
        order.referring_physician.as_deref(),
        64 * 5,
    )?;
    if let Some(d) = order
        .patient_birth_date
        .as_deref()
        .filter(|d| !d.is_empty())
    {
        if DicomDate::date(d).is_err() || !is_calendar_date(d) {
            return Err(invalid("patient_birth_date", "YYYYMMDD"));
        }
    }
    if let Some(s) = order.patient_sex.as_deref().filter(|s| !s.is_empty()) {
        if !["M", "F", "O"].contains(&s) {
            return Err(invalid("patient_sex", "M, F or O"));
        }
    }
    for (i, step) in order.scheduled_procedure_steps.iter().enumerate() {
        check_step(i, step)?;
    }
    Ok(())
}

/// The change that writes `order`: steps without an id get their position (1, 2, …), and
/// an order without a Study Instance UID of its own keeps the one it has or gets a new one
/// (so every image taken for it lands in one study). `status_given`: the order's status
/// is set; otherwise it keeps the one it has (a new order is scheduled).
pub fn put_change(mut order: Order, status_given: bool) -> OrderChange {
    for (i, step) in order.scheduled_procedure_steps.iter_mut().enumerate() {
        if step.id.is_empty() {
            step.id = (i + 1).to_string();
        }
    }
    let given = Given {
        status: status_given,
        study_uid: order.study_instance_uid.is_some(),
    };
    if order.study_instance_uid.is_none() {
        order.study_instance_uid = Some(Uid::generate());
    }
    OrderChange::Put {
        order: Box::new(order),
        given,
    }
}

/// Write an order from the REST API: the order as stored, and whether it is new.
pub async fn put(
    index: &Index,
    order: Order,
    status_given: bool,
) -> Result<(bool, Order), IndexError> {
    match index
        .change_orders(&put_change(order, status_given))
        .await?
    {
        Applied::Put { created, order } => Ok((created, *order)),
        other => unreachable!("a put applies as a put, not {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::orders::Step;
    use crate::model::{OrderId, OrderStatus};

    fn order(uid: Option<&str>) -> Order {
        Order {
            order_id: OrderId::parse("O-1").unwrap(),
            accession_number: None,
            patient_id: None,
            issuer_of_patient_id: None,
            patient_name: None,
            patient_birth_date: None,
            patient_sex: None,
            requested_procedure_id: None,
            requested_procedure_description: None,
            referring_physician: None,
            study_instance_uid: uid.map(|u| Uid::parse(u).unwrap()),
            status: OrderStatus::Scheduled,
            scheduled_procedure_steps: vec![
                Step::default(),
                Step {
                    id: "X7".into(),
                    ..Step::default()
                },
                Step::default(),
            ],
        }
    }

    #[test]
    fn fields_are_checked_by_name() {
        let mut o = order(None);
        assert_eq!(check(&o), Ok(()));
        o.scheduled_procedure_steps[1].start = Some("2026-02-30T10:00".into());
        assert_eq!(
            check(&o).unwrap_err().field,
            "scheduled_procedure_steps[1].start"
        );
        o.scheduled_procedure_steps[1].start = Some("2026-12-07T23:59".into());
        o.scheduled_procedure_steps[0].modality = Some("ct".into());
        assert_eq!(
            check(&o).unwrap_err().field,
            "scheduled_procedure_steps[0].modality"
        );
        o.scheduled_procedure_steps[0].modality = Some("CT".into());
        o.accession_number = Some("A\\B".into());
        assert_eq!(check(&o).unwrap_err().field, "accession_number");
        o.accession_number = Some("12345678901234567".into());
        assert_eq!(check(&o).unwrap_err().field, "accession_number");
        o.accession_number = None;
        o.patient_sex = Some("X".into());
        assert_eq!(check(&o).unwrap_err().field, "patient_sex");
        assert!(!is_local_minute("2026-12-07T24:00"));
        assert!(is_local_minute("2026-12-07T00:00"));
    }

    #[test]
    fn steps_are_numbered_and_a_study_uid_assigned_unless_given() {
        let OrderChange::Put { order: o, given } = put_change(order(None), false) else {
            panic!("a put");
        };
        let ids: Vec<&str> = o
            .scheduled_procedure_steps
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(ids, ["1", "X7", "3"]);
        assert!(!given.study_uid && !given.status);
        assert!(o.study_instance_uid.unwrap().as_str().starts_with("2.25."));
        let OrderChange::Put { order: o, given } = put_change(order(Some("1.2.3")), true) else {
            panic!("a put");
        };
        assert!(given.study_uid && given.status);
        assert_eq!(o.study_instance_uid.unwrap().as_str(), "1.2.3");
    }
}
