//! DIMSE command sets (PS3.7 §9, §10, §E): decoding requests and responses, encoding them,
//! always in Implicit VR Little Endian with the Command Group Length computed.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::status::Status;
use crate::dicom::element_text as text;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

/// Command Field values (PS3.7 Annex E).
pub mod field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_GET_RQ: u16 = 0x0010;
    pub const C_GET_RSP: u16 = 0x8010;
    pub const C_FIND_RQ: u16 = 0x0020;
    pub const C_FIND_RSP: u16 = 0x8020;
    pub const C_MOVE_RQ: u16 = 0x0021;
    pub const C_MOVE_RSP: u16 = 0x8021;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
    pub const N_EVENT_REPORT_RQ: u16 = 0x0100;
    pub const N_EVENT_REPORT_RSP: u16 = 0x8100;
    pub const N_SET_RQ: u16 = 0x0120;
    pub const N_SET_RSP: u16 = 0x8120;
    pub const N_ACTION_RQ: u16 = 0x0130;
    pub const N_ACTION_RSP: u16 = 0x8130;
    pub const N_CREATE_RQ: u16 = 0x0140;
    pub const N_CREATE_RSP: u16 = 0x8140;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;

    /// Whether a command field is a response (high bit set).
    pub fn is_response(field: u16) -> bool {
        field & 0x8000 != 0
    }
}

/// CommandDataSetType: no data set follows.
pub const NO_DATA_SET: u16 = 0x0101;
/// CommandDataSetType: a data set follows (any other value means the same).
const DATA_SET: u16 = 0x0102;

#[derive(Debug, thiserror::Error)]
#[error("malformed DIMSE command: {0}")]
pub struct CommandError(pub String);

/// The parts of a command (request or response) the services use.
#[derive(Debug, Clone, Default)]
pub struct Command {
    pub field: u16,
    pub message_id: u16,
    pub responded_to: Option<u16>,
    pub affected_sop_class: Option<String>,
    pub affected_sop_instance: Option<String>,
    pub requested_sop_class: Option<String>,
    pub requested_sop_instance: Option<String>,
    pub move_destination: Option<String>,
    pub action_type: Option<u16>,
    pub event_type: Option<u16>,
    pub status: Option<Status>,
    pub has_data_set: bool,
}

/// A request is a command.
pub type Request = Command;

fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<u16> {
    obj.get(tag)?.to_int::<u16>().ok()
}

/// Decode a command set.
pub fn decode(bytes: &[u8]) -> Result<Command, CommandError> {
    crate::dicom::check_data_set(bytes, "1.2.840.10008.1.2").map_err(CommandError)?;
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| CommandError(e.to_string()))?;
    let field =
        uint(&obj, tags::COMMAND_FIELD).ok_or_else(|| CommandError("no CommandField".into()))?;
    Ok(Command {
        field,
        message_id: uint(&obj, tags::MESSAGE_ID).unwrap_or(0),
        responded_to: uint(&obj, tags::MESSAGE_ID_BEING_RESPONDED_TO),
        affected_sop_class: text(&obj, tags::AFFECTED_SOP_CLASS_UID),
        affected_sop_instance: text(&obj, tags::AFFECTED_SOP_INSTANCE_UID),
        requested_sop_class: text(&obj, tags::REQUESTED_SOP_CLASS_UID),
        requested_sop_instance: text(&obj, tags::REQUESTED_SOP_INSTANCE_UID),
        move_destination: text(&obj, tags::MOVE_DESTINATION),
        action_type: uint(&obj, tags::ACTION_TYPE_ID),
        event_type: uint(&obj, tags::EVENT_TYPE_ID),
        status: uint(&obj, tags::STATUS).map(Status),
        has_data_set: uint(&obj, tags::COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATA_SET),
    })
}

/// Sub-operation counts of a C-MOVE or C-GET response (PS3.7 §9.3.3, §9.3.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub remaining: u16,
    pub completed: u16,
    pub failed: u16,
    pub warning: u16,
}

fn us(tag: Tag, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

fn ui(tag: Tag, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::UI, PrimitiveValue::from(v))
}

fn encode(elements: Vec<DataElement<InMemDicomObject>>) -> Vec<u8> {
    // command_from_element_iter computes the group length element itself.
    let obj = InMemDicomObject::command_from_element_iter(elements);
    let mut body = Vec::new();
    obj.write_dataset_with_ts(&mut body, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .expect("writing to memory cannot fail");
    body
}

/// A response to `request`: the builder for the response command set.
pub struct Response<'a> {
    request: &'a Command,
    field: u16,
    status: Status,
    data_set: bool,
    counts: Option<Counts>,
    comment: Option<(String, Option<u16>)>,
}

impl<'a> Response<'a> {
    pub fn new(request: &'a Command, field: u16, status: Status) -> Self {
        Response {
            request,
            field,
            status,
            data_set: false,
            counts: None,
            comment: None,
        }
    }

    /// A data set (identifier, event information) follows.
    pub fn with_data_set(mut self) -> Self {
        self.data_set = true;
        self
    }

    /// Error Comment (at most 64 characters are sent) and Error ID of a failure.
    pub fn with_comment(mut self, comment: &str, error_id: Option<u16>) -> Self {
        let comment: String = comment.chars().take(64).collect();
        self.comment = Some((comment, error_id));
        self
    }

    pub fn with_counts(mut self, counts: Counts) -> Self {
        self.counts = Some(counts);
        self
    }

    pub fn encode(self) -> Vec<u8> {
        let rq = self.request;
        let mut elements = Vec::new();
        // N-services answer with the affected SOP of the request's *requested* SOP.
        let class = rq
            .affected_sop_class
            .as_ref()
            .or(rq.requested_sop_class.as_ref());
        if let Some(class) = class {
            elements.push(ui(tags::AFFECTED_SOP_CLASS_UID, class));
        }
        elements.push(us(tags::COMMAND_FIELD, self.field));
        elements.push(us(tags::MESSAGE_ID_BEING_RESPONDED_TO, rq.message_id));
        elements.push(us(
            tags::COMMAND_DATA_SET_TYPE,
            if self.data_set { DATA_SET } else { NO_DATA_SET },
        ));
        elements.push(us(tags::STATUS, self.status.0));
        let instance = rq
            .affected_sop_instance
            .as_ref()
            .or(rq.requested_sop_instance.as_ref());
        if let Some(sop) = instance {
            elements.push(ui(tags::AFFECTED_SOP_INSTANCE_UID, sop));
        }
        if let Some(action) = rq.action_type {
            elements.push(us(tags::ACTION_TYPE_ID, action));
        }
        if let Some(event) = rq.event_type {
            elements.push(us(tags::EVENT_TYPE_ID, event));
        }
        if let Some(c) = self.counts {
            // Remaining is only meaningful in pending responses (and after a cancel).
            if self.status.is_pending() || self.status == Status::CANCEL {
                elements.push(us(tags::NUMBER_OF_REMAINING_SUBOPERATIONS, c.remaining));
            }
            elements.push(us(tags::NUMBER_OF_COMPLETED_SUBOPERATIONS, c.completed));
            elements.push(us(tags::NUMBER_OF_FAILED_SUBOPERATIONS, c.failed));
            elements.push(us(tags::NUMBER_OF_WARNING_SUBOPERATIONS, c.warning));
        }
        if let Some((comment, id)) = self.comment {
            let text = PrimitiveValue::from(comment.as_str());
            elements.push(DataElement::new(tags::ERROR_COMMENT, VR::LO, text));
            if let Some(id) = id {
                elements.push(us(tags::ERROR_ID, id));
            }
        }
        encode(elements)
    }
}

/// Encode a response to `request` with `status`.
pub fn response(request: &Command, field: u16, status: Status) -> Vec<u8> {
    Response::new(request, field, status).encode()
}

/// Encode a response that a data set (an identifier) follows.
pub fn response_with_data(request: &Command, field: u16, status: Status) -> Vec<u8> {
    Response::new(request, field, status)
        .with_data_set()
        .encode()
}

/// A C-STORE-RQ (a C-MOVE or C-GET sub-operation); a data set always follows.
pub fn store_request(
    message_id: u16,
    sop_class: &str,
    sop_instance: &str,
    move_originator: Option<(&str, u16)>,
) -> Vec<u8> {
    let mut elements = vec![
        ui(tags::AFFECTED_SOP_CLASS_UID, sop_class),
        us(tags::COMMAND_FIELD, field::C_STORE_RQ),
        us(tags::MESSAGE_ID, message_id),
        us(tags::PRIORITY, 0),
        us(tags::COMMAND_DATA_SET_TYPE, DATA_SET),
        ui(tags::AFFECTED_SOP_INSTANCE_UID, sop_instance),
    ];
    if let Some((ae, id)) = move_originator {
        elements.push(DataElement::new(
            tags::MOVE_ORIGINATOR_APPLICATION_ENTITY_TITLE,
            VR::AE,
            PrimitiveValue::from(ae),
        ));
        elements.push(us(tags::MOVE_ORIGINATOR_MESSAGE_ID, id));
    }
    encode(elements)
}

/// An N-EVENT-REPORT-RQ with event information following.
pub fn event_report_request(
    message_id: u16,
    sop_class: &str,
    sop_instance: &str,
    event_type: u16,
) -> Vec<u8> {
    encode(vec![
        ui(tags::AFFECTED_SOP_CLASS_UID, sop_class),
        us(tags::COMMAND_FIELD, field::N_EVENT_REPORT_RQ),
        us(tags::MESSAGE_ID, message_id),
        us(tags::COMMAND_DATA_SET_TYPE, DATA_SET),
        ui(tags::AFFECTED_SOP_INSTANCE_UID, sop_instance),
        us(tags::EVENT_TYPE_ID, event_type),
    ])
}

/// An N-ACTION-RQ with action information following.
pub fn action_request(
    message_id: u16,
    sop_class: &str,
    sop_instance: &str,
    action_type: u16,
) -> Vec<u8> {
    encode(vec![
        ui(tags::REQUESTED_SOP_CLASS_UID, sop_class),
        us(tags::COMMAND_FIELD, field::N_ACTION_RQ),
        us(tags::MESSAGE_ID, message_id),
        us(tags::COMMAND_DATA_SET_TYPE, DATA_SET),
        ui(tags::REQUESTED_SOP_INSTANCE_UID, sop_instance),
        us(tags::ACTION_TYPE_ID, action_type),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> InMemDicomObject {
        InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased()).unwrap()
    }

    #[test]
    fn responses_round_trip() {
        let rq = Command {
            field: field::C_STORE_RQ,
            message_id: 7,
            affected_sop_class: Some("1.2.840.10008.5.1.4.1.1.2".into()),
            affected_sop_instance: Some("1.2.3".into()),
            has_data_set: true,
            ..Default::default()
        };
        let bytes = response(&rq, field::C_STORE_RSP, Status::DOES_NOT_MATCH_SOP_CLASS);
        let obj = read(&bytes);
        assert_eq!(uint(&obj, tags::STATUS), Some(0xA900));
        assert_eq!(uint(&obj, tags::MESSAGE_ID_BEING_RESPONDED_TO), Some(7));
        let len = obj
            .get(tags::COMMAND_GROUP_LENGTH)
            .unwrap()
            .to_int::<u32>()
            .unwrap();
        assert_eq!(len as usize, bytes.len() - 12);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.field, field::C_STORE_RSP);
        assert_eq!(back.responded_to, Some(7));
        assert_eq!(back.status, Some(Status::DOES_NOT_MATCH_SOP_CLASS));
        assert!(!back.has_data_set);
        assert_eq!(back.affected_sop_instance.as_deref(), Some("1.2.3"));
    }

    #[test]
    fn retrieve_responses_carry_counts() {
        let rq = Command {
            field: field::C_MOVE_RQ,
            message_id: 3,
            affected_sop_class: Some("1.2.840.10008.5.1.4.1.2.2.2".into()),
            ..Default::default()
        };
        let counts = Counts {
            remaining: 4,
            completed: 2,
            failed: 1,
            warning: 0,
        };
        let pending = read(
            &Response::new(&rq, field::C_MOVE_RSP, Status::PENDING)
                .with_counts(counts)
                .encode(),
        );
        assert_eq!(
            uint(&pending, tags::NUMBER_OF_REMAINING_SUBOPERATIONS),
            Some(4)
        );
        assert_eq!(
            uint(&pending, tags::NUMBER_OF_FAILED_SUBOPERATIONS),
            Some(1)
        );
        let last = read(
            &Response::new(&rq, field::C_MOVE_RSP, Status::WARNING)
                .with_counts(counts)
                .with_data_set()
                .encode(),
        );
        assert!(last.get(tags::NUMBER_OF_REMAINING_SUBOPERATIONS).is_none());
        assert_eq!(
            uint(&last, tags::NUMBER_OF_COMPLETED_SUBOPERATIONS),
            Some(2)
        );
        assert_eq!(uint(&last, tags::COMMAND_DATA_SET_TYPE), Some(DATA_SET));
    }

    #[test]
    fn n_action_response_names_the_requested_instance() {
        let rq = Command {
            field: field::N_ACTION_RQ,
            message_id: 9,
            requested_sop_class: Some("1.2.840.10008.1.20.1".into()),
            requested_sop_instance: Some("1.2.840.10008.1.20.1.1".into()),
            action_type: Some(1),
            has_data_set: true,
            ..Default::default()
        };
        let back = decode(&response(&rq, field::N_ACTION_RSP, Status::SUCCESS)).unwrap();
        assert_eq!(
            back.affected_sop_class.as_deref(),
            Some("1.2.840.10008.1.20.1")
        );
        assert_eq!(
            back.affected_sop_instance.as_deref(),
            Some("1.2.840.10008.1.20.1.1")
        );
        assert_eq!(back.action_type, Some(1));
        let report = decode(&event_report_request(
            5,
            "1.2.840.10008.1.20.1",
            "1.2.840.10008.1.20.1.1",
            2,
        ))
        .unwrap();
        assert_eq!(report.field, field::N_EVENT_REPORT_RQ);
        assert!(report.has_data_set);
        let store = decode(&store_request(11, "1.2.3", "1.2.3.4", Some(("MOVER", 4)))).unwrap();
        assert_eq!((store.field, store.message_id), (field::C_STORE_RQ, 11));
    }
}
