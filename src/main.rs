//! The `pacs-lite` command: parses arguments, loads the configuration, dispatches to one
//! function per subcommand. What each does lives in the library (`app`, `import`,
//! `verify`, `sync`); this file only composes and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pacs_lite::app::{open_backends, App};
use pacs_lite::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "pacs-lite",
    version,
    about = "A small, durable DICOM archive and gateway"
)]
struct Cli {
    /// TOML configuration file (defaults < file < PACS_* environment variables).
    #[arg(long, global = true, env = "PACS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: DICOMweb and the REST API on HTTP, DIMSE on its own port.
    Serve,
    /// Store DICOM files and folders through the ingest path.
    Import {
        /// Files or folders (walked recursively).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// How many files to ingest at once (default: ingest.import_parallelism).
        #[arg(long, short = 'j')]
        parallel: Option<usize>,
    },
    /// Re-hash every stored object; report missing, corrupt and orphan objects.
    Verify {
        /// Re-index orphan objects (recovery after a crash between object and index writes).
        #[arg(long)]
        reindex: bool,
        /// Delete orphan objects (ignored with --reindex).
        #[arg(long)]
        delete_orphans: bool,
        /// Leave orphans younger than this many seconds alone (in-flight ingests).
        #[arg(long, default_value_t = 900)]
        grace_secs: i64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create or upgrade the index schema, then exit.
    Migrate,
    /// Re-encode stored images losslessly (`[compression]`, JPEG-LS or RLE): those idle for
    /// `compression.after`, or every image of one study; each is verified pixel for pixel
    /// before it replaces the original. Prints the bytes saved.
    Compress {
        /// Only this study (whatever `compression.after` says).
        #[arg(long)]
        study: Option<String>,
        /// Encode and verify, change nothing, print what would be saved.
        #[arg(long)]
        dry_run: bool,
        /// Print each instance's outcome and the totals as JSON.
        #[arg(long)]
        json: bool,
        /// Encode this many objects at a time (default: `compression.workers`, 1).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Local cache mode: delete the studies `[retention]` lets go (delivered everywhere
    /// their forwarding rules send them, and unused or over `max_bytes`).
    Retention {
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Upload every image in a queue folder (offline upload API), deleting each local copy
    /// only after the server acknowledged it; safe to kill and restart at any point.
    Sync {
        /// The queue folder.
        #[arg(long)]
        queue: PathBuf,
        /// The server's base URL, e.g. https://pacs.example.org
        #[arg(long)]
        server: String,
        /// Bearer token (API key or JWT) with the uploader role.
        #[arg(long, env = "PACS_SYNC_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Radiology order for DICOM files without a sidecar `<file>.meta.json`.
        #[arg(long)]
        order: Option<String>,
        /// Bytes per upload request (resumable parts).
        #[arg(long, default_value_t = 8 << 20)]
        chunk_bytes: u64,
        /// Retries per request on network failures and server errors.
        #[arg(long, default_value_t = 8)]
        max_retries: u32,
        /// Keep watching the queue instead of exiting when it is empty.
        #[arg(long)]
        watch: bool,
    },
    /// Make a new random API key and print it with the configuration entry that accepts
    /// it (only the key's SHA-256 goes into the configuration).
    ApiKey {
        /// A name for the key (shown in logs and the audit trail).
        #[arg(long, default_value = "client")]
        name: String,
        /// viewer, uploader or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
}

fn main() -> ExitCode {
    quiet_library_backtraces();
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pacs-lite: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pacs-lite: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `RUST_BACKTRACE=1` (set on many machines for the sake of panics) also makes libraries
/// capture a backtrace with every error value they create, expected ones included: the
/// dicom-rs reader meets the end of each DIMSE command set as an error, which cost ~10 us
/// per message. `RUST_LIB_BACKTRACE=0` keeps backtraces for panics only, unless the
/// operator asked for library ones. Called before any thread starts.
fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => serve(config).await,
        Command::Sync {
            queue,
            server,
            token,
            order,
            chunk_bytes,
            max_retries,
            watch,
        } => {
            let opts = pacs_lite::sync::Options {
                queue,
                server,
                token,
                order,
                chunk_bytes: chunk_bytes.max(1),
                max_retries,
                once: !watch,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            Ok(sync(opts).await)
        }
        Command::ApiKey { name, role } => Ok(api_key(&name, &role)),
        Command::Migrate => migrate(config).await,
        Command::Retention { dry_run, json } => retention(config, dry_run, json).await,
        Command::Compress {
            study,
            dry_run,
            json,
            workers,
        } => {
            let mut config = config;
            if let Some(n) = workers {
                config.compression.workers = n;
            }
            compress(config, study, dry_run, json).await
        }
        Command::Import { paths, parallel } => import(config, paths, parallel).await,
        Command::Verify {
            reindex,
            delete_orphans,
            grace_secs,
            json,
        } => {
            let opts = pacs_lite::verify::VerifyOptions {
                reindex_orphans: reindex,
                delete_orphans,
                grace_secs,
                parallelism: 4,
            };
            verify(config, opts, json).await
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let app = App::build(config).await.context("starting the server")?;
    println!(
        "pacs-lite listening on {}://{} (DICOMweb at /dicom-web)",
        app.http_scheme(),
        app.http_addr()
    );
    if let Some(addr) = app.dimse_addr() {
        println!("pacs-lite DIMSE listening on {addr} as {}", app.ae_title());
    }
    if let Some(addr) = app.dimse_tls_addr() {
        println!(
            "pacs-lite DIMSE TLS listening on {addr} as {}",
            app.ae_title()
        );
    }
    if let Some(addr) = app.hl7_addr() {
        println!("pacs-lite HL7 listening on {addr} (MLLP)");
    }
    app.run(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn sync(opts: pacs_lite::sync::Options) -> ExitCode {
    match pacs_lite::sync::run(opts).await {
        Ok(summary) => {
            eprintln!(
                "sync: {} uploaded and deleted, {} refused",
                summary.uploaded.len(),
                summary.failed.len()
            );
            for (file, why) in &summary.failed {
                eprintln!("  {file}: {why}");
            }
            if summary.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("sync: {e}");
            ExitCode::from(3)
        }
    }
}

fn api_key(name: &str, role: &str) -> ExitCode {
    let Some(role) = pacs_lite::model::Role::parse(role) else {
        eprintln!("pacs-lite: unknown role {role:?} (viewer, uploader or admin)");
        return ExitCode::from(2);
    };
    let key = pacs_lite::auth::new_api_key();
    println!("key: {key}");
    println!(
        "[[auth.api_keys]]\nname = {name:?}\nrole = \"{}\"\nsha256 = \"{}\"",
        role.as_str(),
        pacs_lite::auth::hash_api_key(&key)
    );
    ExitCode::SUCCESS
}

async fn migrate(config: Config) -> anyhow::Result<ExitCode> {
    let ingest = open_backends(&config).await?;
    let (studies, series, instances) = ingest.index().counts().await?;
    println!("index schema is current: {studies} studies, {series} series, {instances} instances");
    ingest.index().close().await;
    Ok(ExitCode::SUCCESS)
}

async fn compress(
    config: Config,
    study: Option<String>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let study = match study.as_deref().map(pacs_lite::model::Uid::parse) {
        Some(Ok(uid)) => Some(uid),
        Some(Err(e)) => {
            eprintln!("compress: --study: {e}");
            return Ok(ExitCode::from(2));
        }
        None => None,
    };
    let ingest = open_backends(&config).await?;
    let mut outcomes = Vec::new();
    let summary = pacs_lite::compress::run_once(
        &ingest,
        &config.compression,
        study.as_ref(),
        dry_run,
        |c, o| {
            if json {
                outcomes.push(serde_json::json!({ "sop_instance_uid": c.sop_instance_uid.as_str(), "outcome": o }));
            } else {
                println!("{} {o:?}", c.sop_instance_uid);
            }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    ingest.index().close().await;
    if json {
        let out =
            serde_json::json!({ "dry_run": dry_run, "summary": summary, "instances": outcomes });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    let verb = if dry_run {
        "would re-encode"
    } else {
        "re-encoded"
    };
    let saved = summary.bytes_before.saturating_sub(summary.bytes_after);
    eprintln!(
        "compress {verb} {} instance(s): {:.1} MB -> {:.1} MB, {:.1} MB saved ({:.2}x); {} skipped, {} failed (kept as they were)",
        summary.done,
        summary.bytes_before as f64 / 1e6,
        summary.bytes_after as f64 / 1e6,
        saved as f64 / 1e6,
        summary.bytes_before as f64 / (summary.bytes_after.max(1)) as f64,
        summary.skipped,
        summary.failed
    );
    Ok(if summary.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn retention(config: Config, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    if !config.retention.is_on() {
        eprintln!("retention: off (set retention.delete_after_forwarded or retention.max_bytes)");
        return Ok(ExitCode::from(2));
    }
    let ingest = open_backends(&config).await?;
    let plan = pacs_lite::retention::plan(&ingest, &config.retention).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        for (study, reason) in &plan.studies {
            let idle_days =
                (pacs_lite::model::clock::now_millis() - study.last_used_at) as f64 / 86_400_000.0;
            println!(
                "{} {} instance(s) {:.1} MB, unused {idle_days:.1} days ({reason:?})",
                study.study_uid,
                study.instances,
                study.bytes as f64 / 1e6
            );
        }
    }
    let verb = if dry_run { "would delete" } else { "deletes" };
    eprintln!(
        "retention {verb} {} studies: stored {:.1} MB -> {:.1} MB",
        plan.studies.len(),
        plan.stored_bytes as f64 / 1e6,
        plan.bytes_after as f64 / 1e6
    );
    if !dry_run {
        let freed = pacs_lite::retention::apply(&ingest, &plan).await?;
        eprintln!("retention: {:.1} MB freed", freed as f64 / 1e6);
    }
    ingest.index().close().await;
    Ok(ExitCode::SUCCESS)
}

async fn import(
    config: Config,
    paths: Vec<PathBuf>,
    parallel: Option<usize>,
) -> anyhow::Result<ExitCode> {
    let ingest = open_backends(&config).await?;
    let files = pacs_lite::import::collect_files(&paths)?;
    let started = std::time::Instant::now();
    let parallel = parallel.unwrap_or(config.ingest.import_parallelism);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let summary = pacs_lite::import::import(&ingest, files, parallel, tty).await;
    println!(
        "import: {} stored, {} already stored, {} rejected; {:.1} MB in {:.2} s",
        summary.stored,
        summary.already_stored,
        summary.rejected.len(),
        summary.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    for (path, r) in &summary.rejected {
        println!("  rejected {}: {}", path.display(), r.detail);
    }
    ingest.index().close().await;
    Ok(if summary.rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn verify(
    config: Config,
    opts: pacs_lite::verify::VerifyOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let ingest = open_backends(&config).await?;
    if opts.delete_orphans {
        // After a power failure, objects whose rows a relaxed index lost look like
        // orphans until recovered.
        pacs_lite::app::recover(&ingest).await?;
    }
    let report = pacs_lite::verify::verify(&ingest, opts).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    ingest.index().close().await;
    let clean = report.missing.is_empty()
        && report.mismatched.is_empty()
        && (report.orphans.len() == report.reindexed.len() + report.deleted.len());
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(r: &pacs_lite::verify::VerifyReport) {
    println!(
        "verify: {} instances checked, {} intact ({:.1} MB), {} missing, {} mismatched, {} orphans",
        r.instances_checked,
        r.intact,
        r.bytes_checked as f64 / 1e6,
        r.missing.len(),
        r.mismatched.len(),
        r.orphans.len()
    );
    let lists = [
        ("missing", &r.missing),
        ("mismatched", &r.mismatched),
        ("orphan", &r.orphans),
        ("recent orphan (skipped)", &r.recent_orphans),
        ("foreign file", &r.foreign),
        ("re-indexed", &r.reindexed),
        ("torn (does not hash to its key)", &r.torn),
        (
            "another version of an indexed instance (kept)",
            &r.conflicting,
        ),
        ("deleted", &r.deleted),
    ];
    for (label, items) in lists {
        for item in items {
            println!("  {label}: {item}");
        }
    }
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
