//! Photos (JPEG, PNG) from the hospital app become Secondary Capture instances (the format
//! is `dicom::capture`'s): a baseline JPEG is streamed from its spool file into a new spool
//! between the envelope's two halves, other photos are decoded on a blocking thread. The
//! result is spooled like any received instance and goes through the one ingest path.

use std::io::Read;

use axum::http::StatusCode;
use tokio::io::AsyncReadExt;

use crate::dicom::capture::{self, Capture, CaptureError};
use crate::index::orders::Order;
use crate::index::uploads::Upload;
use crate::ingest::Ingest;
use crate::radiology::error::RestError;
use crate::storage::{Spool, SpooledFile, StorageError};

fn unreadable(e: CaptureError) -> RestError {
    RestError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_image", e.0)
}

fn spooling(e: StorageError) -> RestError {
    RestError::internal(format!("spooling a photo: {e}"))
}

/// Who the photo is of, from the upload's UIDs and the order's patient data.
fn capture_of(u: &Upload, order: Option<&Order>) -> Capture {
    let field = |f: fn(&Order) -> &Option<String>| order.and_then(|o| f(o).clone());
    Capture {
        study_uid: u.study_uid.clone(),
        series_uid: u.series_uid.clone(),
        sop_instance_uid: u.image_uid.clone(),
        accession_number: field(|o| &o.accession_number),
        patient_name: field(|o| &o.patient_name),
        patient_id: field(|o| &o.patient_id),
        patient_birth_date: field(|o| &o.patient_birth_date),
        patient_sex: field(|o| &o.patient_sex),
    }
}

/// Wrap a verified photo into a Secondary Capture instance, spooled for ingest.
pub async fn secondary_capture(
    ingest: &Ingest,
    photo: SpooledFile,
    u: &Upload,
    order: Option<&Order>,
) -> Result<SpooledFile, RestError> {
    let c = capture_of(u, order);
    // Read back by path (a small photo may still be in memory).
    let photo = photo.on_disk().await.map_err(spooling)?;
    let path = photo.path().expect("on disk").to_owned();
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(RestError::internal)?;
    let mut head = vec![0u8; 64 * 1024];
    let n = read_up_to(&mut file, &mut head).await?;
    head.truncate(n);
    let mut spool = ingest.new_spool().map_err(spooling)?;
    let baseline = match u.mime_type.as_str() {
        "image/jpeg" => capture::baseline_jpeg(&head).map_err(unreadable)?,
        _ => None,
    };
    if let Some(frame) = baseline {
        let (envelope, tail) = capture::jpeg_envelope(&c, frame, photo.len).map_err(unreadable)?;
        spool.write(&envelope).await.map_err(spooling)?;
        spool.write(&head).await.map_err(spooling)?;
        copy_rest(&mut file, &mut spool).await?;
        spool.write(&tail).await.map_err(spooling)?;
        return spool.finish().await.map_err(spooling);
    }
    // Decode (PNG, progressive or other JPEGs) and store 8-bit pixels.
    drop(file);
    let bytes = tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        std::fs::File::open(&path)?.read_to_end(&mut bytes)?;
        let decoded = image::load_from_memory(&bytes)
            .map_err(|e| CaptureError(format!("the photo cannot be decoded: {e}")));
        Ok::<_, std::io::Error>(decoded.and_then(|photo| capture::decoded_capture(&c, &photo)))
    })
    .await
    .map_err(RestError::internal)?
    .map_err(RestError::internal)?
    .map_err(unreadable)?;
    spool.write(&bytes).await.map_err(spooling)?;
    spool.finish().await.map_err(spooling)
}

/// The rest of an open file into the spool.
async fn copy_rest(file: &mut tokio::fs::File, spool: &mut Spool) -> Result<(), RestError> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await.map_err(RestError::internal)?;
        if n == 0 {
            return Ok(());
        }
        spool.write(&buf[..n]).await.map_err(spooling)?;
    }
}

async fn read_up_to(file: &mut tokio::fs::File, buf: &mut [u8]) -> Result<usize, RestError> {
    let mut n = 0;
    while n < buf.len() {
        let got = file
            .read(&mut buf[n..])
            .await
            .map_err(RestError::internal)?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}
