//! Reading values out of a parsed data set: trimmed text, integers, and the case- and
//! accent-folded form of person names that the index matches names by.

use dicom_core::Tag;
use dicom_object::InMemDicomObject;
use unicode_normalization::UnicodeNormalization;

/// Trimmed text of a top-level element, `None` when absent or empty. (`get`, not
/// `element_opt`: the latter builds an error with a captured backtrace for every absent tag.)
pub fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let elem = obj.get(tag)?;
    let s = elem.to_str().ok()?;
    let t = s.trim_matches(|c: char| c == ' ' || c == '\0');
    (!t.is_empty()).then(|| t.to_owned())
}

/// An integer value (binary, or IS/DS text), `None` when absent or not a number.
pub fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    let elem = obj.get(tag)?;
    elem.to_int::<i64>()
        .ok()
        .or_else(|| text(obj, tag)?.parse().ok())
}

/// Case- and accent-insensitive form of a name, for fuzzy matching.
pub fn fold(name: &str) -> String {
    name.nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_case_and_accents() {
        assert_eq!(fold("Müller^JOSÉ"), "muller^jose");
        assert_eq!(fold("Иванов^Иван"), "иванов^иван");
        assert_eq!(fold("山田^太郎"), "山田^太郎");
    }
}
