//! The one mapping from ingest outcomes to the upload API's REST error codes (HTTP status,
//! stable `error` code, message): what the device is told when its whole file was not
//! stored.

use axum::http::StatusCode;
use serde_json::json;

use crate::index::uploads::Upload;
use crate::ingest::{Accepted, Outcome, Reason, Rejection};
use crate::model::Sha256;
use crate::radiology::error::RestError;

/// The stored instance, or the error to answer the upload with. An instance stored before
/// under the same UID with other bytes (kept by policy) is a conflict here: the device's
/// file is not what the server holds.
pub(super) fn accepted(
    outcome: Outcome,
    u: &Upload,
    received: &Sha256,
) -> Result<Accepted, RestError> {
    match outcome {
        Outcome::Stored(a) => Ok(a),
        Outcome::AlreadyStored(a) if !a.kept_original => Ok(a),
        Outcome::AlreadyStored(_) => Err(RestError::new(
            StatusCode::CONFLICT,
            "conflicting_instance",
            "another version of this image (same image_uid, other bytes) is stored",
        )),
        Outcome::Rejected(r) => Err(refusal(&r, u, received)),
    }
}

/// The REST error of a refused upload.
pub(super) fn refusal(r: &Rejection, u: &Upload, received: &Sha256) -> RestError {
    let detail = r.detail.clone();
    let unprocessable =
        |code, message| RestError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message);
    match r.reason {
        Reason::SizeMismatch => RestError::bad_request("size_mismatch", detail)
            .with(json!({ "received": u.received, "file_size": u.file_size })),
        Reason::ChecksumMismatch => unprocessable("checksum_mismatch", detail)
            .with(json!({ "declared": u.checksum, "received_sha256": received })),
        Reason::StudyUidMismatch | Reason::DataSetMismatch => unprocessable(
            "uid_mismatch",
            format!("the file does not match the declared UIDs: {detail}"),
        ),
        Reason::ConflictingDuplicate => {
            RestError::new(StatusCode::CONFLICT, "conflicting_instance", detail)
        }
        Reason::TooLarge => RestError::new(StatusCode::PAYLOAD_TOO_LARGE, "file_too_large", detail),
        Reason::OutOfResources | Reason::ProcessingFailure => {
            RestError::internal(format!("storing an upload: {detail}"))
        }
        Reason::CannotUnderstand
        | Reason::MissingAttribute
        | Reason::InvalidUid
        | Reason::UnsupportedTransferSyntax
        | Reason::SopClassNotSupported
        | Reason::Truncated => unprocessable(
            "invalid_dicom",
            format!("the file is not a storable DICOM instance: {detail}"),
        ),
    }
}
