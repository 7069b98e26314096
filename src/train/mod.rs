//! Supervised and distillation training: SGD, evaluation, per-epoch metrics,
//! atomic checkpoints and resume.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::config::RunConfig;

/// State of a run, as stored in its `summary.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Finished,
    Failed,
}

/// Outcome of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub status: RunStatus,
    /// The error of a failed run, one line.
    pub error: Option<String>,
    pub epochs_done: i64,
    pub epochs: i64,
    /// Test top-1 and top-5 (percent) after the last finished epoch.
    pub last_top1: Option<f64>,
    pub last_top5: Option<f64>,
    /// Test top-1 (percent) of the best epoch, and that epoch's top-5.
    pub best_top1: Option<f64>,
    pub best_top5: Option<f64>,
    /// 1-based epoch of `best_top1`.
    pub best_epoch: Option<i64>,
    /// Seconds spent training, summed over resumed sessions.
    pub wall_seconds: f64,
    /// Device of the last session, e.g. `cpu` or `cuda:0`.
    pub device: String,
    /// libtorch intra-op threads of the last session.
    pub threads: i64,
}

/// Settings of one session that do not change a run's results (apart from
/// the last bits that thread count and device change) and so are not part of
/// its identity.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub device: Device,
    /// libtorch intra-op threads; fixed so that reruns repeat bit for bit.
    pub threads: i64,
    /// Folder of the dataset's files (ignored for synthetic data).
    pub data_dir: PathBuf,
    /// For a student: the teacher run's folder, which holds its checkpoint.
    pub teacher_dir: Option<PathBuf>,
    /// Draw progress bars.
    pub progress: bool,
}

/// Trains `config` in `run_dir`, resuming from its checkpoint if one exists.
///
/// Writes `metrics.csv` (one row per epoch) and `checkpoint.safetensors` with
/// `checkpoint.json` (after every epoch, atomically) into `run_dir`, and
/// returns the summary; the caller stores it.
pub fn run(config: &RunConfig, run_dir: &Path, options: &RunOptions) -> anyhow::Result<Summary> {
    let _ = (config, run_dir, options);
    todo!("trainer")
}
