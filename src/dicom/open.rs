//! Opening objects with dicom-object, tolerating what ingest tolerates: no preamble, no
//! `DICM`, no or a wrong meta group length. dicom-object wants `DICM` and a correct group
//! length first, so the parser is handed a marker and a group length computed by the
//! walker, then the meta elements and the data set as they are stored (the stored bytes are
//! never changed).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::OpenFileOptions;

use super::frames::{self, Layout};

/// A parsed object: its file meta group and data set.
pub type DicomFile = dicom_object::DefaultDicomObject;

/// The header up to Pixel Data (ingest: pixel data is located by the walker, not read),
/// from a source that buffers already (dicom-object reads through a buffer of its own as
/// well: a third one would only copy the bytes once more).
pub(super) fn open_header<R: Read + Seek>(source: R, layout: &Layout) -> Result<DicomFile, String> {
    open_with_layout(source, layout, true)
}

/// A whole object from a file (rendering, transcoding, non-pixel bulk data, the `sync`
/// client reading its queue).
pub fn open_file(path: &Path) -> Result<DicomFile, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let mut reader = BufReader::new(File::open(path).map_err(|e| e.to_string())?);
    let layout = frames::layout(&mut reader, len).map_err(|e| e.to_string())?;
    let file = File::open(path).map_err(|e| e.to_string())?;
    open_with_layout(BufReader::with_capacity(64 * 1024, file), &layout, false)
}

fn open_with_layout<R: Read + Seek>(
    mut file: R,
    layout: &Layout,
    header_only: bool,
) -> Result<DicomFile, String> {
    file.seek(SeekFrom::Start(layout.meta_body_start))
        .map_err(|e| e.to_string())?;
    let group_length =
        u32::try_from(layout.dataset_start - layout.meta_body_start).map_err(|e| e.to_string())?;
    let mut prefix = Vec::with_capacity(16);
    prefix.extend_from_slice(b"DICM\x02\x00\x00\x00UL\x04\x00");
    prefix.extend_from_slice(&group_length.to_le_bytes());
    let reader = std::io::Cursor::new(prefix).chain(file);
    let options = if header_only {
        OpenFileOptions::new().read_until(tags::PIXEL_DATA)
    } else {
        OpenFileOptions::new()
    };
    options
        .read_preamble(ReadPreamble::Never)
        .from_reader(reader)
        .map_err(|e| e.to_string())
}
