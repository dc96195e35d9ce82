//! Pushing stored instances to a peer with C-STORE, on an association we opened or on the
//! requester's own (C-GET): C-MOVE and C-GET sub-operations and the forwarding outbox
//! (`forward/`) share it. An instance goes as stored when the peer accepted its transfer
//! syntax (streamed from the object store, byte for byte), otherwise transcoded to Explicit
//! or Implicit VR Little Endian when the peer accepted one of those.

use std::collections::BTreeMap;

use bytes::BytesMut;
use futures::StreamExt;

use super::command::{self, field};
use super::link::{DataSet, Writer};
use super::scu::Proposal;
use super::status::Status;
use super::PresentationContext;
use crate::index::read::InstanceLocation;
use crate::model::TransferSyntax;
use crate::render::transcode::{can_transcode, preference, transcode_file};
use crate::storage::Store;

/// How one C-STORE ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    Stored,
    Warning(Status),
    /// The peer answered with a failure status.
    Refused(Status),
    /// No accepted presentation context fits the instance.
    NoContext,
    /// The stored object could not be read.
    Unreadable(String),
    /// The association broke or timed out: whether the peer has it is unknown.
    Broken(String),
}

/// Contexts to propose to a move destination: each SOP class in each stored transfer
/// syntax, plus each SOP class in the uncompressed syntaxes everything transcodes to.
pub fn proposals(instances: &[InstanceLocation]) -> Vec<Proposal> {
    let mut by_class: BTreeMap<&str, Vec<&TransferSyntax>> = BTreeMap::new();
    for i in instances {
        let list = by_class.entry(i.sop_class_uid.as_str()).or_default();
        if !list.contains(&&i.transfer_syntax) {
            list.push(&i.transfer_syntax);
        }
    }
    let uncompressed = vec![
        TransferSyntax::EXPLICIT_VR_LE.to_owned(),
        TransferSyntax::IMPLICIT_VR_LE.to_owned(),
    ];
    let mut out = Vec::new();
    for (class, syntaxes) in by_class {
        for ts in syntaxes.into_iter().filter(|ts| !ts.is_native_le()) {
            out.push(Proposal {
                abstract_syntax: class.to_owned(),
                transfer_syntaxes: vec![ts.to_string()],
            });
        }
        out.push(Proposal {
            abstract_syntax: class.to_owned(),
            transfer_syntaxes: uncompressed.clone(),
        });
    }
    // Presentation context IDs are odd numbers below 256.
    out.truncate(128);
    out
}

/// Send one instance with C-STORE on `writer`, choosing among `contexts`; `originator`
/// (AE title, message ID) names the C-MOVE that asked for it.
pub async fn c_store(
    writer: &Writer,
    contexts: &[PresentationContext],
    store: &Store,
    loc: &InstanceLocation,
    originator: Option<(&str, u16)>,
) -> Pushed {
    let Some(context) = context_for(contexts, loc) else {
        return Pushed::NoContext;
    };
    let data = match data_set(store, loc, &context.transfer_syntax).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(sop = %loc.sop_instance_uid, error = %e, "cannot read a stored instance");
            return Pushed::Unreadable(e);
        }
    };
    let uids = (loc.sop_class_uid.as_str(), loc.sop_instance_uid.as_str());
    send(writer, context, uids, data, originator).await
}

/// The accepted presentation context an instance goes in: its stored transfer syntax, or
/// one it can be transcoded to; `None` when the peer accepted neither.
pub fn context_for<'a>(
    contexts: &'a [PresentationContext],
    loc: &InstanceLocation,
) -> Option<&'a PresentationContext> {
    let for_class = || {
        contexts
            .iter()
            .filter(|c| c.abstract_syntax == loc.sop_class_uid.as_str())
    };
    let context = for_class()
        .find(|c| c.transfer_syntax == loc.transfer_syntax)
        .or_else(|| {
            for_class()
                .filter(|c| can_transcode(&loc.transfer_syntax, &c.transfer_syntax))
                .min_by_key(|c| preference(&c.transfer_syntax))
        });
    if context.is_none() {
        tracing::info!(sop = %loc.sop_instance_uid, class = %loc.sop_class_uid,
            ts = %loc.transfer_syntax, "no accepted presentation context for a C-STORE");
    }
    context
}

/// Send `data`, the data set of SOP instance `uids` (class, instance), with C-STORE in
/// `context`, and wait for the answer.
pub async fn send(
    writer: &Writer,
    context: &PresentationContext,
    uids: (&str, &str),
    data: DataSet,
    originator: Option<(&str, u16)>,
) -> Pushed {
    let id = writer.next_message_id();
    let (class, instance) = uids;
    let rq = command::store_request(id, class, instance, originator);
    match writer.request(context.id, id, &rq, Some(data)).await {
        Ok(rsp) if rsp.field == field::C_STORE_RSP => match rsp.status {
            Some(s) if s.is_success() => Pushed::Stored,
            Some(s) if s.is_warning() => Pushed::Warning(s),
            Some(s) => {
                tracing::info!(sop = instance, status = %s, "C-STORE refused");
                Pushed::Refused(s)
            }
            None => Pushed::Broken("a C-STORE response without a status".into()),
        },
        Ok(_) => Pushed::Broken("an unexpected response to a C-STORE".into()),
        Err(e) => {
            tracing::info!(sop = instance, error = %e, "C-STORE failed");
            Pushed::Broken(e.to_string())
        }
    }
}

/// Objects up to this size are read whole, in one go; larger ones are streamed.
const WHOLE: u64 = 256 * 1024;

/// The data set of a stored instance in transfer syntax `ts`: streamed from the store when
/// that is how it is stored, transcoded in memory otherwise.
pub async fn data_set(
    store: &Store,
    loc: &InstanceLocation,
    ts: &TransferSyntax,
) -> Result<DataSet, String> {
    let key = &loc.object_key;
    if *ts == loc.transfer_syntax && loc.size <= WHOLE {
        // Small: one read, and the data set is a slice of it.
        let whole = store
            .read_range(key, 0..loc.size)
            .await
            .map_err(|e| e.to_string())?;
        let layout = crate::dicom::frames::layout(&mut std::io::Cursor::new(&whole[..]), loc.size)
            .map_err(|e| e.to_string())?;
        return Ok(DataSet::Bytes(
            whole[layout.dataset_start as usize..].to_vec(),
        ));
    }
    if *ts == loc.transfer_syntax {
        // One read of the object: its first bytes say where the data set starts, the rest
        // follows as it comes.
        let mut stream = store
            .stream(key, None)
            .await
            .map_err(|e| e.to_string())?
            .map(|r| r.map_err(|e| e.to_string()));
        let head_len = loc.size.min(64 * 1024) as usize;
        let mut head = BytesMut::new();
        while head.len() < head_len {
            match stream.next().await {
                Some(chunk) => head.extend_from_slice(&chunk?),
                None => break,
            }
        }
        let layout =
            crate::dicom::frames::layout(&mut std::io::Cursor::new(&head[..]), head.len() as u64)
                .map_err(|e| e.to_string())?;
        let start = (layout.dataset_start as usize).min(head.len());
        let first = head.split_off(start).freeze();
        let stream = futures::stream::once(async move { Ok(first) })
            .chain(stream)
            .boxed();
        return Ok(DataSet::Stream(stream));
    }
    let to = ts.clone();
    let part10 = store
        .with_local_file(key, move |path| transcode_file(path, &to))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let layout =
        crate::dicom::frames::layout(&mut std::io::Cursor::new(&part10[..]), part10.len() as u64)
            .map_err(|e| e.to_string())?;
    Ok(DataSet::Bytes(
        part10[layout.dataset_start as usize..].to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Uid;

    const EXPLICIT_VR_LE: &str = TransferSyntax::EXPLICIT_VR_LE;
    const IMPLICIT_VR_LE: &str = TransferSyntax::IMPLICIT_VR_LE;

    fn loc(class: &str, ts: &str) -> InstanceLocation {
        let uid = |s: &str| Uid::parse(s).unwrap();
        let digest = crate::model::Sha256::of(b"");
        InstanceLocation {
            study_uid: uid("1.2"),
            series_uid: uid("1.2.3"),
            sop_instance_uid: uid("1.2.3.4"),
            sop_class_uid: uid(class),
            transfer_syntax: TransferSyntax::parse(ts).unwrap(),
            object_key: crate::model::ObjectKey::new(&uid("1.2"), &digest),
            size: 0,
            part10_prefix: 0,
            sha256: digest,
            number_of_frames: 1,
            frame_table: None,
        }
    }

    #[test]
    fn proposals_offer_stored_and_uncompressed_syntaxes() {
        let ct = "1.2.840.10008.5.1.4.1.1.2";
        let p = proposals(&[
            loc(ct, EXPLICIT_VR_LE),
            loc(ct, "1.2.840.10008.1.2.4.90"),
            loc(ct, "1.2.840.10008.1.2.4.90"),
        ]);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].transfer_syntaxes, vec!["1.2.840.10008.1.2.4.90"]);
        assert_eq!(p[1].transfer_syntaxes, vec![EXPLICIT_VR_LE, IMPLICIT_VR_LE]);
    }
}
