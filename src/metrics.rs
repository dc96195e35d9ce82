//! Prometheus metrics, served at `/metrics`: ingest counts, bytes and latency by entry
//! point and outcome, DIMSE associations, TLS refusals and reloads, HTTP latency by service (QIDO-RS, WADO-RS,
//! STOW-RS, the REST API…), and pending offline uploads.
//!
//! One process-wide registry: every layer records into it without plumbing (ingest counts
//! its outcomes, `dimse/` its associations, `http/` its requests). Imports nothing of ours;
//! `http/` serves the text at `/metrics`.

use std::sync::OnceLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub ingest_total: IntCounterVec,
    pub ingest_bytes: IntCounterVec,
    pub ingest_seconds: HistogramVec,
    pub dimse_associations: IntCounterVec,
    pub dimse_active: IntGauge,
    pub http_seconds: HistogramVec,
    /// Bytes of objects plain HTTP connections sent from their files (`sendfile`).
    pub http_file_bytes: IntCounter,
    pub uploads_pending: IntGauge,
    pub tls_handshakes_refused: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    pub forward: ForwardMetrics,
    pub hl7_messages: IntCounterVec,
    pub compress: CompressMetrics,
    pub worklist: IntCounterVec,
}

/// Compression at rest.
pub struct CompressMetrics {
    /// Objects looked at, by result (done, skipped, failed, lost).
    pub objects: IntCounterVec,
    /// Bytes of the objects re-encoded, before and after.
    pub bytes: IntCounterVec,
    /// Instances not looked at yet.
    pub backlog: IntGauge,
}

/// Store-and-forward, by destination.
pub struct ForwardMetrics {
    pub sent: IntCounterVec,
    pub bytes: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub oldest_pending_seconds: IntGaugeVec,
}

fn compress_metrics(registry: &Registry) -> CompressMetrics {
    let objects = IntCounterVec::new(
        Opts::new(
            "compress_objects_total",
            "Objects the compression job looked at, by result (done, skipped, failed: the original kept, lost).",
        ),
        &["result"],
    )
    .expect("valid metric");
    let bytes = IntCounterVec::new(
        Opts::new(
            "compress_bytes_total",
            "Bytes of the objects re-encoded, before and after.",
        ),
        &["which"],
    )
    .expect("valid metric");
    let backlog = IntGauge::new(
        "compress_backlog",
        "Uncompressed instances the compression job has not looked at yet.",
    )
    .expect("valid metric");
    for c in [
        Box::new(objects.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(bytes.clone()),
        Box::new(backlog.clone()),
    ] {
        registry.register(c).expect("unique metric");
    }
    CompressMetrics {
        objects,
        bytes,
        backlog,
    }
}

/// Register a new metric (`made`) in `registry`.
fn register<M>(registry: &Registry, made: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = made.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn file_bytes_counter(registry: &Registry) -> IntCounter {
    register(
        registry,
        IntCounter::new(
            "http_file_bytes_total",
            "Bytes of objects that plain HTTP connections sent straight from the page cache (sendfile), not copied through the process.",
        ),
    )
}

fn forward_metrics(registry: &Registry) -> ForwardMetrics {
    let register = |c: Box<dyn prometheus::core::Collector>| {
        registry.register(c).expect("unique metric");
    };
    let dest = &["destination"];
    let sent = IntCounterVec::new(
        Opts::new(
            "forward_sent_total",
            "Instances sent to forwarding destinations, by destination and outcome (delivered, failed, retry).",
        ),
        &["destination", "outcome"],
    )
    .expect("valid metric");
    let bytes = IntCounterVec::new(
        Opts::new(
            "forward_bytes_total",
            "Bytes of instances delivered to forwarding destinations.",
        ),
        dest,
    )
    .expect("valid metric");
    let queue_depth = IntGaugeVec::new(
        Opts::new(
            "forward_queue_depth",
            "Instances waiting to be forwarded, by destination.",
        ),
        dest,
    )
    .expect("valid metric");
    let oldest_pending_seconds = IntGaugeVec::new(
        Opts::new(
            "forward_oldest_pending_seconds",
            "Age of the oldest instance waiting to be forwarded, by destination (0: none).",
        ),
        dest,
    )
    .expect("valid metric");
    register(Box::new(sent.clone()));
    register(Box::new(bytes.clone()));
    register(Box::new(queue_depth.clone()));
    register(Box::new(oldest_pending_seconds.clone()));
    ForwardMetrics {
        sent,
        bytes,
        queue_depth,
        oldest_pending_seconds,
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn build() -> Metrics {
    let registry = Registry::new_custom(Some("pacs".into()), None).expect("valid prefix");
    let counter = |name: &str, help: &str, labels: &[&str]| {
        register(&registry, IntCounterVec::new(Opts::new(name, help), labels))
    };
    let histogram = |name: &str, help: &str, labels: &[&str]| {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        register(&registry, HistogramVec::new(opts, labels))
    };
    let gauge = |name: &str, help: &str| register(&registry, IntGauge::new(name, help));
    Metrics {
        ingest_total: counter(
            "ingest_total",
            "Instances through the ingest path, by entry point and outcome.",
            &["entry", "outcome"],
        ),
        ingest_bytes: counter(
            "ingest_bytes_total",
            "Bytes of instances stored, by entry point.",
            &["entry"],
        ),
        ingest_seconds: histogram(
            "ingest_seconds",
            "Time from a complete spooled object to its outcome (parse, durable put, index commit).",
            &["entry", "outcome"],
        ),
        dimse_associations: counter(
            "dimse_associations_total",
            "DIMSE associations, by result (established, rejected).",
            &["result"],
        ),
        dimse_active: gauge("dimse_associations_active", "DIMSE associations open now."),
        tls_handshakes_refused: counter(
            "tls_handshakes_refused_total",
            "TLS handshakes that failed, by listener (http, dimse) and reason (see conformance/tls.md).",
            &["listener", "reason"],
        ),
        forward: forward_metrics(&registry),
        tls_reloads: counter(
            "tls_reloads_total",
            "Certificate and key re-reads, by listener and result (ok, failed: the old ones stay).",
            &["listener", "result"],
        ),
        http_seconds: histogram(
            "http_request_seconds",
            "HTTP request latency (to the response head), by service, method and status class.",
            &["service", "method", "status"],
        ),
        http_file_bytes: file_bytes_counter(&registry),
        uploads_pending: gauge("uploads_pending", "Offline uploads waiting for their bytes."),
        hl7_messages: counter(
            "hl7_messages_total",
            "HL7 v2 messages received over MLLP, by result (accepted, duplicate, refused).",
            &["result"],
        ),
        compress: compress_metrics(&registry),
        worklist: counter(
            "worklist_requests_total",
            "Modality Worklist queries and MPPS requests, by operation and DIMSE status class.",
            &["operation", "status"],
        ),
        registry,
    }
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(build)
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
