//! Tests of `orders.rs`: ORM^O01, OMI^O23, ADT^A08 and ADT^A40 as senders write them, and
//! the refusals, each with the field it names.

use super::*;
use crate::hl7::AckCode;

/// A segment from (field number, value) pairs.
fn segment(name: &str, fields: &[(usize, &str)]) -> String {
    let last = fields.iter().map(|f| f.0).max().unwrap_or(0);
    let mut out = vec![""; last + 1];
    out[0] = name;
    for (n, v) in fields {
        out[*n] = v;
    }
    out.join("|")
}

fn parse(segments: &[&str]) -> Message {
    Message::parse(segments.join("\r") + "\r").unwrap()
}

const MSH_ORM: &str = "MSH|^~\\&|RIS|HOSP|PACS|CLINIC|20261207093000||ORM^O01|M1|P|2.5.1";
const PID: &str = "PID|1||4711^^^HOSP^MR||M\\T\\ller^J\\S\\rgen^K^Jr^Dr||19700215|M";

#[test]
fn an_orm_new_order() {
    let obr = segment(
        "OBR",
        &[
            (1, "1"),
            (2, "ORD-1"),
            (3, "F-9"),
            (4, "CTHEAD^CT Head^L"),
            (18, "ACC-7"),
            (19, "RP-3"),
            (20, "SPS-5"),
            (24, "CT"),
            (27, "^^^202612081430"),
        ],
    );
    let pv1 = segment("PV1", &[(1, "1"), (2, "O"), (8, "123^Ref^Rita^^^Dr")]);
    let msg = parse(&[
        MSH_ORM,
        PID,
        &pv1,
        "ORC|NW|ORD-1|F-9||SC",
        &obr,
        "ZDS|1.2.826.0.1.3680043.2.1125.1^100^Application^DICOM",
    ]);
    let Inbound::Order(o) = read(&msg).unwrap() else {
        panic!("not an order");
    };
    assert_eq!(o.control, Control::New);
    assert_eq!(o.id.as_str(), "ORD-1");
    assert_eq!(o.accession.as_deref(), Some("ACC-7"));
    assert_eq!(o.requested_procedure_id.as_deref(), Some("RP-3"));
    assert_eq!(
        o.requested_procedure_description.as_deref(),
        Some("CT Head")
    );
    assert_eq!(o.referring_physician.as_deref(), Some("Ref^Rita^^Dr"));
    assert_eq!(
        o.study_uid.as_ref().map(|u| u.as_str()),
        Some("1.2.826.0.1.3680043.2.1125.1")
    );
    let p = &o.patient;
    assert_eq!((p.id.as_str(), p.issuer.as_deref()), ("4711", Some("HOSP")));
    // Escapes undone; HL7's suffix^prefix become DICOM's prefix^suffix.
    assert_eq!(p.name.as_deref(), Some("M&ller^J^rgen^K^Dr^Jr"));
    assert_eq!(
        (p.birth_date.as_deref(), p.sex.as_deref()),
        (Some("19700215"), Some("M"))
    );
    assert_eq!(
        o.steps,
        [Step {
            id: Some("SPS-5".into()),
            modality: Some("CT".into()),
            station_ae: None,
            start: Some("2026-12-08T14:30".into()),
            description: Some("CT Head".into()),
        }]
    );
}

#[test]
fn an_omi_with_two_steps_and_controls() {
    let msg = parse(&[
        "MSH|^~\\&|RIS|HOSP|PACS|CLINIC|20261207093000||OMI^O23^OMI_O23|M2|P|2.5.1",
        PID,
        "ORC|XO|ORD-2",
        "TQ1|||||||20261209081500+0100",
        "OBR|1|ORD-2||MR^MR Knee",
        "IPC|ACC-8|RP-1|1.2.3.4|SPS-1|MR|||| MR_ROOM1",
        "IPC|ACC-8|RP-1|1.2.3.4|SPS-2|OT||||WS2",
    ]);
    let Inbound::Order(o) = read(&msg).unwrap() else {
        panic!("not an order");
    };
    assert_eq!(o.control, Control::Change);
    assert_eq!(o.accession.as_deref(), Some("ACC-8"));
    assert_eq!(o.study_uid.as_ref().map(|u| u.as_str()), Some("1.2.3.4"));
    let steps: Vec<(Option<&str>, Option<&str>, Option<&str>)> = o
        .steps
        .iter()
        .map(|s| {
            (
                s.id.as_deref(),
                s.modality.as_deref(),
                s.station_ae.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            (Some("SPS-1"), Some("MR"), Some("MR_ROOM1")),
            (Some("SPS-2"), Some("OT"), Some("WS2"))
        ]
    );
    assert_eq!(o.steps[0].start.as_deref(), Some("2026-12-09T08:15"));

    for (orc1, control) in [
        ("CA", Control::Cancel),
        ("OC", Control::Cancel),
        ("DC", Control::Discontinue),
        ("SC", Control::Change),
    ] {
        let msg = parse(&[MSH_ORM, PID, &format!("ORC|{orc1}|ORD-3"), "OBR|1|ORD-3"]);
        let Inbound::Order(o) = read(&msg).unwrap() else {
            panic!("not an order");
        };
        assert_eq!(o.control, control, "{orc1}");
    }
}

#[test]
fn patient_updates_and_merges() {
    let a08 = parse(&[
        "MSH|^~\\&|ADT|HOSP|PACS|C|20261207||ADT^A08|M3|P|2.5.1",
        PID,
    ]);
    let Inbound::PatientUpdate(p) = read(&a08).unwrap() else {
        panic!("not an update");
    };
    assert_eq!(p.id, "4711");
    let a40 = parse(&[
        "MSH|^~\\&|ADT|HOSP|PACS|C|20261207||ADT^A40|M4|P|2.5.1",
        PID,
        "MRG|4700^^^HOSP",
    ]);
    assert_eq!(
        read(&a40).unwrap(),
        Inbound::Merge {
            patient: p,
            prior: "4700".into()
        }
    );
}

/// Segments, and the refusal's code, location and acknowledgement code.
type Refused<'a> = (&'a [&'a str], u16, Option<(&'a str, u16)>, AckCode);

#[test]
fn refusals_name_the_field() {
    let cases: [Refused; 7] = [
        (
            &[MSH_ORM, PID, "ORC|NW|", "OBR|1"],
            101,
            Some(("ORC", 2)),
            AckCode::Ae,
        ),
        (
            &[MSH_ORM, PID, "ORC|ZZ|ORD-1", "OBR|1"],
            103,
            Some(("ORC", 1)),
            AckCode::Ae,
        ),
        (
            &[MSH_ORM, "PID|1||", "ORC|NW|ORD-1", "OBR|1"],
            101,
            Some(("PID", 3)),
            AckCode::Ae,
        ),
        (
            &[MSH_ORM, PID, "ORC|NW|ORD 1"],
            102,
            Some(("ORC", 2)),
            AckCode::Ae,
        ),
        (
            &[MSH_ORM, PID, "ORC|NW|ORD-1", "ZDS|not-a-uid"],
            102,
            Some(("ZDS", 1)),
            AckCode::Ae,
        ),
        (
            &["MSH|^~\\&|A|B|C|D|2026||ORU^R01|M|P|2.5.1", PID],
            200,
            Some(("MSH", 9)),
            AckCode::Ar,
        ),
        (
            &["MSH|^~\\&|A|B|C|D|2026||ADT^A01|M|P|2.5.1", PID],
            201,
            Some(("MSH", 9)),
            AckCode::Ar,
        ),
    ];
    for (segments, code, location, ack) in cases {
        let r = read(&parse(segments)).unwrap_err();
        assert_eq!(
            (r.code, r.location, r.ack),
            (code, location, ack),
            "{segments:?}: {}",
            r.message
        );
    }
}

#[test]
fn timestamps_to_the_minute() {
    assert_eq!(
        local_minute("202612081430").as_deref(),
        Some("2026-12-08T14:30")
    );
    assert_eq!(
        local_minute("20261208").as_deref(),
        Some("2026-12-08T00:00")
    );
    assert_eq!(
        local_minute("20261208143059.123-0500").as_deref(),
        Some("2026-12-08T14:30")
    );
    assert_eq!(local_minute("20261308").as_deref(), None);
    assert_eq!(local_minute("2026").as_deref(), None);
}
