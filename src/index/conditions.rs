//! Query keys as SQL: the column each attribute is indexed in, the condition each kind of
//! match becomes (on both backends), and the order a study search walks in.

use dicom_core::Tag;
use dicom_dictionary_std::tags;

use crate::dicom::fold_name;
use crate::model::query::{Filter, Level, Matcher};

/// How a column compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    /// A person name, stored case- and accent-folded.
    Name,
    Int,
    /// A backslash-separated set of values (ModalitiesInStudy, SOPClassesInStudy).
    Set,
}

/// The column that holds an attribute at a query level, if any.
fn column(level: Level, tag: Tag) -> Option<(&'static str, Kind)> {
    let study_level = level == Level::Study;
    Some(match tag {
        tags::PATIENT_NAME => ("st.patient_name_key", Kind::Name),
        tags::PATIENT_ID => ("st.patient_id", Kind::Text),
        tags::PATIENT_BIRTH_DATE => ("st.patient_birth_date", Kind::Text),
        tags::PATIENT_SEX => ("st.patient_sex", Kind::Text),
        tags::STUDY_DATE => ("st.study_date", Kind::Text),
        tags::STUDY_TIME => ("st.study_time", Kind::Text),
        tags::ACCESSION_NUMBER => ("st.accession_number", Kind::Text),
        tags::STUDY_ID => ("st.study_id", Kind::Text),
        tags::STUDY_DESCRIPTION => ("st.study_description", Kind::Text),
        tags::REFERRING_PHYSICIAN_NAME => ("st.referring_physician_key", Kind::Name),
        tags::STUDY_INSTANCE_UID => ("st.study_uid", Kind::Text),
        tags::MODALITIES_IN_STUDY => ("st.modalities", Kind::Set),
        tags::SOP_CLASSES_IN_STUDY => ("st.sop_classes", Kind::Set),
        tags::MODALITY if study_level => ("st.modalities", Kind::Set),
        tags::SOP_CLASS_UID if study_level => ("st.sop_classes", Kind::Set),
        _ if study_level => return None,
        tags::MODALITY => ("se.modality", Kind::Text),
        tags::SERIES_INSTANCE_UID => ("se.series_uid", Kind::Text),
        tags::SERIES_NUMBER => ("se.series_number", Kind::Int),
        tags::SERIES_DESCRIPTION => ("se.series_description", Kind::Text),
        tags::BODY_PART_EXAMINED => ("se.body_part_examined", Kind::Text),
        tags::PERFORMED_PROCEDURE_STEP_START_DATE => ("se.performed_start_date", Kind::Text),
        tags::PERFORMED_PROCEDURE_STEP_START_TIME => ("se.performed_start_time", Kind::Text),
        _ if level == Level::Series => return None,
        tags::SOP_CLASS_UID => ("i.sop_class_uid", Kind::Text),
        tags::SOP_INSTANCE_UID => ("i.sop_instance_uid", Kind::Text),
        tags::INSTANCE_NUMBER => ("i.instance_number", Kind::Int),
        tags::NUMBER_OF_FRAMES => ("i.number_of_frames", Kind::Int),
        _ => return None,
    })
}

pub(super) enum Arg {
    Text(String),
    Int(i64),
}

/// SQL text with its arguments, numbered `$1…` for both backends.
#[derive(Default)]
pub(super) struct Sql {
    pub(super) text: String,
    pub(super) args: Vec<Arg>,
}

impl Sql {
    pub(super) fn arg(&mut self, a: Arg) -> String {
        self.args.push(a);
        format!("${}", self.args.len())
    }

    pub(super) fn text(&mut self, v: &str) -> String {
        self.arg(Arg::Text(v.to_owned()))
    }
}

/// Escape a literal for `LIKE … ESCAPE '!'`.
fn like_literal(s: &str) -> String {
    s.replace('!', "!!").replace('%', "!%").replace('_', "!_")
}

/// A DICOM wildcard pattern as a LIKE pattern.
pub(super) fn like_pattern(p: &str) -> String {
    like_literal(p).replace('*', "%").replace('?', "_")
}

/// Add the WHERE clause for one filter; false when it must be matched in memory.
pub(super) fn push_condition(sql: &mut Sql, level: Level, f: &Filter, fuzzy: bool) -> bool {
    if f.key.is_nested() {
        return false;
    }
    let Some((col, kind)) = column(level, f.key.tag()) else {
        return false;
    };
    let cond = match (kind, &f.matcher) {
        (_, Matcher::Universal) => return true,
        (Kind::Name, Matcher::Exact(v)) if fuzzy => fuzzy_condition(sql, col, v),
        (Kind::Name, Matcher::Wildcard(v)) if fuzzy => fuzzy_condition(sql, col, v),
        (Kind::Name, Matcher::Exact(v)) => format!("{col} = {}", sql.text(&fold_name(v))),
        (Kind::Name, Matcher::Wildcard(p)) => wildcard_condition(sql, col, &fold_name(p)),
        (Kind::Text, Matcher::Exact(v)) => format!("{col} = {}", sql.text(v)),
        (Kind::Text, Matcher::Wildcard(p)) => wildcard_condition(sql, col, p),
        (Kind::Text, Matcher::UidList(list)) => {
            let args: Vec<String> = list.iter().map(|u| sql.text(u.as_str())).collect();
            format!("{col} IN ({})", args.join(", "))
        }
        (Kind::Text, Matcher::Range(range)) => {
            let mut parts = Vec::new();
            if let Some(from) = range.lower() {
                parts.push(format!("{col} >= {}", sql.text(from)));
            }
            if let Some(to) = range.upper() {
                parts.push(format!("{col} <= {}", sql.text(&to)));
            }
            parts.join(" AND ")
        }
        (Kind::Int, Matcher::Exact(v)) => match v.trim().parse::<i64>() {
            Ok(n) => format!("{col} = {}", sql.arg(Arg::Int(n))),
            Err(_) => "1 = 0".to_owned(),
        },
        (Kind::Set, Matcher::Exact(v)) => set_condition(sql, col, &[like_literal(v)]),
        (Kind::Set, Matcher::Wildcard(p)) => set_condition(sql, col, &[like_pattern(p)]),
        (Kind::Set, Matcher::UidList(list)) => {
            let items: Vec<String> = list.iter().map(|u| like_literal(u.as_str())).collect();
            set_condition(sql, col, &items)
        }
        _ => return false,
    };
    sql.text.push_str(" AND (");
    sql.text.push_str(&cond);
    sql.text.push(')');
    true
}

/// A wildcard match; its literal prefix, if any, also as a range of the column, which an
/// index walks whatever the pattern (PostgreSQL's generic plans cannot see a bound LIKE
/// pattern's prefix). Both backends compare text bytewise, which for UTF-8 is code point
/// order, so the range holds exactly the values starting with the prefix.
fn wildcard_condition(sql: &mut Sql, col: &str, pattern: &str) -> String {
    let like = format!("{col} LIKE {} ESCAPE '!'", sql.text(&like_pattern(pattern)));
    let prefix = &pattern[..pattern.find(['*', '?']).unwrap_or(pattern.len())];
    match prefix_end(prefix) {
        Some(end) => {
            let (from, to) = (sql.text(prefix), sql.text(&end));
            format!("{col} >= {from} AND {col} < {to} AND {like}")
        }
        None => like,
    }
}

/// The least string above every string that starts with `prefix`: its last character
/// incremented. None for an empty prefix (or one ending in the last code point).
fn prefix_end(prefix: &str) -> Option<String> {
    let last = prefix.chars().next_back()?;
    let next = match last as u32 + 1 {
        0xD800 => '\u{E000}',
        n => char::from_u32(n)?,
    };
    Some(format!(
        "{}{next}",
        &prefix[..prefix.len() - last.len_utf8()]
    ))
}

/// A value in a backslash-separated set column.
fn set_condition(sql: &mut Sql, col: &str, patterns: &[String]) -> String {
    let parts: Vec<String> = patterns
        .iter()
        .map(|p| {
            format!(
                "('\\' || {col} || '\\') LIKE {} ESCAPE '!'",
                sql.text(&format!("%\\{p}\\%"))
            )
        })
        .collect();
    parts.join(" OR ")
}

/// Fuzzy person-name matching: every word of the query (split on `^`, `=`, spaces and
/// commas) must begin some component of the name, ignoring case and accents.
fn fuzzy_condition(sql: &mut Sql, col: &str, value: &str) -> String {
    let folded = fold_name(value);
    let words: Vec<&str> = folded
        .split(['^', '=', ' ', ','])
        .map(|w| w.trim_matches('*'))
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return "1 = 1".to_owned();
    }
    let mut all = Vec::new();
    for w in words {
        let w = like_pattern(w);
        let starts = sql.text(&format!("{w}%"));
        let after: Vec<String> = ['^', '=', ' ']
            .iter()
            .map(|sep| format!("{col} LIKE {} ESCAPE '!'", sql.text(&format!("%{sep}{w}%"))))
            .collect();
        all.push(format!(
            "({col} LIKE {starts} ESCAPE '!' OR {})",
            after.join(" OR ")
        ));
    }
    all.join(" AND ")
}

/// The order of study results: that of the index a broad filter walks, so that a limit stops
/// the walk (a month of StudyDate or a short name prefix may match a large share of the
/// index; sorting all of it by insertion order for one page would grow with the index).
/// Narrow look-ups (patient ID, accession number, study UID) and unfiltered lists keep
/// insertion order. Every order ends in the row id, so paging is stable.
pub(super) fn study_order(filters: &[Filter], fuzzy: bool) -> &'static str {
    let narrow = [
        tags::PATIENT_ID,
        tags::ACCESSION_NUMBER,
        tags::STUDY_INSTANCE_UID,
    ];
    let on = |tag: Tag| {
        filters
            .iter()
            .find(|f| !f.key.is_nested() && f.key.tag() == tag)
    };
    let exact = |f: &&Filter| matches!(f.matcher, Matcher::Exact(_) | Matcher::UidList(_));
    if narrow.into_iter().any(|t| on(t).is_some_and(|f| exact(&f))) {
        return " ORDER BY st.id";
    }
    if on(tags::STUDY_DATE)
        .is_some_and(|f| matches!(f.matcher, Matcher::Range(_) | Matcher::Exact(_)))
    {
        return " ORDER BY st.study_date, st.study_time, st.id";
    }
    let name_prefix = |f: &Filter| match &f.matcher {
        Matcher::Exact(_) => true,
        Matcher::Wildcard(p) => !p.starts_with(['*', '?']),
        _ => false,
    };
    if !fuzzy && on(tags::PATIENT_NAME).is_some_and(name_prefix) {
        return " ORDER BY st.patient_name_key, st.id";
    }
    " ORDER BY st.id"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_for_columns() {
        let mut sql = Sql::default();
        assert!(push_condition(
            &mut sql,
            Level::Study,
            &Filter::of("PatientID", "P_1%"),
            false
        ));
        assert!(sql.text.contains("st.patient_id = $1"));
        assert!(push_condition(
            &mut sql,
            Level::Study,
            &Filter::of("PatientName", "Mü*"),
            false
        ));
        assert!(matches!(&sql.args[1], Arg::Text(p) if p == "mu%"));
        assert!(matches!(&sql.args[3], Arg::Text(p) if p == "mv"));
        assert!(push_condition(
            &mut sql,
            Level::Study,
            &Filter::of("Modality", "CT"),
            false
        ));
        assert!(matches!(&sql.args[4], Arg::Text(p) if p == "%\\CT\\%"));
        assert!(!push_condition(
            &mut sql,
            Level::Study,
            &Filter::of("SeriesDescription", "x"),
            false
        ));
        assert!(push_condition(
            &mut sql,
            Level::Series,
            &Filter::of("SeriesDescription", "x_*"),
            false
        ));
        assert!(matches!(&sql.args[5], Arg::Text(p) if p == "x!_%"));
        assert!(!push_condition(
            &mut sql,
            Level::Series,
            &Filter::of("RequestAttributesSequence.RequestedProcedureID", "1"),
            false
        ));
    }
    #[test]
    fn wildcard_prefixes_become_ranges() {
        assert_eq!(prefix_end("name0").as_deref(), Some("name1"));
        assert_eq!(prefix_end("müz").as_deref(), Some("mü{"));
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        let mut sql = Sql::default();
        let cond = wildcard_condition(&mut sql, "c", "ab?d*");
        assert_eq!(cond, "c >= $2 AND c < $3 AND c LIKE $1 ESCAPE '!'");
        assert!(matches!(&sql.args[1], Arg::Text(p) if p == "ab"));
        assert!(matches!(&sql.args[2], Arg::Text(p) if p == "ac"));
        let mut sql = Sql::default();
        assert_eq!(
            wildcard_condition(&mut sql, "c", "*x"),
            "c LIKE $1 ESCAPE '!'"
        );
    }
    #[test]
    fn broad_study_filters_order_by_their_index() {
        let order = |fs: &[(&str, &str)]| {
            let fs: Vec<Filter> = fs.iter().map(|(k, v)| Filter::of(k, v)).collect();
            study_order(&fs, false)
        };
        assert!(order(&[("StudyDate", "20240101-20240131")]).contains("study_date"));
        assert!(order(&[("PatientName", "D*")]).contains("patient_name_key"));
        assert_eq!(order(&[("PatientName", "*D")]), " ORDER BY st.id");
        assert_eq!(
            order(&[("PatientID", "P1"), ("StudyDate", "20240101")]),
            " ORDER BY st.id"
        );
        assert_eq!(order(&[]), " ORDER BY st.id");
    }
}
