//! Unit tests of the WADO-URI query parser (`query.rs`): parameters, content types,
//! transfer syntaxes and the 400/406 refusals that name their parameter.

use super::*;

const UIDS: &str = "requestType=WADO&studyUID=1.2.3&seriesUID=1.2.3.4&objectUID=1.2.3.4.5";

fn parse(extra: &str) -> Result<WadoQuery, ApiError> {
    WadoQuery::parse(&format!("{UIDS}{extra}"))
}

fn image(extra: &str) -> (Params, u32) {
    match parse(extra).unwrap().answer {
        Answer::Image { params, frame } => (params, frame),
        other => panic!("not an image: {other:?}"),
    }
}

/// The 400's message, which must name the parameter.
fn refusal(query: &str) -> String {
    match WadoQuery::parse(query) {
        Err(ApiError::BadRequest(m)) => m,
        other => panic!("{query}: {other:?}"),
    }
}

#[test]
fn defaults_to_a_jpeg_of_the_first_frame() {
    let q = parse("").unwrap();
    assert_eq!(q.object.as_str(), "1.2.3.4.5");
    let (params, frame) = image("");
    assert_eq!(
        (params.format, frame, params.quality),
        (Format::Jpeg, 1, 90)
    );
    assert_eq!(
        (params.window, params.viewport, params.region),
        (None, None, None)
    );
}

#[test]
fn content_type_lists_pick_the_first_supported() {
    let kind = |ct: &str| content_type(Some(ct));
    assert_eq!(kind("application/dicom").unwrap(), Kind::Dicom);
    assert_eq!(
        kind("image/webp, image/gif").unwrap(),
        Kind::Image(Format::Gif)
    );
    assert_eq!(
        kind("image/png;q=0.5, application/dicom").unwrap(),
        Kind::Dicom
    );
    assert_eq!(
        kind("image/png, image/jpeg").unwrap(),
        Kind::Image(Format::Png)
    );
    assert_eq!(kind("*/*").unwrap(), Kind::Image(Format::Jpeg));
    assert!(matches!(
        kind("image/webp"),
        Err(ApiError::NotAcceptable(_))
    ));
    assert!(matches!(
        kind("text/html, application/pdf"),
        Err(ApiError::NotAcceptable(_))
    ));
    assert!(matches!(kind(" "), Err(ApiError::BadRequest(_))));
}

#[test]
fn dicom_with_and_without_a_transfer_syntax() {
    let ts = |extra: &str| match parse(&format!("&contentType=application/dicom{extra}")) {
        Ok(WadoQuery {
            answer: Answer::Dicom(ts),
            ..
        }) => ts,
        other => panic!("{other:?}"),
    };
    assert_eq!(ts(""), Wanted::Default);
    assert_eq!(ts("&transferSyntax=*"), Wanted::AsStored);
    assert_eq!(
        ts("&transferSyntax=1.2.840.10008.1.2.1"),
        Wanted::Exactly(TransferSyntax::explicit_vr_le())
    );
    assert!(matches!(
        parse("&contentType=application/dicom&transferSyntax=1.2.3.999"),
        Err(ApiError::NotAcceptable(_))
    ));
    assert!(refusal(&format!(
        "{UIDS}&contentType=application/dicom&transferSyntax=x.y"
    ))
    .contains("transferSyntax"));
    assert!(refusal(&format!("{UIDS}&contentType=application/dicom&rows=10")).contains("rows"));
}

#[test]
fn image_parameters() {
    let (p, frame) = image("&contentType=image/png&frameNumber=3&rows=100&columns=50");
    assert_eq!(
        (p.format, frame, p.viewport),
        (Format::Png, 3, Some((50, 100)))
    );
    assert_eq!(image("&rows=64").0.viewport, Some((MAX_SIZE, 64)));
    assert_eq!(image("&columns=64").0.viewport, Some((64, MAX_SIZE)));
    let (p, _) = image("&windowCenter=-600&windowWidth=1500&imageQuality=20");
    assert_eq!((p.window, p.quality), (Some((-600.0, 1500.0)), 20));
    assert_eq!(
        image("&region=0.25,0,0.75,0.5").0.region,
        Some(Crop::Fraction([0.25, 0.0, 0.75, 0.5]))
    );
    // Unknown parameters (a token) and the ones without effect here are ignored.
    assert!(parse("&token=abc&charset=UTF-8&annotation=patient").is_ok());
}

#[test]
fn every_refusal_names_its_parameter() {
    let cases = [
        ("studyUID=1.2&seriesUID=1.2&objectUID=1.2", "requestType"),
        (
            "requestType=WADO-RS&studyUID=1.2&seriesUID=1.2&objectUID=1.2",
            "requestType",
        ),
        ("requestType=WADO&seriesUID=1.2&objectUID=1.2", "studyUID"),
        ("requestType=WADO&studyUID=1.2&objectUID=1.2", "seriesUID"),
        ("requestType=WADO&studyUID=1.2&seriesUID=1.2", "objectUID"),
        (
            "requestType=WADO&studyUID=1.a&seriesUID=1.2&objectUID=1.2",
            "studyUID",
        ),
        (
            "requestType=WADO&studyUID=1.2&seriesUID=1.2&objectUID=1..2",
            "objectUID",
        ),
    ];
    for (query, name) in cases {
        assert!(refusal(query).contains(name), "{query}");
    }
    let image_cases = [
        ("&windowCenter=40", "windowCenter"),
        ("&windowWidth=400", "windowWidth"),
        ("&windowCenter=a&windowWidth=400", "windowCenter"),
        ("&windowCenter=40&windowWidth=0", "windowWidth"),
        ("&frameNumber=0", "frameNumber"),
        ("&frameNumber=x", "frameNumber"),
        ("&rows=0", "rows"),
        ("&columns=ten", "columns"),
        ("&columns=5000", "columns"),
        ("&region=0,0,1", "region"),
        ("&region=0.5,0,0.4,1", "region"),
        ("&region=0,0,1.5,1", "region"),
        ("&region=a,b,c,d", "region"),
        ("&imageQuality=0", "imageQuality"),
        ("&imageQuality=101", "imageQuality"),
        ("&transferSyntax=1.2.840.10008.1.2.1", "transferSyntax"),
        ("&contentType=image/png&transferSyntax=*", "transferSyntax"),
        ("&rows=10&rows=20", "rows"),
        ("&anonymize=yes", "anonymize"),
        ("&contentType=", "contentType"),
    ];
    for (extra, name) in image_cases {
        assert!(refusal(&format!("{UIDS}{extra}")).contains(name), "{extra}");
    }
}
