//! DIMSE message assembly as an association does it after negotiation: PDUs read from the
//! byte stream (P-DATA-TF sliced by our `parse_pdata`, others by dicom-ul), P-DATA values gathered into command sets (our bounded
//! assembler) and decoded, and each complete message's data set parsed the way its service
//! parses it: C-FIND/C-MOVE/C-GET identifiers (the query model) and storage commitment
//! action information. Presentation context ids choose the transfer syntax: 1 implicit
//! VR LE, 3 explicit VR LE, 5 deflated, 7 explicit VR BE.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use pacs_lite::dimse::command::{self, field};
use pacs_lite::dimse::{commit, find, parse_pdata, Assembler, Value};
use pacs_lite::model::TransferSyntax;

/// The largest data set gathered in memory here (the server: 16 MiB; fuzz inputs are small).
const MAX_DATA: usize = 1 << 20;

fn transfer_syntax(context: u8) -> &'static str {
    match context {
        3 => "1.2.840.10008.1.2.1",
        5 => "1.2.840.10008.1.2.1.99",
        7 => "1.2.840.10008.1.2.2",
        _ => "1.2.840.10008.1.2",
    }
}

fn complete(request: &command::Command, context: u8, data: &[u8]) {
    let ts = transfer_syntax(context);
    match request.field {
        field::C_FIND_RQ | field::C_MOVE_RQ | field::C_GET_RQ => {
            let ts = TransferSyntax::parse(ts).expect("a known transfer syntax");
            let _ = find::parse(data, &ts);
        }
        field::N_ACTION_RQ => {
            let _ = commit::accept(request, data, ts);
        }
        _ => {}
    }
}

/// The next PDU's values: P-DATA-TF sliced as the server's reader does (`parse_pdata`),
/// other PDUs read by dicom-ul and skipped (no values); `None` at the end or on an error.
fn next_values(rest: &mut &[u8]) -> Option<Vec<Value>> {
    if rest.len() >= 6 && rest[0] == 0x04 {
        let len = u32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]) as usize;
        let body = rest.get(6..6 + len)?.to_vec();
        *rest = &rest[6 + len..];
        return parse_pdata(body.into()).ok();
    }
    let mut cursor = Cursor::new(*rest);
    dicom_ul::read_pdu(&mut cursor, 1 << 20, false).ok()??;
    *rest = &rest[cursor.position() as usize..];
    Some(Vec::new())
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut assembler = Assembler::default();
    let mut in_flight: Option<(command::Command, u8, Vec<u8>)> = None;
    while let Some(values) = next_values(&mut rest) {
        for pdv in values {
            let context = pdv.context;
            if pdv.command {
                if let Some(Ok(c)) = assembler.command_fragment(&pdv.data, pdv.last) {
                    if c.has_data_set {
                        in_flight = Some((c, context, Vec::new()));
                    } else {
                        complete(&c, context, &[]);
                    }
                }
                continue;
            }
            let Some((_, _, gathered)) = in_flight.as_mut() else {
                continue;
            };
            if gathered.len() + pdv.data.len() <= MAX_DATA {
                gathered.extend_from_slice(&pdv.data);
            }
            if pdv.last {
                let (c, context, gathered) = in_flight.take().expect("in flight");
                complete(&c, context, &gathered);
            }
        }
    }
});
