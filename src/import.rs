//! `pacs-lite import PATH…`: walk files and folders and ingest each file through the one
//! ingest path, several at once, with a progress bar and a summary.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::ingest::{Ingest, Outcome, Rejection};
use crate::model::{Origin, OriginKind};

#[derive(Debug, Default)]
pub struct ImportSummary {
    pub stored: u64,
    pub already_stored: u64,
    pub bytes: u64,
    pub rejected: Vec<(PathBuf, Rejection)>,
}

/// Every regular file under the given paths (files are taken as they are).
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files = Vec::new();
    for path in paths {
        if !path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} does not exist", path.display()),
            ));
        }
        for entry in walkdir::WalkDir::new(path)
            .follow_links(true)
            .sort_by_file_name()
        {
            let entry = entry.map_err(std::io::Error::other)?;
            if entry.file_type().is_file() {
                files.push(entry.into_path());
            }
        }
    }
    Ok(files)
}

pub async fn import(
    ingest: &Ingest,
    files: Vec<PathBuf>,
    parallelism: usize,
    show_progress: bool,
) -> ImportSummary {
    let bar = if show_progress {
        ProgressBar::new(files.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} files ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut summary = ImportSummary::default();
    let mut results = futures::stream::iter(files)
        .map(|path| async move {
            let origin = Origin {
                kind: OriginKind::Import,
                who: display_name(&path),
                address: None,
            };
            let outcome = ingest.ingest_file(&path, origin).await;
            (path, outcome)
        })
        .buffer_unordered(parallelism.max(1));
    while let Some((path, outcome)) = results.next().await {
        match outcome {
            Outcome::Stored(a) => {
                summary.stored += 1;
                summary.bytes += a.size;
            }
            Outcome::AlreadyStored(_) => summary.already_stored += 1,
            Outcome::Rejected(r) => {
                bar.suspend(|| eprintln!("rejected {}: {}", path.display(), r.detail));
                summary.rejected.push((path, r));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary
}

fn display_name(path: &Path) -> String {
    path.to_string_lossy().chars().take(256).collect()
}
