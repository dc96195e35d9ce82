//! What goes out for an instance: its stored bytes (streamed, transcoded only when the peer
//! needs another transfer syntax), or, for a destination whose rules de-identify, a copy
//! de-identified in memory (PS3.15 Annex E, `dicom::deidentify`) with UIDs mapped under
//! `forward.deidentify_key` and the destination's name, so the same source UID always
//! becomes the same new one there. Either way at the destination's pace
//! (`max_bytes_per_sec`). The stored object is never changed.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::Throttle;
use crate::config::{DeidentifyOption, ForwardDestination};
use crate::context::Context;
use crate::dicom::deidentify::{self, Profile};
use crate::dimse::push;
use crate::dimse::DataSet;
use crate::index::read::InstanceLocation;
use crate::model::TransferSyntax;

/// A destination's way of turning stored instances into what it receives.
#[derive(Clone)]
pub struct Payload {
    ctx: Arc<Context>,
    deidentify: Option<Arc<Deidentify>>,
    throttle: Throttle,
}

/// The settings of de-identification for one destination.
struct Deidentify {
    key: Vec<u8>,
    scope: String,
    retain_dates: bool,
    retain_device: bool,
}

impl Deidentify {
    fn profile(&self) -> Profile<'_> {
        Profile {
            key: &self.key,
            scope: &self.scope,
            retain_dates: self.retain_dates,
            retain_device: self.retain_device,
        }
    }
}

/// A Part-10 object to send: where its bytes come from.
pub enum Part10 {
    Stored(InstanceLocation),
    Bytes(Bytes),
}

impl Part10 {
    pub fn len(&self) -> u64 {
        match self {
            Part10::Stored(loc) => loc.size,
            Part10::Bytes(b) => b.len() as u64,
        }
    }
}

/// A stream of an object's bytes.
pub type Chunks = BoxStream<'static, Result<Bytes, String>>;

impl Payload {
    pub fn new(ctx: &Arc<Context>, dest: &ForwardDestination) -> Self {
        let forward = &ctx.config.forward;
        let deidentify = forward.deidentification(&dest.name).map(|d| {
            Arc::new(Deidentify {
                key: forward
                    .deidentify_key
                    .as_ref()
                    .map(|k| k.expose().as_bytes().to_vec())
                    .unwrap_or_default(),
                scope: dest.name.clone(),
                retain_dates: d
                    .options
                    .contains(&DeidentifyOption::RetainLongitudinalDates),
                retain_device: d.options.contains(&DeidentifyOption::RetainDeviceIdentity),
            })
        });
        Payload {
            ctx: ctx.clone(),
            deidentify,
            throttle: Throttle::new(dest.max_bytes_per_sec),
        }
    }

    /// DIMSE: the data set in transfer syntax `ts`, and the SOP Instance UID it carries.
    pub async fn data_set(
        &self,
        loc: &InstanceLocation,
        ts: &TransferSyntax,
    ) -> Result<(DataSet, String), String> {
        if self.deidentify.is_none() {
            let data = push::data_set(self.ctx.store(), loc, ts).await?;
            let data = match data {
                DataSet::Stream(s) => DataSet::Stream(self.throttle.stream(s)),
                DataSet::Bytes(b) if self.throttle.is_limited() => {
                    DataSet::Stream(self.throttle.bytes(Bytes::from(b)))
                }
                bytes => bytes,
            };
            return Ok((data, loc.sop_instance_uid.to_string()));
        }
        let (part10, instance) = self.deidentified(loc, Some(ts.clone())).await?;
        let layout = crate::dicom::frames::layout(
            &mut std::io::Cursor::new(&part10[..]),
            part10.len() as u64,
        )
        .map_err(|e| e.to_string())?;
        let data = part10.slice(layout.dataset_start as usize..);
        let data = if self.throttle.is_limited() {
            DataSet::Stream(self.throttle.bytes(data))
        } else {
            DataSet::Bytes(data.to_vec())
        };
        Ok((data, instance))
    }

    /// The SOP Instance UID the destination knows the instance by.
    pub fn instance_uid(&self, loc: &InstanceLocation) -> String {
        match &self.deidentify {
            Some(d) => deidentify::map_uid(&d.profile(), loc.sop_instance_uid.as_str()),
            None => loc.sop_instance_uid.to_string(),
        }
    }

    /// STOW-RS: the object as a Part-10 file, as stored (read when `open` streams it), or
    /// de-identified (in memory now).
    pub async fn part10(&self, loc: &InstanceLocation) -> Result<Part10, String> {
        if self.deidentify.is_none() {
            return Ok(Part10::Stored(loc.clone()));
        }
        let (part10, _) = self.deidentified(loc, None).await?;
        Ok(Part10::Bytes(part10))
    }

    /// The bytes of a Part-10 object, at the destination's pace.
    pub async fn open(&self, part: Part10) -> Result<Chunks, String> {
        match part {
            Part10::Stored(loc) => {
                let stream = self
                    .ctx
                    .store()
                    .stream(&loc.object_key, None)
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
                    .boxed();
                Ok(self.throttle.stream(stream))
            }
            Part10::Bytes(b) => Ok(self.throttle.bytes(b)),
        }
    }

    /// The de-identified Part-10 object (in `ts`, or as stored) and its new SOP Instance
    /// UID.
    async fn deidentified(
        &self,
        loc: &InstanceLocation,
        ts: Option<TransferSyntax>,
    ) -> Result<(Bytes, String), String> {
        let Some(deid) = self.deidentify.clone() else {
            return Err("not a de-identifying destination".into());
        };
        self.ctx
            .store()
            .with_local_file(&loc.object_key, move |path| {
                let mut obj = crate::dicom::open_file(path)?;
                if let Some(ts) = &ts {
                    crate::render::transcode::transcode(&mut obj, ts).map_err(|e| e.to_string())?;
                }
                deidentify::deidentify(&mut obj, &deid.profile()).map_err(|e| e.to_string())?;
                let instance = obj
                    .meta()
                    .media_storage_sop_instance_uid()
                    .trim_end_matches(['\0', ' '])
                    .to_owned();
                let mut out = Vec::new();
                obj.write_all(&mut out).map_err(|e| e.to_string())?;
                Ok((Bytes::from(out), instance))
            })
            .await
            .map_err(|e| e.to_string())?
    }
}
