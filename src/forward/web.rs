//! A DICOMweb destination: each batch goes in STOW-RS requests (`POST {url}/studies`,
//! `multipart/related; type="application/dicom"`) of at most `batch_bytes` each, every
//! instance as a Part-10 file streamed from the object store with a known length. The
//! response's Referenced SOP Sequence and Failed SOP Sequence (PS3.18 10.5.3) say which
//! instances the service took; the HTTP status says what to do with the rest:
//!
//! - 401, 403, 404, 407, or no connection: the destination is unusable as configured or
//!   unreachable — the batch goes back untried and the worker pauses;
//! - 408, 429, 5xx, a connection lost mid-request: try again later;
//! - any other 4xx: the request was refused; a request of several instances is sent again
//!   one instance at a time, so a refusal fails only the instance it concerns.

use std::time::Duration;

use bytes::Bytes;
use futures::{stream, StreamExt, TryStreamExt};
use reqwest::StatusCode;
use serde_json::Value;

use super::{Batch, Outcome, Payload, Sent};
use crate::config::ForwardDestination;
use crate::dimse::{causes, Status};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the service may stay silent (while we send, or before it answers).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Link {
    http: reqwest::Client,
    studies: String,
    token: Option<String>,
    basic: Option<(String, String)>,
    batch_bytes: u64,
    payload: Payload,
}

/// How one STOW-RS request ended.
enum Posted {
    Each(Vec<Outcome>),
    /// Refused as a whole (a 4xx that names no instance).
    Refused(String),
    Unreachable(String),
}

impl Link {
    pub fn new(dest: &ForwardDestination, payload: Payload) -> Result<Self, String> {
        let url = dest
            .url
            .as_deref()
            .ok_or("a dicomweb destination needs url")?;
        let mut http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("pacs-lite/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &dest.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no certificate in it", ca.display()));
            }
            http = http.tls_built_in_root_certs(false);
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        let basic = dest.basic.as_ref().and_then(|b| {
            let (user, password) = b.expose().split_once(':')?;
            Some((user.to_owned(), password.to_owned()))
        });
        Ok(Link {
            http: http.build().map_err(|e| e.to_string())?,
            studies: format!("{}/studies", url.trim_end_matches('/')),
            token: dest.token.as_ref().map(|t| t.expose().to_owned()),
            basic,
            batch_bytes: dest.batch_bytes,
            payload,
        })
    }

    pub async fn send(&self, batch: &Batch) -> Sent {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
        let mut start = 0;
        while start < batch.len() {
            let mut end = start + 1;
            let mut bytes = batch[start].1.size;
            while end < batch.len() && bytes + batch[end].1.size <= self.batch_bytes {
                bytes += batch[end].1.size;
                end += 1;
            }
            match self.post(&batch[start..end]).await {
                Posted::Each(each) => outcomes.extend(each),
                Posted::Unreachable(why) if start == 0 => return Sent::Unreachable(why),
                Posted::Unreachable(why) => {
                    outcomes.extend((start..batch.len()).map(|_| Outcome::Untried(why.clone())));
                    break;
                }
                Posted::Refused(why) if end - start == 1 => outcomes.push(Outcome::Failed(why)),
                Posted::Refused(why) => {
                    tracing::info!(error = %why, instances = end - start,
                        "a STOW-RS request refused; its instances go one at a time");
                    for one in start..end {
                        outcomes.push(match self.post(&batch[one..one + 1]).await {
                            Posted::Each(mut each) => {
                                each.pop().unwrap_or(Outcome::Retry(why.clone()))
                            }
                            Posted::Refused(why) => Outcome::Failed(why),
                            Posted::Unreachable(why) => Outcome::Untried(why),
                        });
                    }
                }
            }
            start = end;
        }
        Sent::Each(outcomes)
    }

    /// One STOW-RS request with `part`'s instances.
    async fn post(&self, part: &Batch) -> Posted {
        let mut objects = Vec::with_capacity(part.len());
        let mut uids = Vec::with_capacity(part.len());
        for (_, loc) in part {
            match self.payload.part10(loc).await {
                Ok(p) => objects.push(p),
                // Not sent: no other instance waits for this one.
                Err(e) => {
                    return Posted::Each(vec![
                        Outcome::Retry(format!("reading the object: {e}"));
                        part.len()
                    ])
                }
            }
            uids.push(self.payload.instance_uid(loc));
        }
        let boundary = format!("pacs-lite-{}", uuid::Uuid::new_v4().simple());
        let head = format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n");
        let tail = format!("--{boundary}--\r\n");
        let length: u64 = objects
            .iter()
            .map(|o| (head.len() + 2) as u64 + o.len())
            .sum::<u64>()
            + tail.len() as u64;
        let payload = self.payload.clone();
        let head = Bytes::from(head);
        let body = stream::iter(objects)
            .then(move |object| {
                let (payload, head) = (payload.clone(), head.clone());
                async move {
                    let object = payload.open(object).await?;
                    let framed = stream::once(async move { Ok(head) })
                        .chain(object)
                        .chain(stream::once(async { Ok(Bytes::from_static(b"\r\n")) }));
                    Ok::<_, String>(framed)
                }
            })
            .try_flatten()
            .chain(stream::once(async move { Ok(Bytes::from(tail)) }));
        let mut rq = self
            .http
            .post(&self.studies)
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
            )
            .header(reqwest::header::CONTENT_LENGTH, length)
            .header(reqwest::header::ACCEPT, "application/dicom+json")
            .body(reqwest::Body::wrap_stream(body));
        if let Some(token) = &self.token {
            rq = rq.bearer_auth(token);
        } else if let Some((user, password)) = &self.basic {
            rq = rq.basic_auth(user, Some(password));
        }
        let rsp = match rq.send().await {
            Ok(rsp) => rsp,
            Err(e) if e.is_connect() => {
                return Posted::Unreachable(format!(
                    "cannot reach {}: {}",
                    self.studies,
                    causes(&e)
                ))
            }
            Err(e) => {
                let why = format!("STOW-RS to {} failed: {}", self.studies, causes(&e));
                return Posted::Each(vec![Outcome::Retry(why); part.len()]);
            }
        };
        let status = rsp.status();
        let text = rsp.text().await.unwrap_or_default();
        answer(status, &text, &uids, &self.studies)
    }
}

/// What a STOW-RS response says about each instance sent (`uids`, in order).
fn answer(status: StatusCode, body: &str, uids: &[String], url: &str) -> Posted {
    let said = || {
        let snippet: String = body.chars().take(300).collect();
        format!("{url} answered {status}: {}", snippet.trim())
    };
    match status.as_u16() {
        401 | 403 | 404 | 407 => return Posted::Unreachable(said()),
        408 | 429 => return Posted::Each(vec![Outcome::Retry(said()); uids.len()]),
        s if s >= 500 => return Posted::Each(vec![Outcome::Retry(said()); uids.len()]),
        200 | 202 | 409 => {}
        s if (400..500).contains(&s) => return Posted::Refused(said()),
        _ => return Posted::Each(vec![Outcome::Retry(said()); uids.len()]),
    }
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    // A DICOM JSON object, or an array holding one (some servers answer so).
    let json = match &json {
        Value::Array(items) => items.first().unwrap_or(&Value::Null),
        other => other,
    };
    let referenced = items(json, "00081199");
    let failed = items(json, "00081198");
    let each = uids
        .iter()
        .map(|uid| {
            if let Some(item) = failed.iter().find(|i| text(i, "00081155") == Some(uid)) {
                let reason = item
                    .get("00081197")
                    .and_then(|e| e.get("Value"))
                    .and_then(|v| v.get(0))
                    .and_then(Value::as_u64)
                    .map(|c| Status(c as u16));
                return match reason {
                    Some(s) if super::permanent(s) => {
                        Outcome::Failed(format!("refused by {url} with failure reason {s}"))
                    }
                    Some(s) => Outcome::Retry(format!("{url} failed it with reason {s}")),
                    None => Outcome::Retry(format!("{url} failed it without a reason")),
                };
            }
            if referenced.iter().any(|i| text(i, "00081155") == Some(uid)) {
                return Outcome::Delivered;
            }
            if status == StatusCode::OK && failed.is_empty() {
                // Stored, by the status, though the body does not list it.
                return Outcome::Delivered;
            }
            Outcome::Retry(format!("{}; the instance is not in the answer", said()))
        })
        .collect();
    Posted::Each(each)
}

fn items<'a>(json: &'a Value, tag: &str) -> &'a [Value] {
    json.get(tag)
        .and_then(|e| e.get("Value"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn text<'a>(item: &'a Value, tag: &str) -> Option<&'a str> {
    item.get(tag)?.get("Value")?.get(0)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uids() -> Vec<String> {
        vec!["1.2.3".into(), "1.2.4".into(), "1.2.5".into()]
    }

    #[test]
    fn each_instance_as_the_answer_says() {
        let body = r#"{
            "00081199": {"vr": "SQ", "Value": [
                {"00081155": {"vr": "UI", "Value": ["1.2.3"]}}]},
            "00081198": {"vr": "SQ", "Value": [
                {"00081155": {"vr": "UI", "Value": ["1.2.4"]}, "00081197": {"vr": "US", "Value": [290]}},
                {"00081155": {"vr": "UI", "Value": ["1.2.5"]}, "00081197": {"vr": "US", "Value": [42752]}}]}
        }"#;
        let Posted::Each(each) = answer(StatusCode::ACCEPTED, body, &uids(), "u") else {
            panic!("not per instance");
        };
        assert_eq!(each[0], Outcome::Delivered);
        assert!(
            matches!(&each[1], Outcome::Failed(w) if w.contains("0x0122")),
            "{each:?}"
        );
        assert!(
            matches!(&each[2], Outcome::Retry(w) if w.contains("0xA700")),
            "{each:?}"
        );
    }

    #[test]
    fn statuses_that_say_it_all() {
        assert!(
            matches!(answer(StatusCode::OK, "", &uids(), "u"), Posted::Each(e) if e.iter().all(|o| *o == Outcome::Delivered))
        );
        assert!(matches!(
            answer(StatusCode::UNAUTHORIZED, "", &uids(), "u"),
            Posted::Unreachable(_)
        ));
        assert!(
            matches!(answer(StatusCode::SERVICE_UNAVAILABLE, "", &uids(), "u"), Posted::Each(e) if matches!(e[0], Outcome::Retry(_)))
        );
        assert!(
            matches!(answer(StatusCode::TOO_MANY_REQUESTS, "", &uids(), "u"), Posted::Each(e) if matches!(e[0], Outcome::Retry(_)))
        );
        assert!(
            matches!(answer(StatusCode::BAD_REQUEST, "bad", &uids(), "u"), Posted::Refused(w) if w.contains("bad"))
        );
        // A 409 naming nothing: not known to be stored, tried again.
        assert!(
            matches!(answer(StatusCode::CONFLICT, "{}", &uids(), "u"), Posted::Each(e) if matches!(e[0], Outcome::Retry(_)))
        );
    }
}
