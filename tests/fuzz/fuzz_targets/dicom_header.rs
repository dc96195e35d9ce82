//! The ingest path's header parsing of a whole object: Part-10 layout, transfer syntax,
//! the nesting bound (deflated data sets inflated), dicom-object's header parse, UID and
//! IOD checks, Pixel Data location, frame table and the DICOM JSON kept for /metadata.
//! Any outcome is fine — stored or refused with a reason — but no panic, no hang, no
//! unbounded allocation.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static SCRATCH: tempfile::NamedTempFile =
            tempfile::NamedTempFile::new_in(pacs_lite_fuzz::scratch().keep()).expect("scratch file");
    }
    SCRATCH.with(|file| {
        let mut f = file.reopen().expect("scratch file");
        f.set_len(0).expect("truncate");
        f.write_all(data).expect("write");
        let _ = pacs_lite::ingest::parse_header(file.path(), data.len() as u64);
    });
});
