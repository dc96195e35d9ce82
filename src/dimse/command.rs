//! DIMSE command sets (PS3.7 §9, §E): decoding requests and encoding responses, always in
//! Implicit VR Little Endian, with the Command Group Length computed.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::ingest::element_text as text;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

/// Command Field values (PS3.7 Annex E).
pub mod field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_FIND_RQ: u16 = 0x0020;
    pub const C_FIND_RSP: u16 = 0x8020;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
}

/// CommandDataSetType: no data set follows.
pub const NO_DATA_SET: u16 = 0x0101;

#[derive(Debug, thiserror::Error)]
#[error("malformed DIMSE command: {0}")]
pub struct CommandError(pub String);

/// The parts of a request command the services use.
#[derive(Debug, Clone)]
pub struct Request {
    pub field: u16,
    pub message_id: u16,
    pub affected_sop_class: Option<String>,
    pub affected_sop_instance: Option<String>,
    pub has_data_set: bool,
}

fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<u16> {
    obj.get(tag)?.to_int::<u16>().ok()
}

/// Decode a command set.
pub fn decode(bytes: &[u8]) -> Result<Request, CommandError> {
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| CommandError(e.to_string()))?;
    let field =
        uint(&obj, tags::COMMAND_FIELD).ok_or_else(|| CommandError("no CommandField".into()))?;
    Ok(Request {
        field,
        message_id: uint(&obj, tags::MESSAGE_ID).unwrap_or(0),
        affected_sop_class: text(&obj, tags::AFFECTED_SOP_CLASS_UID),
        affected_sop_instance: text(&obj, tags::AFFECTED_SOP_INSTANCE_UID),
        has_data_set: uint(&obj, tags::COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATA_SET),
    })
}

/// Encode a response to `request` with `status`.
pub fn response(request: &Request, field: u16, status: u16) -> Vec<u8> {
    encode_response(request, field, status, NO_DATA_SET)
}

/// Encode a response that a data set (an identifier) follows.
pub fn response_with_data(request: &Request, field: u16, status: u16) -> Vec<u8> {
    encode_response(request, field, status, 0x0102)
}

fn encode_response(request: &Request, field: u16, status: u16, data_set_type: u16) -> Vec<u8> {
    let mut elements = Vec::new();
    if let Some(class) = &request.affected_sop_class {
        elements.push(DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(class.as_str()),
        ));
    }
    elements.push(DataElement::new(
        tags::COMMAND_FIELD,
        VR::US,
        PrimitiveValue::from(field),
    ));
    elements.push(DataElement::new(
        tags::MESSAGE_ID_BEING_RESPONDED_TO,
        VR::US,
        PrimitiveValue::from(request.message_id),
    ));
    elements.push(DataElement::new(
        tags::COMMAND_DATA_SET_TYPE,
        VR::US,
        PrimitiveValue::from(data_set_type),
    ));
    elements.push(DataElement::new(
        tags::STATUS,
        VR::US,
        PrimitiveValue::from(status),
    ));
    if let Some(sop) = &request.affected_sop_instance {
        elements.push(DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop.as_str()),
        ));
    }
    let obj = InMemDicomObject::command_from_element_iter(elements);
    let mut body = Vec::new();
    obj.write_dataset_with_ts(&mut body, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .expect("writing to memory cannot fail");
    // command_from_element_iter computes the group length element itself.
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_round_trip() {
        let rq = Request {
            field: field::C_STORE_RQ,
            message_id: 7,
            affected_sop_class: Some("1.2.840.10008.5.1.4.1.1.2".into()),
            affected_sop_instance: Some("1.2.3".into()),
            has_data_set: true,
        };
        let bytes = response(&rq, field::C_STORE_RSP, 0xA900);
        let obj =
            InMemDicomObject::read_dataset_with_ts(&bytes[..], &IMPLICIT_VR_LITTLE_ENDIAN.erased())
                .unwrap();
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
        assert!(!back.has_data_set);
        assert_eq!(back.affected_sop_instance.as_deref(), Some("1.2.3"));
    }
}
