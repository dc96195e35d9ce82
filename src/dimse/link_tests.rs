//! Tests of the association link (`link.rs`).

use super::*;

#[test]
fn pdata_values_are_sliced_and_checked() {
    let mut pdu = Vec::new();
    push_values(&mut pdu, 3, true, b"command", 64);
    push_values(&mut pdu, 5, false, b"", 64);
    let (a, b) = pdu.split_at(6 + 6 + 7);
    let body = |p: &[u8]| Bytes::copy_from_slice(&p[6..]);
    let v = parse_pdata(body(a)).unwrap();
    assert_eq!((v[0].context, v[0].command, v[0].last), (3, true, true));
    assert_eq!(&v[0].data[..], b"command");
    let v = parse_pdata(body(b)).unwrap();
    assert_eq!(
        (v[0].context, v[0].command, v[0].last, v[0].data.len()),
        (5, false, true, 0)
    );
    for bad in [
        &a[6..10],
        &[0, 0, 0, 1, 3, 0][..],
        &[0, 0, 0, 9, 3, 0, 1][..],
    ] {
        assert!(parse_pdata(Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
    }
}

#[test]
fn pdata_headers() {
    let h = pdata_header(3, true, true, 10);
    assert_eq!(h[0], 4);
    assert_eq!(u32::from_be_bytes(h[2..6].try_into().unwrap()), 16);
    assert_eq!(u32::from_be_bytes(h[6..10].try_into().unwrap()), 12);
    assert_eq!((h[10], h[11]), (3, 3));
    assert_eq!(pdata_header(5, false, false, 0)[11], 0);
}

#[test]
fn oversized_command_sets_are_refused_then_forgotten() {
    let mut a = Assembler::default();
    let chunk = vec![0u8; 16 * 1024];
    for _ in 0..10 {
        assert!(a.command_fragment(&chunk, false).is_none());
    }
    assert!(a.command.len() <= MAX_COMMAND);
    let err = a.command_fragment(&[], true).unwrap().unwrap_err();
    assert!(err.0.contains("larger than"), "{err}");
    // The next command starts afresh.
    let echo = command::response(&Command::default(), 0x0030, crate::dimse::Status::SUCCESS);
    let next = a.command_fragment(&echo, true).unwrap().unwrap();
    assert_eq!(next.field, 0x0030);
}

#[test]
fn values_are_split_at_the_maximum() {
    let mut out = Vec::new();
    push_values(&mut out, 1, false, &[7u8; 10], 4);
    // 4 + 4 + 2 bytes: three PDUs, only the last flagged last.
    assert_eq!(out.len(), 3 * 12 + 10);
    assert_eq!((out[11], out[16 + 11], out[32 + 11]), (0, 0, 2));
    let mut empty = Vec::new();
    push_values(&mut empty, 1, true, &[], 4);
    assert_eq!(empty, pdata_header(1, true, true, 0).to_vec());
}
