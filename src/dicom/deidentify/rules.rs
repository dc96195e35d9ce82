//! Looking up a row of Table E.1-1 (`table.rs` says what a row is; `rows_a.rs` and
//! `rows_b.rs` hold them, sorted by tag).

use dicom_core::Tag;

use super::table::Rule;

/// Table E.1-1, sorted by tag, in two halves (`rows_a.rs`, `rows_b.rs`: data only).
fn halves() -> [&'static [Rule]; 2] {
    [super::rows_a::ROWS, super::rows_b::ROWS]
}

/// The row of `tag`, if the table lists it.
pub fn rule(tag: Tag) -> Option<&'static Rule> {
    let [a, b] = halves();
    let rows = if b.first().is_some_and(|r| tag >= r.tag) {
        b
    } else {
        a
    };
    rows.binary_search_by_key(&tag, |r| r.tag)
        .ok()
        .map(|i| &rows[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::deidentify::table::Basic::{XZD, Z};
    use crate::dicom::deidentify::table::Retain;
    use dicom_dictionary_std::tags;

    #[test]
    fn rows_are_sorted_and_unique() {
        let rows: Vec<&Rule> = halves().into_iter().flatten().collect();
        for pair in rows.windows(2) {
            assert!(
                pair[0].tag < pair[1].tag,
                "{} then {}",
                pair[0].tag,
                pair[1].tag
            );
        }
        assert_eq!(rows.len(), 617);
    }

    #[test]
    fn lookups_find_rows_and_only_rows() {
        let name = rule(tags::PATIENT_NAME).map(|r| r.basic);
        assert_eq!(name, Some(Z));
        let station = rule(tags::STATION_NAME).map(|r| (r.basic, r.device));
        assert_eq!(station, Some((XZD, Retain::Keep)));
        let study_date = rule(tags::STUDY_DATE).map(|r| (r.basic, r.dates));
        assert_eq!(study_date, Some((Z, Retain::Keep)));
        assert!(rule(tags::SOP_CLASS_UID).is_none());
        assert!(rule(tags::MODALITY).is_none());
    }

    /// The profile must never touch what identifies a class or an encoding, nor the
    /// attributes of the Image Pixel module (the brief: pixels stay as they are).
    #[test]
    fn class_uids_and_the_pixel_module_are_not_in_the_table() {
        let untouchable = [
            tags::SOP_CLASS_UID,
            tags::REFERENCED_SOP_CLASS_UID,
            tags::MEDIA_STORAGE_SOP_CLASS_UID,
            tags::TRANSFER_SYNTAX_UID,
            tags::SAMPLES_PER_PIXEL,
            tags::PHOTOMETRIC_INTERPRETATION,
            tags::PLANAR_CONFIGURATION,
            tags::ROWS,
            tags::COLUMNS,
            tags::PIXEL_ASPECT_RATIO,
            tags::BITS_ALLOCATED,
            tags::BITS_STORED,
            tags::HIGH_BIT,
            tags::PIXEL_REPRESENTATION,
            tags::SMALLEST_IMAGE_PIXEL_VALUE,
            tags::LARGEST_IMAGE_PIXEL_VALUE,
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            tags::ICC_PROFILE,
            tags::EXTENDED_OFFSET_TABLE,
            tags::PIXEL_DATA,
            tags::FLOAT_PIXEL_DATA,
            tags::DOUBLE_FLOAT_PIXEL_DATA,
        ];
        for tag in untouchable {
            assert!(rule(tag).is_none(), "{tag} is in the table");
        }
    }
}
