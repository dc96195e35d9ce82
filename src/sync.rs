//! `pacs-lite sync`: the reference offline client. It uploads every image in a queue
//! folder with the three steps of the offline upload API and deletes the local copy only
//! after the server's acknowledgement.
//!
//! Queue layout: each image is a file (`.dcm` or any DICOM file, `.jpg`/`.jpeg`, `.png`).
//! An optional sidecar `<file>.meta.json` gives `radiology_order_id` and `image_metadata`
//! (`study_uid`, `series_uid`, `image_uid`); photos need one, DICOM files have their UIDs
//! read from the file and take the order from `--order` when there is no sidecar.
//!
//! Crash safety: before talking to the server the client writes `<file>.upload.json`
//! (atomically) with the image's UUID, so a restarted client continues the same upload:
//! metadata is idempotent, the binary resumes from what the server reports, the
//! acknowledgement is idempotent, and the file is deleted only after an ACK. Network
//! failures and server errors (5xx) are retried with exponential backoff.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const STATE_SUFFIX: &str = ".upload.json";
const META_SUFFIX: &str = ".meta.json";

#[derive(Debug, Clone)]
pub struct Options {
    pub queue: PathBuf,
    pub server: String,
    pub token: Option<String>,
    pub order: Option<String>,
    pub chunk_bytes: u64,
    pub max_retries: u32,
    pub once: bool,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Local(String),
    /// The server refused this image for good (bad metadata, checksum, UIDs…).
    #[error("refused by the server: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("the server is unreachable or failing: {0}")]
    Transient(String),
}

/// What a run did.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub uploaded: Vec<String>,
    pub failed: Vec<(String, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    image_uuid: String,
    file_size: u64,
    checksum: String,
}

#[derive(Debug, Deserialize)]
struct Sidecar {
    radiology_order_id: Option<Value>,
    image_metadata: Option<ImageUids>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageUids {
    study_uid: String,
    series_uid: String,
    image_uid: String,
}

fn is_image(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !(name.starts_with('.') || name.ends_with(".json") || name.ends_with(".tmp"))
}

fn mime_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg") | Some("jpeg") => "image/jpeg",
        Some("png") => "image/png",
        _ => "application/dicom",
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Write a file atomically and durably (temporary file, fsync, rename, fsync directory).
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = with_suffix(path, ".tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            break;
        }
        n += got as u64;
        h.update(&buf[..got]);
    }
    Ok((n, hex::encode(h.finalize())))
}

fn dicom_uids(path: &Path) -> Result<ImageUids, SyncError> {
    let obj = crate::dicom::open_file(path)
        .map_err(|e| SyncError::Local(format!("{} is not readable DICOM: {e}", path.display())))?;
    let get = |tag| {
        crate::dicom::element_text(&obj, tag)
            .ok_or_else(|| SyncError::Local(format!("{} has no {tag:?}", path.display())))
    };
    use dicom_dictionary_std::tags;
    Ok(ImageUids {
        study_uid: get(tags::STUDY_INSTANCE_UID)?,
        series_uid: get(tags::SERIES_INSTANCE_UID)?,
        image_uid: get(tags::SOP_INSTANCE_UID)?,
    })
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    max_retries: u32,
}

/// An HTTP answer: status and JSON body.
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn code(&self) -> String {
        self.body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    }

    fn refused(&self) -> SyncError {
        SyncError::Refused {
            code: self.code(),
            message: self
                .body
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        }
    }
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/radiology/offline-images/{path}", self.base)
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Send (rebuilding the request for each attempt) until an answer that is not a
    /// network failure or a 5xx; backoff doubles from 0.5 s up to 30 s.
    async fn send<F>(&self, what: &str, make: F) -> Result<Answer, SyncError>
    where
        F: Fn() -> Result<reqwest::RequestBuilder, SyncError>,
    {
        let mut delay = Duration::from_millis(500);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.auth(make()?).send().await;
            let problem = match result {
                Ok(rsp) if rsp.status().is_server_error() => {
                    format!("{what}: HTTP {}", rsp.status())
                }
                Ok(rsp) => {
                    let status = rsp.status().as_u16();
                    let body = rsp.json::<Value>().await.unwrap_or(Value::Null);
                    return Ok(Answer { status, body });
                }
                Err(e) => format!("{what}: {e}"),
            };
            if attempt > self.max_retries {
                return Err(SyncError::Transient(problem));
            }
            tracing::warn!(%problem, retry_in = ?delay, "retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
}

/// Upload every image in the queue (once, or again and again with `--watch`).
pub async fn run(opts: Options) -> Result<Summary, SyncError> {
    let client = Client {
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| SyncError::Local(e.to_string()))?,
        base: opts.server.trim_end_matches('/').to_owned(),
        token: opts.token.clone(),
        max_retries: opts.max_retries,
    };
    let mut summary = Summary::default();
    loop {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&opts.queue)
            .map_err(|e| SyncError::Local(format!("cannot read {}: {e}", opts.queue.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_image(p))
            .collect();
        files.sort();
        let total: u64 = files
            .iter()
            .filter_map(|f| f.metadata().ok().map(|m| m.len()))
            .sum();
        let bar = if opts.progress {
            indicatif::ProgressBar::new(total)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        for file in &files {
            bar.set_message(
                file.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("")
                    .to_owned(),
            );
            match upload_one(&client, &opts, file, &bar).await {
                Ok(()) => summary.uploaded.push(file.display().to_string()),
                Err(SyncError::Transient(e)) => return Err(SyncError::Transient(e)),
                Err(e) => {
                    tracing::error!(file = %file.display(), error = %e, "not uploaded; the file stays in the queue");
                    summary
                        .failed
                        .push((file.display().to_string(), e.to_string()));
                }
            }
        }
        bar.finish_and_clear();
        if opts.once {
            return Ok(summary);
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Upload one image through the three steps; its local copy is deleted only after the
/// server's acknowledgement.
async fn upload_one(
    client: &Client,
    opts: &Options,
    file: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<(), SyncError> {
    let state_path = with_suffix(file, STATE_SUFFIX);
    let state = upload_state(file, &state_path)?;
    let mime = mime_type(file);
    let (mut received, stored) = send_metadata(client, opts, file, &state, mime).await?;
    bar.inc(received);
    if !stored {
        send_binary(client, opts, file, &state, mime, &mut received, bar).await?;
    }
    acknowledge(client, file, &state, mime).await?;
    delete_local(file, &state_path)?;
    tracing::info!(file = %file.display(), upload = %state.image_uuid, "uploaded and acknowledged; local copy deleted");
    Ok(())
}

fn local_error(file: &Path) -> impl Fn(std::io::Error) -> SyncError + '_ {
    move |e| SyncError::Local(format!("{}: {e}", file.display()))
}

/// The upload's identity (step 0), kept across restarts: written durably before the
/// server hears of it.
fn upload_state(file: &Path, state_path: &Path) -> Result<State, SyncError> {
    if let Ok(bytes) = std::fs::read(state_path) {
        return serde_json::from_slice(&bytes)
            .map_err(|e| SyncError::Local(format!("{}: {e}", state_path.display())));
    }
    let (file_size, checksum) = sha256_file(file).map_err(local_error(file))?;
    let state = State {
        image_uuid: uuid::Uuid::new_v4().to_string(),
        file_size,
        checksum,
    };
    write_durably(
        state_path,
        &serde_json::to_vec(&state).expect("serializable"),
    )
    .map_err(local_error(file))?;
    Ok(state)
}

/// 1. Metadata (idempotent): the server's `received` count, and whether it is stored.
async fn send_metadata(
    client: &Client,
    opts: &Options,
    file: &Path,
    state: &State,
    mime: &str,
) -> Result<(u64, bool), SyncError> {
    let metadata = metadata_of(opts, file, state, mime)?;
    let a = client
        .send("upload-metadata", || {
            Ok(client
                .http
                .post(client.url("upload-metadata/"))
                .json(&metadata))
        })
        .await?;
    if a.status != 200 && a.status != 201 {
        return Err(a.refused());
    }
    let received = a.body.get("received").and_then(Value::as_u64).unwrap_or(0);
    let stored = a.body.get("state").and_then(Value::as_str) == Some("stored");
    Ok((received, stored))
}

/// The metadata of an image: its sidecar's, or the DICOM file's own UIDs.
fn metadata_of(opts: &Options, file: &Path, state: &State, mime: &str) -> Result<Value, SyncError> {
    let sidecar: Option<Sidecar> = match std::fs::read(with_suffix(file, META_SUFFIX)) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .map_err(|e| SyncError::Local(format!("{}{META_SUFFIX}: {e}", file.display())))?,
        ),
        Err(_) => None,
    };
    let uids = match sidecar.as_ref().and_then(|s| s.image_metadata.clone()) {
        Some(u) => u,
        None if mime == "application/dicom" => dicom_uids(file)?,
        None => {
            return Err(SyncError::Local(format!(
                "{}: photos need {META_SUFFIX} with image_metadata",
                file.display()
            )))
        }
    };
    let order = sidecar
        .as_ref()
        .and_then(|s| s.radiology_order_id.clone())
        .or_else(|| opts.order.clone().map(Value::String))
        .ok_or_else(|| {
            SyncError::Local(format!(
                "{}: no radiology_order_id (sidecar or --order)",
                file.display()
            ))
        })?;
    Ok(json!({
        "image_uuid": state.image_uuid,
        "radiology_order_id": order,
        "filename": file.file_name().and_then(|n| n.to_str()).unwrap_or("image"),
        "file_size": state.file_size,
        "mime_type": mime,
        "checksum": state.checksum,
        "image_metadata": uids,
    }))
}

/// 2. The binary, in parts from where the server is, until it is stored.
async fn send_binary(
    client: &Client,
    opts: &Options,
    file: &Path,
    state: &State,
    mime: &str,
    received: &mut u64,
    bar: &indicatif::ProgressBar,
) -> Result<(), SyncError> {
    let mut restarts = 0;
    loop {
        let end = (*received + opts.chunk_bytes).min(state.file_size);
        let part = read_part(file, *received, end).await?;
        let a = send_part(client, state, mime, *received, part).await?;
        match (a.status, a.code().as_str()) {
            (200 | 201, _) => {
                bar.inc(end - *received);
                return Ok(());
            }
            (202, _) => {
                let now = a
                    .body
                    .get("received")
                    .and_then(Value::as_u64)
                    .unwrap_or(end);
                bar.inc(now.saturating_sub(*received));
                *received = now;
            }
            // Someone (an earlier run of ours) moved on: continue from the server's count.
            (409, "offset_mismatch") | (400, "incomplete_upload") => {
                *received = a.body.get("received").and_then(Value::as_u64).unwrap_or(0);
            }
            // A failed whole-file check restarts the upload once (the file may have been
            // read while it was being written).
            (422, "checksum_mismatch") if restarts == 0 => {
                restarts += 1;
                *received = 0;
            }
            _ => return Err(a.refused()),
        }
    }
}

async fn read_part(file: &Path, from: u64, to: u64) -> Result<Vec<u8>, SyncError> {
    let local = local_error(file);
    let mut part = vec![0u8; (to - from) as usize];
    let mut f = tokio::fs::File::open(file).await.map_err(&local)?;
    f.seek(std::io::SeekFrom::Start(from))
        .await
        .map_err(&local)?;
    f.read_exact(&mut part).await.map_err(&local)?;
    Ok(part)
}

async fn send_part(
    client: &Client,
    state: &State,
    mime: &str,
    offset: u64,
    part: Vec<u8>,
) -> Result<Answer, SyncError> {
    client
        .send("upload-binary", || {
            let form = reqwest::multipart::Form::new()
                .text("image_uuid", state.image_uuid.clone())
                .text("offset", offset.to_string())
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(part.clone())
                        .file_name("part")
                        .mime_str(mime)
                        .map_err(|e| SyncError::Local(e.to_string()))?,
                );
            Ok(client
                .http
                .post(client.url("upload-binary/"))
                .multipart(form))
        })
        .await
}

/// 3. The acknowledgement, checked: the server confirms it holds these very bytes.
async fn acknowledge(
    client: &Client,
    file: &Path,
    state: &State,
    mime: &str,
) -> Result<(), SyncError> {
    let a = client
        .send("acknowledge", || {
            Ok(client
                .http
                .post(client.url("acknowledge/"))
                .json(&json!({ "image_uuid": state.image_uuid })))
        })
        .await?;
    if a.status != 200 || a.body.get("acknowledged") != Some(&Value::Bool(true)) {
        return Err(a.refused());
    }
    if a.body.get("sha256").and_then(Value::as_str) != Some(state.checksum.as_str())
        && mime == "application/dicom"
    {
        return Err(SyncError::Local(format!(
            "{}: the server acknowledged other bytes; keeping the file",
            file.display()
        )));
    }
    Ok(())
}

/// Then, and only then, the local copy (with its sidecar and state) goes.
fn delete_local(file: &Path, state_path: &Path) -> Result<(), SyncError> {
    std::fs::remove_file(file).map_err(local_error(file))?;
    let _ = std::fs::remove_file(with_suffix(file, META_SUFFIX));
    let _ = std::fs::remove_file(state_path);
    if let Some(dir) = file.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}
