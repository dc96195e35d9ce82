//! Reading what WADO-RS serves: the instances of a study, series or instance with where
//! their bytes are, their precomputed metadata and frame tables.

use rusqlite::types::Type;

use super::sqlite_reader::text;
use super::{Index, IndexError};
use crate::model::{ObjectKey, Sha256, TransferSyntax, Uid};

/// Where and what one stored instance is.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InstanceLocation {
    pub study_uid: Uid,
    pub series_uid: Uid,
    pub sop_instance_uid: Uid,
    pub sop_class_uid: Uid,
    pub transfer_syntax: TransferSyntax,
    pub object_key: ObjectKey,
    #[sqlx(try_from = "i64")]
    pub size: u64,
    /// Bytes to put in front of the object to make a standard Part-10 file (0, 128, 132).
    #[sqlx(try_from = "i64")]
    pub part10_prefix: u64,
    pub sha256: Sha256,
    pub number_of_frames: i64,
    pub frame_table: Option<Vec<u8>>,
}

/// Which instances: a whole study, one series, or one instance.
#[derive(Debug, Clone)]
pub struct Scope {
    pub study: Uid,
    pub series: Option<Uid>,
    pub instance: Option<Uid>,
}

impl Scope {
    fn where_clause(&self) -> (String, Vec<&str>) {
        let mut sql = String::from(" WHERE st.study_uid = $1");
        let mut args = vec![self.study.as_str()];
        if let Some(series) = &self.series {
            args.push(series.as_str());
            sql.push_str(&format!(" AND se.series_uid = ${}", args.len()));
        }
        if let Some(sop) = &self.instance {
            args.push(sop.as_str());
            sql.push_str(&format!(" AND i.sop_instance_uid = ${}", args.len()));
        }
        (sql, args)
    }
}

const FROM: &str =
    " FROM instances i JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = i.study_pk";
const LOCATE: &str = "SELECT st.study_uid, se.series_uid, i.sop_instance_uid, i.sop_class_uid, \
     i.transfer_syntax, i.object_key, i.size, i.part10_prefix, i.sha256, i.number_of_frames, i.frame_table";
const ORDER: &str = " ORDER BY se.series_number, se.id, i.instance_number, i.id";

impl InstanceLocation {
    /// A row of [`LOCATE`] read by a plain SQLite connection.
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<InstanceLocation> {
        let count = |i: usize| -> rusqlite::Result<u64> {
            u64::try_from(row.get::<_, i64>(i)?)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, Type::Integer, e.into()))
        };
        Ok(InstanceLocation {
            study_uid: text(row, 0)?,
            series_uid: text(row, 1)?,
            sop_instance_uid: text(row, 2)?,
            sop_class_uid: text(row, 3)?,
            transfer_syntax: text(row, 4)?,
            object_key: text(row, 5)?,
            size: count(6)?,
            part10_prefix: count(7)?,
            sha256: text(row, 8)?,
            number_of_frames: row.get(9)?,
            frame_table: row.get(10)?,
        })
    }
}

impl Index {
    /// `sql` with `args` on SQLite's calling-thread readers: `None` when there are none
    /// or they could not answer at once (the pool then does).
    fn read_here<R>(
        &self,
        sql: &str,
        args: &[&str],
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
    ) -> Option<Vec<R>> {
        self.readers.as_ref()?.read(|c| {
            let mut statement = c.prepare_cached(sql)?;
            let rows = statement.query_map(rusqlite::params_from_iter(args), row)?;
            rows.collect()
        })
    }

    /// The instances in scope, in series and instance order.
    pub async fn locate(&self, scope: &Scope) -> Result<Vec<InstanceLocation>, IndexError> {
        let (filter, args) = scope.where_clause();
        let sql = format!("{LOCATE}{FROM}{filter}{ORDER}");
        if let Some(found) = self.read_here(&sql, &args, InstanceLocation::from_sqlite) {
            return Ok(found);
        }
        let mut q = sqlx::query_as(&sql);
        for a in args {
            q = q.bind(a);
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// One instance by its SOP Instance UID alone (storage commitment).
    pub async fn locate_instance(
        &self,
        sop_instance_uid: &Uid,
    ) -> Result<Option<InstanceLocation>, IndexError> {
        let sql = format!("{LOCATE}{FROM} WHERE i.sop_instance_uid = $1");
        Ok(sqlx::query_as(&sql)
            .bind(sop_instance_uid)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Several instances by SOP Instance UID, in one query; those not stored are missing.
    pub async fn locate_instances(
        &self,
        uids: &[&Uid],
    ) -> Result<Vec<InstanceLocation>, IndexError> {
        let mut out = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(500) {
            let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "{LOCATE}{FROM} WHERE i.sop_instance_uid IN ({})",
                list.join(", ")
            );
            let mut q = sqlx::query_as(&sql);
            for uid in chunk {
                q = q.bind(*uid);
            }
            out.extend(q.fetch_all(&self.pool).await?);
        }
        Ok(out)
    }

    /// The precomputed metadata of the instances in scope, with each one's SHA-256
    /// (which makes a strong validator for the whole answer).
    pub async fn metadata(&self, scope: &Scope) -> Result<Vec<(String, Sha256)>, IndexError> {
        let (filter, args) = scope.where_clause();
        let sql = format!("SELECT i.metadata_json, i.sha256{FROM}{filter}{ORDER}");
        if let Some(found) = self.read_here(&sql, &args, |r| Ok((r.get(0)?, text(r, 1)?))) {
            return Ok(found);
        }
        let mut q = sqlx::query_as(&sql);
        for a in args {
            q = q.bind(a);
        }
        Ok(q.fetch_all(&self.pool).await?)
    }
}

/// A study by its internal id and its UID.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StudyRef {
    pub id: i64,
    pub study_uid: Uid,
    pub patient_id: Option<String>,
    pub accession_number: Option<String>,
    pub study_date: Option<String>,
    pub study_description: Option<String>,
}

/// One image of a study, with its series.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ImageRow {
    pub id: i64,
    pub series_uid: Uid,
    pub series_number: Option<i64>,
    pub series_description: Option<String>,
    pub modality: Option<String>,
    pub sop_instance_uid: Uid,
    pub sop_class_uid: Uid,
    pub instance_number: Option<i64>,
    pub number_of_frames: i64,
}

impl Index {
    /// A study by internal id (all digits) or StudyInstanceUID.
    pub async fn find_study(&self, id_or_uid: &str) -> Result<Option<StudyRef>, IndexError> {
        const COLS: &str = "SELECT id, study_uid, patient_id, accession_number, study_date, study_description FROM studies";
        let by_id = !id_or_uid.is_empty() && id_or_uid.bytes().all(|b| b.is_ascii_digit());
        let found = if by_id {
            let Ok(id) = id_or_uid.parse::<i64>() else {
                return Ok(None);
            };
            sqlx::query_as(&format!("{COLS} WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
        } else {
            sqlx::query_as(&format!("{COLS} WHERE study_uid = $1"))
                .bind(id_or_uid)
                .fetch_optional(&self.pool)
                .await?
        };
        Ok(found)
    }

    /// The images of a study in series and instance order.
    pub async fn study_images(&self, study_id: i64) -> Result<Vec<ImageRow>, IndexError> {
        Ok(sqlx::query_as(
            "SELECT i.id, se.series_uid, se.series_number, se.series_description, se.modality, \
             i.sop_instance_uid, i.sop_class_uid, i.instance_number, i.number_of_frames \
             FROM instances i JOIN series se ON se.id = i.series_pk WHERE i.study_pk = $1 \
             ORDER BY se.series_number, se.id, i.instance_number, i.id",
        )
        .bind(study_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// One instance by its internal id.
    pub async fn locate_by_id(&self, id: i64) -> Result<Option<InstanceLocation>, IndexError> {
        let sql = format!("{LOCATE}{FROM} WHERE i.id = $1");
        Ok(sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The internal id of an instance.
    pub async fn instance_id(&self, sop_instance_uid: &Uid) -> Result<Option<i64>, IndexError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM instances WHERE sop_instance_uid = $1")
                .bind(sop_instance_uid)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// When the newest row was stored (milliseconds since the epoch), if there is one.
    pub async fn newest_stored_at(&self) -> Result<Option<i64>, IndexError> {
        Ok(
            sqlx::query_scalar("SELECT stored_at FROM instances ORDER BY id DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The object keys of a study's instances.
    pub async fn study_object_keys(&self, study: &Uid) -> Result<Vec<ObjectKey>, IndexError> {
        Ok(sqlx::query_scalar(
            "SELECT i.object_key FROM instances i JOIN studies st ON i.study_pk = st.id \
             WHERE st.study_uid = $1",
        )
        .bind(study)
        .fetch_all(&self.pool)
        .await?)
    }

    /// When the instance was last deleted (milliseconds since the epoch), if it ever was.
    pub async fn last_deleted_at(&self, sop_instance_uid: &Uid) -> Result<Option<i64>, IndexError> {
        Ok(sqlx::query_scalar(
            "SELECT MAX(at) FROM changefeed WHERE sop_instance_uid = $1 AND action = 'delete'",
        )
        .bind(sop_instance_uid)
        .fetch_one(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index's lookups give on this thread what the pool gives.
    #[tokio::test]
    async fn lookups_answer_as_the_pool_does() {
        use crate::index::records::sample as record;
        use crate::model::Uid;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("index.sqlite").display());
        let index = crate::index::Index::open(&url, 2).await.unwrap();
        for (series, sop) in [
            ("1.1.2", "1.1.2.1"),
            ("1.1.1", "1.1.1.1"),
            ("1.1.1", "1.1.1.2"),
        ] {
            index
                .insert(record("1.1", series, sop, "CT"))
                .await
                .unwrap();
        }
        let pooled = crate::index::Index {
            readers: None,
            ..index.clone()
        };
        let readers = index.readers.clone().unwrap();
        let scope = |series: Option<&str>, instance: Option<&str>| Scope {
            study: Uid::parse("1.1").unwrap(),
            series: series.map(|s| Uid::parse(s).unwrap()),
            instance: instance.map(|s| Uid::parse(s).unwrap()),
        };
        let scopes = [
            scope(None, None),
            scope(Some("1.1.1"), None),
            scope(Some("1.1.1"), Some("1.1.1.2")),
            scope(Some("1.1.1"), Some("1.9")),
        ];
        let mut found = Vec::new();
        for s in &scopes {
            let here = index.locate(s).await.unwrap();
            // Answered here: the connection went back to the idle list.
            assert_eq!(readers.idle_count(), 1);
            assert_eq!(
                format!("{here:?}"),
                format!("{:?}", pooled.locate(s).await.unwrap())
            );
            let meta = index.metadata(s).await.unwrap();
            assert_eq!(
                format!("{meta:?}"),
                format!("{:?}", pooled.metadata(s).await.unwrap())
            );
            found.push(here.len());
        }
        assert_eq!(found, [3, 2, 1, 0]);
    }
}
