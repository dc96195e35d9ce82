//! Which role each route needs, and what a study-scoped token may reach: one table, so the
//! authorization matrix can be read (and tested) in one place.

use axum::http::Method;

use crate::model::Role;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Health checks.
    Public,
    /// A valid URL signature, or else this role.
    SignedOr(Role),
    Role(Role),
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The requirement of a route.
pub fn need(method: &Method, path: &str) -> Need {
    let s = segments(path);
    match s.as_slice() {
        ["healthz"] | ["readyz"] => Need::Public,
        _ if method == Method::OPTIONS => Need::Public, // CORS preflight (answered by the CORS layer)
        ["api", "v1", "radiology", "images", _, "file"] if is_read(method) => {
            Need::SignedOr(Role::Viewer)
        }
        _ if method == Method::DELETE => Need::Role(Role::Admin),
        ["api", "v1", "admin", ..] => Need::Role(Role::Admin),
        ["dicom-web", ..] if is_read(method) => Need::Role(Role::Viewer),
        ["dicom-web", ..] if method == Method::POST => Need::Role(Role::Uploader),
        ["wado"] if is_read(method) => Need::Role(Role::Viewer),
        ["api", "v1", "radiology", "offline-images", ..] => Need::Role(Role::Uploader),
        ["api", "v1", "radiology", "orders", _] if method == Method::PUT => {
            Need::Role(Role::Uploader)
        }
        _ if is_read(method) => Need::Role(Role::Viewer),
        _ => Need::Role(Role::Admin),
    }
}

/// Whether a study-scoped (read-only) principal for `study` may make this request at all.
/// Searches, WADO-URI and the viewer API pass here and are narrowed to the study by their
/// handlers (WADO-URI's names its study in the query: `dicomweb::wado_uri` refuses others).
pub fn study_scope_allows(method: &Method, path: &str, study: &str) -> bool {
    if !is_read(method) {
        return false;
    }
    let s = segments(path);
    match s.as_slice() {
        ["dicom-web", "studies"] | ["dicom-web", "series"] | ["dicom-web", "instances"] => true,
        ["dicom-web", "studies", uid, ..] => *uid == study,
        ["dicom-web", ..] => false,
        ["wado"] => true,
        ["api", "v1", "radiology", "studies", _, ..] => true,
        ["api", "v1", "radiology", "images", _, "url"]
        | ["api", "v1", "radiology", "images", _, "file"] => true,
        ["api", ..] | ["metrics"] => false,
        // The viewer application and its assets.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_table() {
        let get = Method::GET;
        assert_eq!(need(&get, "/healthz"), Need::Public);
        assert_eq!(need(&get, "/dicom-web/studies"), Need::Role(Role::Viewer));
        assert_eq!(
            need(&Method::POST, "/dicom-web/studies"),
            Need::Role(Role::Uploader)
        );
        assert_eq!(
            need(&Method::DELETE, "/dicom-web/studies/1.2"),
            Need::Role(Role::Admin)
        );
        assert_eq!(
            need(
                &Method::POST,
                "/api/v1/radiology/offline-images/upload-metadata/"
            ),
            Need::Role(Role::Uploader)
        );
        assert_eq!(
            need(&Method::PUT, "/api/v1/radiology/orders/7"),
            Need::Role(Role::Uploader)
        );
        assert_eq!(
            need(&get, "/api/v1/radiology/orders/7/studies/"),
            Need::Role(Role::Viewer)
        );
        assert_eq!(
            need(&get, "/api/v1/radiology/images/5/file"),
            Need::SignedOr(Role::Viewer)
        );
        assert_eq!(need(&get, "/viewer"), Need::Role(Role::Viewer));
        assert_eq!(need(&get, "/wado"), Need::Role(Role::Viewer));
        assert_eq!(need(&Method::POST, "/wado"), Need::Role(Role::Admin));
        assert_eq!(need(&Method::PATCH, "/anything"), Need::Role(Role::Admin));
    }

    #[test]
    fn study_scope() {
        let get = Method::GET;
        assert!(study_scope_allows(
            &get,
            "/dicom-web/studies/1.2/series",
            "1.2"
        ));
        assert!(!study_scope_allows(
            &get,
            "/dicom-web/studies/1.3/series",
            "1.2"
        ));
        assert!(study_scope_allows(&get, "/dicom-web/studies", "1.2"));
        assert!(!study_scope_allows(
            &Method::POST,
            "/dicom-web/studies",
            "1.2"
        ));
        assert!(!study_scope_allows(
            &get,
            "/api/v1/radiology/orders/1/studies",
            "1.2"
        ));
        assert!(study_scope_allows(&get, "/viewer", "1.2"));
        assert!(study_scope_allows(&get, "/wado", "1.2"));
        assert!(!study_scope_allows(&Method::POST, "/wado", "1.2"));
    }
}
