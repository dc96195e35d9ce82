//! What the fuzz targets share: one in-process server per fuzzing process (SQLite and
//! objects in a scratch directory, the seed objects stored so that queries find
//! something), requests sent straight to its router, and the oracle every HTTP target
//! applies — a client's bytes may be refused, never answered with a 500.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use pacs_lite::app::App;
use pacs_lite::config::Config;
use tower::ServiceExt;

pub struct Server {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    /// The seed study and series, for the study- and series-scoped QIDO paths.
    pub study_uid: String,
    pub series_uid: String,
    _app: App,
    _dir: tempfile::TempDir,
}

/// The seed files of one target (not the inputs kept because a fuzzer found a problem
/// with them: `regression-*`).
pub fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("seed entry").path())
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("regression-"))
        })
        .collect();
    files.sort();
    files
}

/// A scratch directory in memory when the machine has one (stores fsync).
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("scratch directory")
    } else {
        tempfile::tempdir().expect("scratch directory")
    }
}

/// The process's server, started on first use.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(start)
}

fn start() -> Server {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = scratch();
    let mut config = Config::default();
    config.data_dir = dir.path().to_path_buf();
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.dimse.enabled = false;
    let app = rt.block_on(App::build(config)).expect("the server starts");
    let router = app.router();
    let first = seeds("dicom_header").remove(0);
    let len = std::fs::metadata(&first).expect("seed").len();
    let file = std::fs::File::open(&first).expect("seed");
    let parsed = pacs_lite::dicom::parse_header(file, len).expect("the first seed parses");
    let server = Server {
        rt,
        router,
        study_uid: parsed.study_uid.as_str().to_owned(),
        series_uid: parsed.series_uid.as_str().to_owned(),
        _app: app,
        _dir: dir,
    };
    for seed in seeds("dicom_header") {
        let body = std::fs::read(&seed).expect("seed");
        let (status, text) = server.send(Method::POST, "/dicom-web/studies", "application/dicom", body);
        assert_eq!(status, StatusCode::OK, "storing {}: {text}", seed.display());
    }
    server
}

impl Server {
    /// Send one request as a loopback client; the status and the whole body.
    pub fn send(
        &self,
        method: Method,
        uri: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, String) {
        let Ok(request) = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ACCEPT, "application/dicom+json")
            .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))))
            .body(Body::from(body))
        else {
            // Not a request any client could send (the URI or header does not parse).
            return (StatusCode::BAD_REQUEST, String::new());
        };
        self.rt.block_on(async {
            let response = self.router.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, String::from_utf8_lossy(&body).into_owned())
        })
    }
}

/// The oracle of the HTTP targets.
pub fn assert_not_internal(what: &str, status: StatusCode, body: &str) {
    assert!(
        !status.is_server_error(),
        "{what} was answered {status}: {body}"
    );
}
