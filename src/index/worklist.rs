//! The Modality Worklist search: one SQL statement over orders and their scheduled steps,
//! with the matching of PS3.4 K.6.1.2 (single value, wildcards, date and time ranges,
//! person names folded for case and accents as for C-FIND).

use super::conditions::like_pattern;
use super::orders::{order_row, step_row, Order, Step};
use super::{Index, IndexError};
use crate::dicom::fold_name;
use crate::model::query::Matcher;
use crate::model::OrderStatus;

/// The attributes a worklist query can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorklistKey {
    PatientName,
    PatientId,
    IssuerOfPatientId,
    AccessionNumber,
    RequestedProcedureId,
    StudyInstanceUid,
    ReferringPhysician,
    /// Scheduled Procedure Step Sequence attributes.
    StationAeTitle,
    Modality,
    StartDate,
    StartTime,
    StepId,
}

impl WorklistKey {
    fn column(self) -> (&'static str, bool) {
        match self {
            WorklistKey::PatientName => ("o.patient_name_key", true),
            WorklistKey::PatientId => ("o.patient_id", false),
            WorklistKey::IssuerOfPatientId => ("o.issuer_of_patient_id", false),
            WorklistKey::AccessionNumber => ("o.accession_number", false),
            WorklistKey::RequestedProcedureId => ("o.requested_procedure_id", false),
            WorklistKey::StudyInstanceUid => ("o.study_uid", false),
            WorklistKey::ReferringPhysician => ("o.referring_physician", false),
            WorklistKey::StationAeTitle => ("s.station_ae", false),
            WorklistKey::Modality => ("s.modality", false),
            WorklistKey::StartDate => ("s.start_date", false),
            WorklistKey::StartTime => ("s.start_time", false),
            WorklistKey::StepId => ("s.step_id", false),
        }
    }
}

/// A worklist query: matching keys, the order statuses whose steps are listed, a cap.
#[derive(Debug, Clone)]
pub struct WorklistQuery {
    pub filters: Vec<(WorklistKey, Matcher)>,
    pub statuses: Vec<OrderStatus>,
    pub limit: usize,
}

/// One worklist item: an order (its `scheduled_procedure_steps` empty) and one of its steps.
pub type WorklistItem = (Order, Step);

/// SQL text with its arguments, numbered `$1…`.
struct Sql {
    text: String,
    args: Vec<String>,
}

impl Sql {
    fn arg(&mut self, v: String) -> String {
        self.args.push(v);
        format!("${}", self.args.len())
    }
}

fn condition(sql: &mut Sql, key: WorklistKey, m: &Matcher) -> Option<String> {
    let (col, name) = key.column();
    let fold = |v: &str| if name { fold_name(v) } else { v.to_owned() };
    Some(match m {
        Matcher::Universal => return None,
        // A single time matches the times it is a prefix of (0800 matches 080000).
        Matcher::Exact(v) if key == WorklistKey::StartTime => {
            let (lo, hi) = (sql.arg(v.clone()), sql.arg(format!("{v}\u{10FFFF}")));
            format!("{col} >= {lo} AND {col} <= {hi}")
        }
        Matcher::Exact(v) => format!("{col} = {}", sql.arg(fold(v))),
        Matcher::Wildcard(p) => {
            format!("{col} LIKE {} ESCAPE '!'", sql.arg(like_pattern(&fold(p))))
        }
        Matcher::UidList(list) => {
            let marks: Vec<String> = list.iter().map(|u| sql.arg(u.to_string())).collect();
            format!("{col} IN ({})", marks.join(", "))
        }
        Matcher::Range(range) => {
            let mut parts = Vec::new();
            if let Some(from) = range.lower() {
                parts.push(format!("{col} >= {}", sql.arg(from.to_owned())));
            }
            if let Some(to) = range.upper() {
                parts.push(format!("{col} <= {}", sql.arg(to)));
            }
            parts.join(" AND ")
        }
    })
}

impl Index {
    /// The scheduled steps matching `q`, ordered by start.
    pub async fn worklist(&self, q: &WorklistQuery) -> Result<Vec<WorklistItem>, IndexError> {
        let mut sql = Sql {
            text: "SELECT o.order_id, o.accession_number, o.patient_id, o.issuer_of_patient_id, \
                   o.patient_name, o.patient_birth_date, o.patient_sex, o.requested_procedure_id, \
                   o.requested_procedure_description, o.referring_physician, o.study_uid, o.status, \
                   s.step_id, s.modality, s.station_ae, s.start_date, s.start_time, s.description \
                   FROM order_steps s JOIN radiology_orders o ON o.order_id = s.order_id WHERE "
                .to_owned(),
            args: Vec::new(),
        };
        let statuses: Vec<String> = q
            .statuses
            .iter()
            .map(|s| sql.arg(s.as_str().to_owned()))
            .collect();
        sql.text += &format!("o.status IN ({})", statuses.join(", "));
        for (key, m) in &q.filters {
            if let Some(cond) = condition(&mut sql, *key, m) {
                sql.text += &format!(" AND ({cond})");
            }
        }
        sql.text += &format!(
            " ORDER BY s.start_date, s.start_time, o.order_id, s.position LIMIT {}",
            q.limit
        );
        let mut query = sqlx::query(&sql.text);
        for a in &sql.args {
            query = query.bind(a);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(|row| Ok((order_row(row)?, step_row(row)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(items)
    }
}
