//! STOW-RS request bodies: content-type parsing, multipart framing (multer behind our
//! limits), part headers, and each part through the ingest path. The first input byte
//! picks the framing; the rest is the body (variant 3: the first line is the
//! Content-Type). A body may be refused (400, 409, 415 …), never answered with a 5xx.
#![no_main]

use axum::http::Method;
use libfuzzer_sys::fuzz_target;
use pacs_lite_fuzz::{assert_not_internal, server};

const MULTIPART: &str = "multipart/related; type=\"application/dicom\"; boundary=BOUNDARY";

fuzz_target!(|data: &[u8]| {
    let Some((&variant, rest)) = data.split_first() else {
        return;
    };
    let s = server();
    let study_path = format!("/dicom-web/studies/{}", s.study_uid);
    let (uri, content_type, body) = match variant % 4 {
        0 => ("/dicom-web/studies", MULTIPART.to_owned(), rest),
        1 => (study_path.as_str(), MULTIPART.to_owned(), rest),
        2 => ("/dicom-web/studies", "application/dicom".to_owned(), rest),
        _ => {
            let cut = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let ct = String::from_utf8_lossy(&rest[..cut]).into_owned();
            ("/dicom-web/studies", ct, rest.get(cut + 1..).unwrap_or_default())
        }
    };
    let (status, text) = s.send(Method::POST, uri, &content_type, body.to_vec());
    assert_not_internal("a STOW-RS request", status, &text);
});
