//! The ingest path's header parsing of a whole object: Part-10 layout, transfer syntax,
//! the nesting bound (deflated data sets inflated), dicom-object's header parse, UID and
//! IOD checks, Pixel Data location, frame table and the DICOM JSON kept for /metadata.
//! Any outcome is fine — stored or refused with a reason — but no panic, no hang, no
//! unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pacs_lite::dicom::parse_header(std::io::Cursor::new(data), data.len() as u64);
});
