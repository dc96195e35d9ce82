//! The resource a DICOMweb URL names, parsed once for every route: the study, series and
//! instance UIDs of the path (validated) and the frame list, if any.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::ApiError;
use crate::index::read::Scope;
use crate::model::Uid;

/// `{study}`, `{series}`, `{sop}` and `{frames}` of a route, as present.
#[derive(Debug, Clone, Default)]
pub struct Resource {
    pub study: Option<Uid>,
    pub series: Option<Uid>,
    pub instance: Option<Uid>,
    pub frames: Option<String>,
}

impl Resource {
    /// The instances the resource covers (routes that have a study).
    pub fn scope(&self) -> Result<Scope, ApiError> {
        let study = self
            .study
            .clone()
            .ok_or_else(|| ApiError::BadRequest("the URL names no study".into()))?;
        Ok(Scope {
            study,
            series: self.series.clone(),
            instance: self.instance.clone(),
        })
    }
}

/// A UID from the URL path, or a 400 that says which one is wrong.
pub(crate) fn path_uid(raw: &str, name: &str) -> Result<Uid, ApiError> {
    Uid::parse(raw).map_err(|e| ApiError::BadRequest(format!("{name} in the URL {raw:?}: {e}")))
}

impl<S: Send + Sync> FromRequestParts<S> for Resource {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params: HashMap<String, String> =
            match Path::<HashMap<String, String>>::from_request_parts(parts, state).await {
                Ok(Path(map)) => map,
                Err(e) => return Err(ApiError::BadRequest(format!("malformed URL path: {e}"))),
            };
        let uid =
            |key: &str, name: &str| params.get(key).map(|raw| path_uid(raw, name)).transpose();
        Ok(Resource {
            study: uid("study", "StudyInstanceUID")?,
            series: uid("series", "SeriesInstanceUID")?,
            instance: uid("sop", "SOPInstanceUID")?,
            frames: params.get("frames").cloned(),
        })
    }
}
