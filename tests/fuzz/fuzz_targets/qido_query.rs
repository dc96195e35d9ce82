//! QIDO-RS query strings at every level: key parsing (keywords, tags, sequence paths),
//! matchers (wildcards, ranges, UID lists), includefield, limit/offset, fuzzy matching,
//! and the SQL built from them, run against an index holding the seed objects. The first
//! input byte picks the resource; the rest is the raw query string. A query may be
//! refused (400), never answered with a 5xx.
#![no_main]

use axum::http::Method;
use libfuzzer_sys::fuzz_target;
use pacs_lite_fuzz::{assert_not_internal, server};

/// Bytes a client may put in a query string as they are; the others are percent-encoded
/// (so every input is a URI, and `%` stays raw: the fuzzer makes its own escapes).
fn query_byte(b: u8, out: &mut String) {
    if b.is_ascii_alphanumeric() || b"=&,.-_*?%^+:;/!$'()@~".contains(&b) {
        out.push(b as char);
    } else {
        out.push_str(&format!("%{b:02X}"));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&level, rest)) = data.split_first() else {
        return;
    };
    let s = server();
    let (study, series) = (&s.study_uid, &s.series_uid);
    let path = match level % 6 {
        0 => "/dicom-web/studies".to_owned(),
        1 => "/dicom-web/series".to_owned(),
        2 => "/dicom-web/instances".to_owned(),
        3 => format!("/dicom-web/studies/{study}/series"),
        4 => format!("/dicom-web/studies/{study}/instances"),
        _ => format!("/dicom-web/studies/{study}/series/{series}/instances"),
    };
    let mut uri = path + "?";
    for &b in rest {
        query_byte(b, &mut uri);
    }
    let (status, text) = s.send(Method::GET, &uri, "application/dicom+json", Vec::new());
    assert_not_internal("a QIDO-RS query", status, &text);
});
