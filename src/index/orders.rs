//! Radiology orders in the index: the order, its scheduled procedure steps, its status and
//! Study Instance UID; the changes the REST API and HL7 make to them, each in one
//! transaction; and the studies linked to an order.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{Index, IndexError};
use crate::dicom::fold_name;
use crate::model::clock::now_millis;
use crate::model::{OrderId, OrderStatus, Uid};

/// One scheduled procedure step: one worklist item.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub id: String,
    pub modality: Option<String>,
    pub station_ae: Option<String>,
    /// Local time, `YYYY-MM-DDTHH:MM`.
    pub start: Option<String>,
    pub description: Option<String>,
}

impl Step {
    /// The start as DICOM date (YYYYMMDD) and time (HHMMSS).
    pub fn start_date_time(&self) -> (Option<String>, Option<String>) {
        match self.start.as_deref() {
            Some(s) if s.len() == 16 => (
                Some(s[..10].replace('-', "")),
                Some(format!("{}00", s[11..].replace(':', ""))),
            ),
            _ => (None, None),
        }
    }

    fn from_columns(date: Option<String>, time: Option<String>) -> Option<String> {
        let d = date?;
        let t = time.unwrap_or_else(|| "0000".into());
        (d.len() == 8 && t.len() >= 4).then(|| {
            format!(
                "{}-{}-{}T{}:{}",
                &d[..4],
                &d[4..6],
                &d[6..],
                &t[..2],
                &t[2..4]
            )
        })
    }
}

/// A radiology order: who, what, when and where, and where it is in its workflow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Order {
    pub order_id: OrderId,
    pub accession_number: Option<String>,
    pub patient_id: Option<String>,
    pub issuer_of_patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub requested_procedure_id: Option<String>,
    pub requested_procedure_description: Option<String>,
    pub referring_physician: Option<String>,
    /// The order's own, or one pacs-lite assigned when the order was created.
    pub study_instance_uid: Option<Uid>,
    pub status: OrderStatus,
    pub scheduled_procedure_steps: Vec<Step>,
}

/// What a write says about the order's status and Study Instance UID: when not given, the
/// stored ones are kept (a new order is `scheduled`, with `study_instance_uid` or else a
/// new UID).
#[derive(Debug, Clone, Copy, Default)]
pub struct Given {
    pub status: bool,
    pub study_uid: bool,
}

/// A patient as an order message names it (HL7 PID), in DICOM's terms: the ID (and its
/// issuer), the name as a DICOM person name, the birth date as YYYYMMDD, the sex M, F or O.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patient {
    pub id: String,
    pub issuer: Option<String>,
    pub name: Option<String>,
    pub birth_date: Option<String>,
    pub sex: Option<String>,
}

/// A change to orders, applied in one transaction.
#[derive(Debug, Clone)]
pub enum OrderChange {
    /// Create the order or replace its details (and its steps).
    Put { order: Box<Order>, given: Given },
    /// Move an existing order to a status.
    Status { id: OrderId, status: OrderStatus },
    /// New details for the patient of the open orders with this patient ID.
    Patient(Patient),
    /// The patient `prior` is now `patient`: every order of `prior` moves.
    Merge { prior: String, patient: Patient },
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The order as stored now, and whether it is new.
    Put { created: bool, order: Box<Order> },
    /// Written, not read back (HL7: the ACK needs neither).
    Written,
    /// A status change; false when there is no such order (nothing changed).
    Status(bool),
    /// How many orders a patient update or merge changed.
    Patients(u64),
}

/// An HL7 message's identity: sender (MSH-3^MSH-4) and control id (MSH-10).
#[derive(Debug, Clone)]
pub struct MessageKey {
    pub sender: String,
    pub control_id: String,
    /// SHA-256 (hex) of the message as received.
    pub sha256: String,
}

/// What became of an HL7 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Applied now; its acknowledgement is recorded.
    Applied(Applied),
    /// Taken before: the acknowledgement given then.
    Duplicate(String),
}

/// Filters of `GET /orders`.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    /// YYYYMMDD: orders with a step starting that day.
    pub date: Option<String>,
    pub modality: Option<String>,
    pub limit: usize,
    pub offset: usize,
}

/// A study as listed for an order.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct StudySummary {
    pub study_id: i64,
    pub study_instance_uid: Uid,
    pub study_date: Option<String>,
    pub study_description: Option<String>,
    pub accession_number: Option<String>,
    pub modalities: String,
    pub number_of_series: i64,
    pub number_of_instances: i64,
    /// How the study belongs to the order: "upload" or "accession_number".
    pub linked_by: String,
}

const ORDER_COLS: &str = "order_id, accession_number, patient_id, issuer_of_patient_id, \
     patient_name, patient_birth_date, patient_sex, requested_procedure_id, \
     requested_procedure_description, referring_physician, study_uid, status";

/// An order row (steps not yet attached).
pub(super) fn order_row(row: &AnyRow) -> Result<Order, sqlx::Error> {
    let text = |c: &str| row.try_get::<Option<String>, _>(c);
    let status: String = row.try_get("status")?;
    Ok(Order {
        order_id: row.try_get("order_id")?,
        accession_number: text("accession_number")?,
        patient_id: text("patient_id")?,
        issuer_of_patient_id: text("issuer_of_patient_id")?,
        patient_name: text("patient_name")?,
        patient_birth_date: text("patient_birth_date")?,
        patient_sex: text("patient_sex")?,
        requested_procedure_id: text("requested_procedure_id")?,
        requested_procedure_description: text("requested_procedure_description")?,
        referring_physician: text("referring_physician")?,
        study_instance_uid: text("study_uid")?.and_then(|u| Uid::parse(&u).ok()),
        status: OrderStatus::parse(&status).unwrap_or(OrderStatus::Scheduled),
        scheduled_procedure_steps: Vec::new(),
    })
}

pub(super) fn step_row(row: &AnyRow) -> Result<Step, sqlx::Error> {
    Ok(Step {
        id: row.try_get("step_id")?,
        modality: row.try_get("modality")?,
        station_ae: row.try_get("station_ae")?,
        start: Step::from_columns(row.try_get("start_date")?, row.try_get("start_time")?),
        description: row.try_get("description")?,
    })
}

async fn read_order(
    tx: &mut Transaction<'_, Any>,
    id: &OrderId,
) -> Result<Option<Order>, sqlx::Error> {
    let sql = format!("SELECT {ORDER_COLS} FROM radiology_orders WHERE order_id = $1");
    let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(&mut **tx).await? else {
        return Ok(None);
    };
    let mut order = order_row(&row)?;
    let steps = sqlx::query(
        "SELECT step_id, modality, station_ae, start_date, start_time, description \
         FROM order_steps WHERE order_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    order.scheduled_procedure_steps = steps.iter().map(step_row).collect::<Result<_, _>>()?;
    Ok(Some(order))
}

async fn put(
    tx: &mut Transaction<'_, Any>,
    o: &Order,
    given: Given,
    source: &str,
) -> Result<Applied, sqlx::Error> {
    let read_back = source != "hl7";
    let created = read_back && read_order(tx, &o.order_id).await?.is_none();
    let now = now_millis();
    sqlx::query(
        "INSERT INTO radiology_orders (order_id, accession_number, patient_id, issuer_of_patient_id, \
         patient_name, patient_name_key, patient_birth_date, patient_sex, requested_procedure_id, \
         requested_procedure_description, referring_physician, study_uid, status, source, \
         created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$15) \
         ON CONFLICT (order_id) DO UPDATE SET accession_number = excluded.accession_number, \
         patient_id = excluded.patient_id, issuer_of_patient_id = excluded.issuer_of_patient_id, \
         patient_name = excluded.patient_name, patient_name_key = excluded.patient_name_key, \
         patient_birth_date = excluded.patient_birth_date, patient_sex = excluded.patient_sex, \
         requested_procedure_id = excluded.requested_procedure_id, \
         requested_procedure_description = excluded.requested_procedure_description, \
         referring_physician = excluded.referring_physician, \
         study_uid = CASE WHEN $16 = 1 THEN excluded.study_uid \
                     ELSE COALESCE(radiology_orders.study_uid, excluded.study_uid) END, \
         status = CASE WHEN $17 = 1 THEN excluded.status ELSE radiology_orders.status END, \
         source = excluded.source, updated_at = excluded.updated_at",
    )
    .bind(&o.order_id)
    .bind(&o.accession_number)
    .bind(&o.patient_id)
    .bind(&o.issuer_of_patient_id)
    .bind(&o.patient_name)
    .bind(o.patient_name.as_deref().map(fold_name))
    .bind(&o.patient_birth_date)
    .bind(&o.patient_sex)
    .bind(&o.requested_procedure_id)
    .bind(&o.requested_procedure_description)
    .bind(&o.referring_physician)
    .bind(o.study_instance_uid.as_ref().map(Uid::as_str))
    .bind(o.status.as_str())
    .bind(source)
    .bind(now)
    .bind(i64::from(given.study_uid))
    .bind(i64::from(given.status))
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM order_steps WHERE order_id = $1")
        .bind(&o.order_id)
        .execute(&mut **tx)
        .await?;
    for (position, step) in o.scheduled_procedure_steps.iter().enumerate() {
        let (date, time) = step.start_date_time();
        sqlx::query(
            "INSERT INTO order_steps (order_id, step_id, position, modality, station_ae, \
             start_date, start_time, description) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        )
        .bind(&o.order_id)
        .bind(&step.id)
        .bind(position as i64)
        .bind(&step.modality)
        .bind(&step.station_ae)
        .bind(date)
        .bind(time)
        .bind(&step.description)
        .execute(&mut **tx)
        .await?;
    }
    let order = read_order(tx, &o.order_id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    Ok(Applied::Put {
        created,
        order: Box::new(order),
    })
}

async fn apply(
    tx: &mut Transaction<'_, Any>,
    change: &OrderChange,
    source: &str,
) -> Result<Applied, sqlx::Error> {
    let now = now_millis();
    match change {
        OrderChange::Put { order, given } => put(tx, order, *given, source).await,
        OrderChange::Status { id, status } => {
            let done = sqlx::query(
                "UPDATE radiology_orders SET status = $1, updated_at = $2 WHERE order_id = $3",
            )
            .bind(status.as_str())
            .bind(now)
            .bind(id)
            .execute(&mut **tx)
            .await?;
            Ok(Applied::Status(done.rows_affected() > 0))
        }
        OrderChange::Patient(p) => {
            let done = sqlx::query(
                "UPDATE radiology_orders SET patient_name = $1, patient_name_key = $2, \
                 patient_birth_date = $3, patient_sex = $4, updated_at = $5 \
                 WHERE patient_id = $6 AND ($7 = '' OR COALESCE(issuer_of_patient_id, '') IN ('', $7)) \
                 AND status IN ('scheduled', 'in_progress')",
            )
            .bind(&p.name)
            .bind(p.name.as_deref().map(fold_name))
            .bind(&p.birth_date)
            .bind(&p.sex)
            .bind(now)
            .bind(&p.id)
            .bind(p.issuer.as_deref().unwrap_or(""))
            .execute(&mut **tx)
            .await?;
            Ok(Applied::Patients(done.rows_affected()))
        }
        OrderChange::Merge { prior, patient: p } => {
            let done = sqlx::query(
                "UPDATE radiology_orders SET patient_id = $1, issuer_of_patient_id = \
                 COALESCE($2, issuer_of_patient_id), patient_name = COALESCE($3, patient_name), \
                 patient_name_key = COALESCE($4, patient_name_key), \
                 patient_birth_date = COALESCE($5, patient_birth_date), \
                 patient_sex = COALESCE($6, patient_sex), updated_at = $7 WHERE patient_id = $8",
            )
            .bind(&p.id)
            .bind(&p.issuer)
            .bind(&p.name)
            .bind(p.name.as_deref().map(fold_name))
            .bind(&p.birth_date)
            .bind(&p.sex)
            .bind(now)
            .bind(prior)
            .execute(&mut **tx)
            .await?;
            Ok(Applied::Patients(done.rows_affected()))
        }
    }
}

impl Index {
    /// Apply a change from the REST API.
    pub async fn change_orders(&self, change: &OrderChange) -> Result<Applied, IndexError> {
        let mut tx = self.pool.begin().await?;
        let applied = apply(&mut tx, change, "rest").await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Apply the change an HL7 message asks for, once: with `ack` recorded in the same
    /// transaction, so a message sent again gets its first acknowledgement back and
    /// changes nothing. `accept` decides whether the result stands (false: rolled back,
    /// nothing recorded, so the message can be sent again once it can be taken).
    pub async fn take_hl7(
        &self,
        key: &MessageKey,
        change: &OrderChange,
        ack: &str,
        accept: impl FnOnce(&Applied) -> bool,
    ) -> Result<Taken, IndexError> {
        let mut tx = self.pool.begin().await?;
        // The message's row first: a duplicate is found by the insert that records it.
        let recorded = sqlx::query(
            "INSERT INTO hl7_messages (sender, control_id, sha256, ack, received_at) \
             VALUES ($1,$2,$3,$4,$5) ON CONFLICT (sender, control_id) DO NOTHING",
        )
        .bind(&key.sender)
        .bind(&key.control_id)
        .bind(&key.sha256)
        .bind(ack)
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        if recorded.rows_affected() == 0 {
            tx.rollback().await?;
            let first: String = sqlx::query_scalar(
                "SELECT ack FROM hl7_messages WHERE sender = $1 AND control_id = $2",
            )
            .bind(&key.sender)
            .bind(&key.control_id)
            .fetch_one(&self.pool)
            .await?;
            return Ok(Taken::Duplicate(first));
        }
        let applied = apply(&mut tx, change, "hl7").await?;
        if accept(&applied) {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(Taken::Applied(applied))
    }

    /// One order with its steps.
    pub async fn order(&self, order_id: &OrderId) -> Result<Option<Order>, IndexError> {
        let mut tx = self.pool.begin().await?;
        let order = read_order(&mut tx, order_id).await?;
        tx.commit().await?;
        Ok(order)
    }

    /// Orders by status, day and modality, most recently changed first.
    pub async fn orders(&self, f: &OrderFilter) -> Result<Vec<Order>, IndexError> {
        let mut sql = format!(
            "SELECT {ORDER_COLS} FROM radiology_orders o WHERE ($1 = '' OR o.status = $1) \
             AND (($2 = '' AND $3 = '') OR EXISTS (SELECT 1 FROM order_steps s \
             WHERE s.order_id = o.order_id AND ($2 = '' OR s.start_date = $2) \
             AND ($3 = '' OR s.modality = $3))) ORDER BY o.updated_at DESC, o.order_id"
        );
        sql.push_str(&format!(" LIMIT {} OFFSET {}", f.limit, f.offset));
        let rows = sqlx::query(&sql)
            .bind(f.status.map(OrderStatus::as_str).unwrap_or(""))
            .bind(f.date.as_deref().unwrap_or(""))
            .bind(f.modality.as_deref().unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        let mut orders = rows.iter().map(order_row).collect::<Result<Vec<_>, _>>()?;
        self.attach_steps(&mut orders).await?;
        Ok(orders)
    }

    async fn attach_steps(&self, orders: &mut [Order]) -> Result<(), IndexError> {
        if orders.is_empty() {
            return Ok(());
        }
        let marks: Vec<String> = (1..=orders.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT order_id, step_id, modality, station_ae, start_date, start_time, description \
             FROM order_steps WHERE order_id IN ({}) ORDER BY order_id, position",
            marks.join(",")
        );
        let mut q = sqlx::query(&sql);
        for o in orders.iter() {
            q = q.bind(&o.order_id);
        }
        for row in q.fetch_all(&self.pool).await? {
            let id: String = row.try_get("order_id")?;
            if let Some(o) = orders.iter_mut().find(|o| o.order_id.as_str() == id) {
                o.scheduled_procedure_steps.push(step_row(&row)?);
            }
        }
        Ok(())
    }

    /// The order's studies: linked by an offline upload, stored with the order's Study
    /// Instance UID, or stored (C-STORE, STOW-RS) with its accession number.
    pub async fn order_studies(&self, order: &Order) -> Result<Vec<StudySummary>, IndexError> {
        let accession = order.accession_number.clone().unwrap_or_default();
        let study_uid = order
            .study_instance_uid
            .as_ref()
            .map(Uid::as_str)
            .unwrap_or("");
        Ok(sqlx::query_as(
            "SELECT st.id AS study_id, st.study_uid AS study_instance_uid, st.study_date, \
             st.study_description, st.accession_number, st.modalities, \
             st.num_series AS number_of_series, st.num_instances AS number_of_instances, \
             CASE WHEN so.order_id IS NOT NULL THEN 'upload' \
                  WHEN $3 <> '' AND st.study_uid = $3 THEN 'study_instance_uid' \
                  ELSE 'accession_number' END AS linked_by \
             FROM studies st LEFT JOIN study_orders so ON so.study_uid = st.study_uid AND so.order_id = $1 \
             WHERE so.order_id IS NOT NULL OR ($2 <> '' AND st.accession_number = $2) \
             OR ($3 <> '' AND st.study_uid = $3) \
             ORDER BY st.study_date, st.id",
        )
        .bind(&order.order_id)
        .bind(&accession)
        .bind(study_uid)
        .fetch_all(&self.pool)
        .await?)
    }
}
