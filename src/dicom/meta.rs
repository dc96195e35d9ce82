//! The file meta group (PS3.10 §7.1) this server writes: in front of the data sets C-STORE
//! receives (which arrive without one), and in the objects it makes itself (photos wrapped
//! as Secondary Capture).

use dicom_object::{FileMetaTable, FileMetaTableBuilder};

/// Implementation Class UID of pacs-lite (a UUID-derived UID, PS3.5 §B.2).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.302357268713390145383935512016432473441";
pub const IMPLEMENTATION_VERSION: &str = "PACSLITE_01";

/// The file meta table of an object of `sop_class` / `sop_instance` in transfer syntax `ts`,
/// naming the AE title it came from when known.
pub fn meta_table(
    sop_class: &str,
    sop_instance: &str,
    ts: &str,
    source_ae: Option<&str>,
) -> Result<FileMetaTable, String> {
    let mut builder = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax(ts)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION);
    if let Some(ae) = source_ae {
        builder = builder.source_application_entity_title(ae);
    }
    builder.build().map_err(|e| e.to_string())
}

/// The 128-byte preamble, `DICM` and the file meta group: what goes in front of a data set
/// received over the network to make it a Part-10 object.
pub fn part10_head(
    sop_class: &str,
    sop_instance: &str,
    ts: &str,
    source_ae: &str,
) -> Result<Vec<u8>, String> {
    let meta = meta_table(sop_class, sop_instance, ts, Some(source_ae))?;
    let mut head = vec![0u8; 128];
    head.extend_from_slice(b"DICM");
    meta.write(&mut head).map_err(|e| e.to_string())?;
    Ok(head)
}

/// What goes in front of a stored object that lacks its preamble (`missing` = 128) or
/// its preamble and `DICM` (132) to make it a standard Part-10 file; `None` for 0.
pub fn missing_head(missing: u64) -> Option<Vec<u8>> {
    match missing {
        0 => None,
        128 => Some(vec![0u8; 128]),
        _ => {
            let mut head = vec![0u8; 128];
            head.extend_from_slice(b"DICM");
            Some(head)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_parses_back() {
        let head = part10_head(
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3",
            "1.2.840.10008.1.2",
            "MOD",
        )
        .unwrap();
        assert_eq!(&head[128..132], b"DICM");
        let layout =
            super::super::frames::layout(&mut std::io::Cursor::new(&head), head.len() as u64)
                .unwrap();
        assert_eq!(layout.dataset_start, head.len() as u64);
        assert_eq!(layout.transfer_syntax.as_deref(), Some("1.2.840.10008.1.2"));
    }
}
