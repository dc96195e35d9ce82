//! Searching the index: one SQL statement per QIDO-RS or C-FIND request.
//!
//! Query keys with a column (patient, study, series and instance attributes that are
//! indexed) become WHERE clauses; any other key is matched in memory against the JSON the
//! index keeps for that level, in which case paging is done after that filtering. Either
//! way no object is read.

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use serde_json::{json, Map, Value as Json};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::conditions::{push_condition, study_order, Arg, Sql};
use super::{Index, IndexError};
use crate::dicom::fold_name;
use crate::model::query::{wildcard_match, Filter, Level, Matcher};
use crate::model::Uid;

/// A search: level, the UIDs of the URL path, query keys, paging.
#[derive(Debug, Clone)]
pub struct Query {
    pub level: Level,
    pub study_uid: Option<Uid>,
    pub series_uid: Option<Uid>,
    pub filters: Vec<Filter>,
    pub fuzzy: bool,
    pub offset: usize,
    pub limit: usize,
    /// Load each instance's full metadata (for `includefield` beyond the defaults).
    pub full_instance_json: bool,
}

/// One result: the attributes of its level (with computed attributes) and, for
/// `includefield`, the attributes of the levels above it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub study_uid: String,
    pub series_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    pub attrs: Map<String, Json>,
    pub context: Map<String, Json>,
}

/// Results and whether more matched than were returned.
#[derive(Debug, Default)]
pub struct Found {
    pub hits: Vec<Hit>,
    pub more: bool,
}

const STUDY_SELECT: &str = "SELECT st.study_uid, st.attrs_json AS study_json, st.modalities, \
     st.sop_classes, st.num_series, st.num_instances FROM studies st WHERE 1 = 1";
const SERIES_SELECT: &str = "SELECT st.study_uid, se.series_uid, se.attrs_json AS series_json, \
     se.num_instances, st.attrs_json AS study_json \
     FROM series se JOIN studies st ON st.id = se.study_pk WHERE 1 = 1";

fn instance_select(full: bool) -> String {
    let json = if full {
        "i.metadata_json"
    } else {
        "i.attrs_json"
    };
    format!(
        "SELECT st.study_uid, se.series_uid, i.sop_instance_uid, {json} AS instance_json, \
         se.attrs_json AS series_json, st.attrs_json AS study_json \
         FROM instances i JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = i.study_pk \
         WHERE 1 = 1"
    )
}

impl Index {
    /// Run a search. Results come in a stable order (series and instance numbers, then
    /// insertion order).
    pub async fn search(&self, q: &Query) -> Result<Found, IndexError> {
        let mut sql = Sql::default();
        sql.text.push_str(&match q.level {
            Level::Study => STUDY_SELECT.to_owned(),
            Level::Series => SERIES_SELECT.to_owned(),
            Level::Instance => instance_select(q.full_instance_json),
        });
        if let Some(study) = &q.study_uid {
            let p = sql.text(study.as_str());
            sql.text.push_str(&format!(" AND st.study_uid = {p}"));
        }
        if let (Some(series), true) = (&q.series_uid, q.level == Level::Instance) {
            let p = sql.text(series.as_str());
            sql.text.push_str(&format!(" AND se.series_uid = {p}"));
        }
        let in_memory: Vec<&Filter> = q
            .filters
            .iter()
            .filter(|f| !push_condition(&mut sql, q.level, f, q.fuzzy))
            .collect();
        sql.text.push_str(match q.level {
            Level::Study => study_order(&q.filters, q.fuzzy),
            Level::Series => " ORDER BY st.id, se.series_number, se.id",
            Level::Instance => " ORDER BY se.id, i.instance_number, i.id",
        });
        if in_memory.is_empty() {
            let (limit, offset) = (q.limit as i64 + 1, q.offset as i64);
            let (l, o) = (sql.arg(Arg::Int(limit)), sql.arg(Arg::Int(offset)));
            sql.text.push_str(&format!(" LIMIT {l} OFFSET {o}"));
        }
        let mut query = sqlx::query(&sql.text);
        for a in &sql.args {
            query = match a {
                Arg::Text(s) => query.bind(s.as_str()),
                Arg::Int(n) => query.bind(*n),
            };
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut hits = Vec::with_capacity(rows.len());
        for row in &rows {
            let hit = hit_from_row(q.level, row)?;
            if in_memory.iter().all(|f| filter_matches(f, &hit, q.fuzzy)) {
                hits.push(hit);
            }
        }
        if !in_memory.is_empty() {
            hits = hits.into_iter().skip(q.offset).collect();
        }
        let more = hits.len() > q.limit;
        hits.truncate(q.limit);
        Ok(Found { hits, more })
    }
}

fn parse_obj(text: &str) -> Map<String, Json> {
    match serde_json::from_str(text) {
        Ok(Json::Object(m)) => m,
        _ => Map::new(),
    }
}

fn key(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.0, tag.1)
}

fn hit_from_row(level: Level, r: &AnyRow) -> Result<Hit, sqlx::Error> {
    let mut hit = match level {
        Level::Study => study_hit(r)?,
        Level::Series => series_hit(r)?,
        Level::Instance => instance_hit(r)?,
    };
    let study_uid = hit.study_uid.clone();
    put(
        &mut hit.attrs,
        tags::STUDY_INSTANCE_UID,
        "UI",
        vec![json!(study_uid)],
    );
    if let Some(series) = hit.series_uid.clone() {
        put(
            &mut hit.attrs,
            tags::SERIES_INSTANCE_UID,
            "UI",
            vec![json!(series)],
        );
    }
    put(
        &mut hit.attrs,
        tags::INSTANCE_AVAILABILITY,
        "CS",
        vec![json!("ONLINE")],
    );
    Ok(hit)
}

/// A study with its computed attributes (modalities, SOP classes, counts).
fn study_hit(r: &AnyRow) -> Result<Hit, sqlx::Error> {
    let mut attrs = parse_obj(&r.try_get::<String, _>("study_json")?);
    let split = |s: String| -> Vec<Json> {
        s.split('\\')
            .filter(|v| !v.is_empty())
            .map(Json::from)
            .collect()
    };
    let count = |column: &str| -> Result<Vec<Json>, sqlx::Error> {
        Ok(vec![json!(r.try_get::<i64, _>(column)?)])
    };
    put(
        &mut attrs,
        tags::MODALITIES_IN_STUDY,
        "CS",
        split(r.try_get("modalities")?),
    );
    put(
        &mut attrs,
        tags::SOP_CLASSES_IN_STUDY,
        "UI",
        split(r.try_get("sop_classes")?),
    );
    put(
        &mut attrs,
        tags::NUMBER_OF_STUDY_RELATED_SERIES,
        "IS",
        count("num_series")?,
    );
    put(
        &mut attrs,
        tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
        "IS",
        count("num_instances")?,
    );
    Ok(Hit {
        study_uid: r.try_get("study_uid")?,
        series_uid: None,
        sop_instance_uid: None,
        attrs,
        context: Map::new(),
    })
}

/// A series with its instance count, and its study's attributes as context.
fn series_hit(r: &AnyRow) -> Result<Hit, sqlx::Error> {
    let mut attrs = parse_obj(&r.try_get::<String, _>("series_json")?);
    let count = r.try_get::<i64, _>("num_instances")?;
    put(
        &mut attrs,
        tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
        "IS",
        vec![json!(count)],
    );
    Ok(Hit {
        study_uid: r.try_get("study_uid")?,
        series_uid: Some(r.try_get("series_uid")?),
        sop_instance_uid: None,
        attrs,
        context: parse_obj(&r.try_get::<String, _>("study_json")?),
    })
}

/// An instance, with its study's and series' attributes as context.
fn instance_hit(r: &AnyRow) -> Result<Hit, sqlx::Error> {
    let mut context = parse_obj(&r.try_get::<String, _>("study_json")?);
    context.extend(parse_obj(&r.try_get::<String, _>("series_json")?));
    Ok(Hit {
        study_uid: r.try_get("study_uid")?,
        series_uid: Some(r.try_get("series_uid")?),
        sop_instance_uid: Some(r.try_get("sop_instance_uid")?),
        attrs: parse_obj(&r.try_get::<String, _>("instance_json")?),
        context,
    })
}

fn put(map: &mut Map<String, Json>, tag: Tag, vr: &str, values: Vec<Json>) {
    let mut v = Map::new();
    v.insert("vr".into(), json!(vr));
    if !values.is_empty() {
        v.insert("Value".into(), Json::Array(values));
    }
    map.insert(key(tag), Json::Object(v));
}

/// Match a filter against the JSON of a hit (its level first, then the levels above).
fn filter_matches(f: &Filter, hit: &Hit, fuzzy: bool) -> bool {
    if f.matcher == Matcher::Universal {
        return true;
    }
    let first = key(f.key.path[0]);
    let Some(elem) = hit.attrs.get(&first).or_else(|| hit.context.get(&first)) else {
        return false;
    };
    let mut values = Vec::new();
    collect_values(elem, &f.key.path[1..], &mut values);
    let is_name = f.key.vr == VR::PN;
    values.iter().any(|v| {
        if !is_name {
            return f.matcher.matches(v);
        }
        let v = fold_name(v);
        match &f.matcher {
            Matcher::Exact(q) if fuzzy => fuzzy_match(q, &v),
            Matcher::Wildcard(q) if fuzzy => fuzzy_match(q, &v),
            Matcher::Exact(q) => fold_name(q) == v,
            Matcher::Wildcard(q) => wildcard_match(&fold_name(q), &v),
            other => other.matches(&v),
        }
    })
}

fn fuzzy_match(query: &str, folded_value: &str) -> bool {
    let q = fold_name(query);
    let components: Vec<&str> = folded_value.split(['^', '=', ' ']).collect();
    q.split(['^', '=', ' ', ','])
        .map(|w| w.trim_matches('*'))
        .filter(|w| !w.is_empty())
        .all(|w| components.iter().any(|c| c.starts_with(w)))
}

/// The string forms of an element's values, following a sequence path.
fn collect_values(elem: &Json, rest: &[Tag], out: &mut Vec<String>) {
    let Some(values) = elem.get("Value").and_then(Json::as_array) else {
        return;
    };
    match rest.split_first() {
        Some((next, tail)) => {
            for item in values {
                if let Some(e) = item.get(key(*next)) {
                    collect_values(e, tail, out);
                }
            }
        }
        None => {
            for v in values {
                match v {
                    Json::String(s) => out.push(s.clone()),
                    Json::Number(n) => out.push(n.to_string()),
                    Json::Object(pn) => {
                        out.extend(pn.values().filter_map(Json::as_str).map(str::to_owned));
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_matching_follows_sequences_and_names() {
        let attrs: Map<String, Json> = serde_json::from_value(json!({
            "00400275": {"vr": "SQ", "Value": [{"00401001": {"vr": "SH", "Value": ["RP7"]}}]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^José"}]},
        }))
        .unwrap();
        let hit = Hit {
            study_uid: "1".into(),
            series_uid: None,
            sop_instance_uid: None,
            attrs,
            context: Map::new(),
        };
        assert!(filter_matches(
            &Filter::of("RequestAttributesSequence.RequestedProcedureID", "RP7"),
            &hit,
            false
        ));
        assert!(!filter_matches(
            &Filter::of("RequestAttributesSequence.RequestedProcedureID", "RP8"),
            &hit,
            false
        ));
        assert!(filter_matches(
            &Filter::of("PatientName", "muller*"),
            &hit,
            false
        ));
        assert!(filter_matches(
            &Filter::of("PatientName", "jos"),
            &hit,
            true
        ));
        assert!(!filter_matches(
            &Filter::of("PatientName", "jos"),
            &hit,
            false
        ));
    }
}
