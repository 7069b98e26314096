//! The run store: one folder per run under `<results>/runs/<id>/`.
//!
//! A run folder contains `config.json` (the resolved [`RunConfig`], whose id
//! is the folder name), `summary.json` (the [`Summary`]), a `lock` file, and
//! whatever the trainer writes (metrics, checkpoints). Every file the store
//! writes is replaced atomically: a temporary file in the same folder is
//! written, synced and renamed over the target.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::Device;

use crate::config::RunConfig;
use crate::train::{RunStatus, Summary};

/// A store problem that stops a suite before or during training.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("results folder {} is not writable: {source}\nchoose a writable folder with --results", dir.display())]
    NotWritable { dir: PathBuf, source: io::Error },
    #[error(
        "run folder {} does not match its config: config.json has id {found}\n\
         the folder was renamed or its config.json edited; move the folder away to rerun the run"
    , dir.display())]
    ConfigMismatch { dir: PathBuf, found: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: invalid JSON: {source}\nmove the run folder away to rerun the run", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
}

/// State of a run in the store.
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    /// No folder, or a folder without `config.json`.
    New,
    /// Started but neither finished nor failed: no summary, or status running.
    Interrupted(Option<Summary>),
    Finished(Summary),
    Failed(Summary),
}

impl RunState {
    /// Returns the word the dry-run shows for this state.
    pub fn label(&self) -> &'static str {
        match self {
            RunState::New => "pending",
            RunState::Interrupted(_) => "resume",
            RunState::Finished(_) => "done",
            RunState::Failed(_) => "failed",
        }
    }
}

/// An exclusive lock on a run, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// The run folders under one results folder.
#[derive(Clone, Debug)]
pub struct Store {
    results: PathBuf,
    runs: PathBuf,
}

/// File name of a run's resolved configuration.
pub const CONFIG_FILE: &str = "config.json";
/// File name of a run's summary.
pub const SUMMARY_FILE: &str = "summary.json";
const LOCK_FILE: &str = "lock";

impl Store {
    /// Opens the store under `results_dir` without touching the disk.
    pub fn new(results_dir: &Path) -> Store {
        Store { results: results_dir.to_owned(), runs: results_dir.join("runs") }
    }

    pub fn results_dir(&self) -> &Path {
        &self.results
    }

    /// Returns the folder of run `id`.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.runs.join(id)
    }

    /// Creates the runs folder and checks that a file can be created in it.
    pub fn ensure_writable(&self) -> Result<(), StoreError> {
        let not_writable = |source| StoreError::NotWritable { dir: self.results.clone(), source };
        fs::create_dir_all(&self.runs).map_err(not_writable)?;
        tempfile::NamedTempFile::new_in(&self.runs).map_err(not_writable)?;
        Ok(())
    }

    /// Reads the stored config of run `id`, checking that its id is `id`.
    pub fn read_config(&self, id: &str) -> Result<Option<RunConfig>, StoreError> {
        let dir = self.run_dir(id);
        let Some(config) = read_json::<RunConfig>(&dir.join(CONFIG_FILE))? else {
            return Ok(None);
        };
        let found = config.id();
        if found != id {
            return Err(StoreError::ConfigMismatch { dir, found });
        }
        Ok(Some(config))
    }

    pub fn read_summary(&self, id: &str) -> Result<Option<Summary>, StoreError> {
        read_json(&self.run_dir(id).join(SUMMARY_FILE))
    }

    /// Returns the state of run `id`; fails when its folder does not match it.
    pub fn state(&self, id: &str) -> Result<RunState, StoreError> {
        if self.read_config(id)?.is_none() {
            return Ok(RunState::New);
        }
        Ok(match self.read_summary(id)? {
            None => RunState::Interrupted(None),
            Some(s) => match s.status {
                RunStatus::Running => RunState::Interrupted(Some(s)),
                RunStatus::Finished => RunState::Finished(s),
                RunStatus::Failed => RunState::Failed(s),
            },
        })
    }

    /// Creates the folder of `config` and writes its `config.json`.
    pub fn write_config(&self, config: &RunConfig) -> Result<PathBuf, StoreError> {
        let dir = self.run_dir(&config.id());
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
        write_json(&dir.join(CONFIG_FILE), config)?;
        Ok(dir)
    }

    /// Writes the summary of run `id`; its folder must exist.
    pub fn write_summary(&self, id: &str, summary: &Summary) -> Result<(), StoreError> {
        write_json(&self.run_dir(id).join(SUMMARY_FILE), summary)
    }

    /// Takes the exclusive lock of run `id`, creating its folder; `None` when
    /// another process (or another handle in this one) holds it.
    pub fn try_lock(&self, id: &str) -> Result<Option<RunLock>, StoreError> {
        let dir = self.run_dir(id);
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Io { path: path.clone(), source })?;
        // Called through the trait: std's inherent `File::try_lock` would
        // shadow the method form.
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => Ok(Some(RunLock { _file: file })),
            Err(fs4::TryLockError::WouldBlock) => Ok(None),
            Err(fs4::TryLockError::Error(source)) => Err(StoreError::Io { path, source }),
        }
    }
}

pub use crate::fsutil::write_atomic;

/// Writes `value` as pretty JSON with a final newline, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|source| StoreError::Json { path: path.to_owned(), source })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes).map_err(|source| StoreError::Io { path: path.to_owned(), source })
}

/// Reads JSON from `path`; `None` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
            return Ok(None)
        }
        Err(source) => return Err(StoreError::Io { path: path.to_owned(), source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StoreError::Json { path: path.to_owned(), source })
}

pub use crate::device::device_name;

/// Builds the summary stored when a session starts `config`: the previous
/// session's progress and results with status running.
pub fn running_summary(
    config: &RunConfig,
    previous: Option<&Summary>,
    device: Device,
    threads: i64,
) -> Summary {
    let mut summary = previous.cloned().unwrap_or(Summary {
        status: RunStatus::Running,
        error: None,
        epochs_done: 0,
        epochs: config.train().epochs,
        last_top1: None,
        last_top5: None,
        best_top1: None,
        best_top5: None,
        best_epoch: None,
        wall_seconds: 0.0,
        device: String::new(),
        threads,
    });
    summary.status = RunStatus::Running;
    summary.error = None;
    summary.epochs = config.train().epochs;
    summary.device = device_name(device);
    summary.threads = threads;
    summary
}

/// Turns `summary` into that of a failed run with `error` joined into one line.
pub fn failed_summary(mut summary: Summary, error: &str) -> Summary {
    summary.status = RunStatus::Failed;
    summary.error = Some(error.split_whitespace().collect::<Vec<_>>().join(" "));
    summary
}
