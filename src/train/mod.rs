//! Supervised and distillation training: SGD, evaluation, per-epoch metrics,
//! atomic checkpoints and resume.
//!
//! A run is reproducible bit for bit on one machine when the seed, the
//! thread count, the device and libtorch's CPU kernel set
//! (`ATEN_CPU_CAPABILITY`) are the same. Everything random is derived from
//! the seed: parameter initialisation from `tch::manual_seed`, the data order
//! and augmentation from (seed, epoch, batch), negative sampling from
//! (seed, step). So a run resumed from the checkpoint of epoch e repeats
//! epoch e + 1 exactly as an uninterrupted run would.

mod checkpoint;
mod metrics;
mod sgd;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

pub use checkpoint::{CheckpointMeta, CHECKPOINT_FILE, CHECKPOINT_META_FILE};
pub use metrics::{EpochRow, MetricsLog, METRICS_FILE};
pub use sgd::Sgd;

use crate::config::{RunConfig, StudentConfig, TrainConfig};
use crate::data::{self, Dataset, Split};
use crate::device::device_name;
use crate::distill::{self, DistillShapes, Distiller, StepInput};
use crate::models::{self, Network};

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

impl Summary {
    /// Builds the summary of `log` after `epochs_done` of `epochs`.
    pub fn from_log(
        log: &MetricsLog,
        epochs: i64,
        wall_seconds: f64,
        options: &RunOptions,
    ) -> Summary {
        let last = log.rows.last();
        let best = log.best();
        let epochs_done = last.map_or(0, |r| r.epoch);
        Summary {
            status: if epochs_done >= epochs { RunStatus::Finished } else { RunStatus::Running },
            error: None,
            epochs_done,
            epochs,
            last_top1: last.map(|r| r.test_top1),
            last_top5: last.map(|r| r.test_top5),
            best_top1: best.map(|r| r.test_top1),
            best_top5: best.map(|r| r.test_top5),
            best_epoch: best.map(|r| r.epoch),
            wall_seconds,
            device: device_name(options.device),
            threads: options.threads,
        }
    }
}

/// Settings of one session that are not part of a run's identity: they do
/// not change its results, apart from the last bits that the thread count and
/// the device change.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub device: Device,
    /// libtorch intra-op threads; keep it fixed so that reruns repeat bit for
    /// bit.
    pub threads: i64,
    /// Folder of the dataset's files (ignored for synthetic data).
    pub data_dir: PathBuf,
    /// For a student: the teacher's run folder or checkpoint file.
    pub teacher_checkpoint: Option<PathBuf>,
    /// Draw progress bars.
    pub progress: bool,
}

/// Trains `config` in `run_dir`, resuming from its checkpoint if one exists.
///
/// Writes `metrics.csv` (one row per epoch) and `checkpoint.safetensors` with
/// `checkpoint.json` into `run_dir` after every epoch, each atomically, and
/// returns the summary; the caller stores it. A finished run returns at once.
pub fn run(config: &RunConfig, run_dir: &Path, options: &RunOptions) -> anyhow::Result<Summary> {
    let cfg = config.train();
    cfg.validate()?;
    if let RunConfig::Student(s) = config {
        s.distill.validate()?;
    }
    if options.threads < 1 {
        bail!("invalid thread count {}: expected at least 1", options.threads);
    }
    crate::fsutil::ensure_writable_dir(run_dir)?;
    tch::set_num_threads(options.threads as i32);

    let (train_set, test_set) = load_data(cfg, options)?;
    let num_classes = train_set.num_classes;

    // Initialise the network the same way in every session; a resume then
    // overwrites it with the checkpoint.
    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(options.device);
    let student = models::build(cfg.model, &vs.root(), num_classes);
    let mut teacher = None;
    let mut distiller = None;
    // A vanilla student is plain cross-entropy training: no teacher runs.
    let student_config = match config {
        RunConfig::Student(s) if s.distill.needs_teacher() => Some(s),
        _ => None,
    };
    if let Some(s) = student_config {
        let (teacher_vs, net) = load_teacher(s, num_classes, options)?;
        let shapes = DistillShapes {
            student_dim: student.feat_dim(),
            teacher_dim: net.feat_dim(),
            num_classes,
            num_data: train_set.len(),
        };
        let p = vs.root() / "distill";
        distiller = Some(distill::build(&s.distill, &p, &shapes, &train_set.labels, cfg.seed)?);
        teacher = Some((teacher_vs, net));
    }
    let mut sgd = Sgd::new(&vs, cfg.momentum, cfg.weight_decay);

    let meta = CheckpointMeta { arch: cfg.model, num_classes, epochs_done: 0, run_id: config.id() };
    let metrics_path = run_dir.join(METRICS_FILE);
    let (mut log, mut wall_before) = resume(run_dir, &vs, &mut sgd, &meta, &metrics_path)?;
    let start_epoch = log.rows.last().map_or(0, |r| r.epoch);

    let loop_state = LoopState {
        cfg,
        options,
        student: student.as_ref(),
        teacher: teacher.as_ref().map(|(_, net)| net.as_ref()),
        train_set: &train_set,
        test_set: &test_set,
        run_dir,
    };
    for epoch in start_epoch..cfg.epochs {
        let epoch_start = Instant::now();
        let row = loop_state.train_epoch(epoch, &mut sgd, distiller.as_deref_mut(), &log)?;
        let row = EpochRow { seconds: epoch_start.elapsed().as_secs_f64(), ..row };
        tracing::info!(
            "run {}: epoch {:>3}/{} lr {:.4} loss {:.4} train top1 {:5.2} | test top1 {:5.2} top5 {:5.2} | {:.1}s",
            meta.run_id,
            row.epoch,
            cfg.epochs,
            row.lr,
            row.train_loss,
            row.train_top1,
            row.test_top1,
            row.test_top5,
            row.seconds
        );
        log.rows.push(row);
        // Metrics first, checkpoint second: after a kill in between, the
        // resume drops the row of the epoch the checkpoint lacks.
        log.write(&metrics_path)?;
        wall_before += epoch_start.elapsed().as_secs_f64();
        let progress = checkpoint::Progress { epochs_done: epoch + 1, wall_seconds: wall_before };
        let meta = CheckpointMeta { epochs_done: epoch + 1, ..meta.clone() };
        checkpoint::save(run_dir, &vs, sgd.state(), progress, &meta)?;
    }
    Ok(Summary::from_log(&log, cfg.epochs, wall_before, options))
}

/// Seed of the test subset: fixed, so that runs of every seed are evaluated
/// on the same images.
const TEST_SUBSET_SEED: u64 = 0;

/// Loads the train and test splits (the train split cut to the configured
/// subset) on the run's device.
fn load_data(cfg: &TrainConfig, options: &RunOptions) -> anyhow::Result<(Dataset, Dataset)> {
    let start = Instant::now();
    let mut train_set = data::load(cfg.dataset, &options.data_dir, Split::Train)?;
    if let Some(n) = cfg.subset {
        train_set = train_set.subset(n, cfg.seed)?;
    }
    let mut test_set = data::load(cfg.dataset, &options.data_dir, Split::Test)?;
    if let Some(n) = cfg.test_subset {
        test_set = test_set.subset(n, TEST_SUBSET_SEED)?;
    }
    tracing::info!(
        "loaded {}: {} train and {} test images in {:.1}s",
        cfg.dataset,
        train_set.len(),
        test_set.len(),
        start.elapsed().as_secs_f64()
    );
    Ok((train_set.to_device(options.device), test_set.to_device(options.device)))
}

/// Restores a checkpoint left in `run_dir`, if any, and returns the metrics
/// up to it and the wall time spent so far.
fn resume(
    run_dir: &Path,
    vs: &nn::VarStore,
    sgd: &mut Sgd,
    meta: &CheckpointMeta,
    metrics_path: &Path,
) -> anyhow::Result<(MetricsLog, f64)> {
    let file = run_dir.join(CHECKPOINT_FILE);
    if !file.exists() {
        return Ok((MetricsLog::default(), 0.0));
    }
    let entries = checkpoint::read(&file)?;
    checkpoint::load_into(vs, &entries, "", &file)?;
    sgd.load_state(entries.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect())?;
    let progress = checkpoint::progress(&entries, &file)?;
    let log = MetricsLog::read(metrics_path, progress.epochs_done)?;
    if log.rows.len() as i64 != progress.epochs_done {
        bail!(
            "{} contains {} epochs but {} has {}: the folder was changed by hand; move it away to restart run {}",
            file.display(),
            progress.epochs_done,
            metrics_path.display(),
            log.rows.len(),
            meta.run_id
        );
    }
    tracing::info!("run {}: resuming after epoch {}", meta.run_id, progress.epochs_done);
    Ok((log, progress.wall_seconds))
}

/// Builds the teacher of `s` and loads its checkpoint, frozen.
fn load_teacher(
    s: &StudentConfig,
    num_classes: i64,
    options: &RunOptions,
) -> anyhow::Result<(nn::VarStore, Box<dyn Network>)> {
    let Some(path) = &options.teacher_checkpoint else {
        bail!("a distillation run needs the teacher's checkpoint (--teacher)");
    };
    let (file, meta) = checkpoint::locate(path)?;
    if meta.arch != s.teacher.model || meta.num_classes != num_classes {
        bail!(
            "teacher checkpoint {} holds a {} with {} classes, but this run needs a {} with {} classes; \
             train one with: crcd train-teacher --model {} --dataset {}",
            file.display(),
            meta.arch,
            meta.num_classes,
            s.teacher.model,
            num_classes,
            s.teacher.model,
            s.teacher.dataset
        );
    }
    if meta.epochs_done < s.teacher.epochs {
        bail!(
            "teacher checkpoint {} is unfinished ({} of {} epochs); rerun its train-teacher \
             command to finish it",
            file.display(),
            meta.epochs_done,
            s.teacher.epochs
        );
    }
    let mut vs = nn::VarStore::new(options.device);
    let net = models::build(s.teacher.model, &vs.root(), num_classes);
    let entries = checkpoint::read(&file)?;
    checkpoint::check_no_extra_variables(&vs, &entries, &file)?;
    // The teacher's file may also hold its own optimizer state; only the
    // network's variables are read.
    checkpoint::load_into(&vs, &entries, "", &file)?;
    vs.freeze();
    Ok((vs, net))
}

/// Read-only inputs of an epoch: settings, networks, data and run folder.
struct LoopState<'a> {
    cfg: &'a TrainConfig,
    options: &'a RunOptions,
    student: &'a dyn Network,
    teacher: Option<&'a dyn Network>,
    train_set: &'a Dataset,
    test_set: &'a Dataset,
    run_dir: &'a Path,
}

impl LoopState<'_> {
    /// Returns the number of optimizer steps per epoch.
    fn steps_per_epoch(&self) -> i64 {
        let batches = (self.train_set.len() + self.cfg.batch_size - 1) / self.cfg.batch_size;
        self.cfg.max_steps_per_epoch.map_or(batches, |m| m.min(batches))
    }

    /// Trains epoch `epoch` (0-based) and evaluates on the test split.
    fn train_epoch(
        &self,
        epoch: i64,
        sgd: &mut Sgd,
        mut distiller: Option<&mut (dyn Distiller + '_)>,
        log: &MetricsLog,
    ) -> anyhow::Result<EpochRow> {
        let mut lr = self.cfg.lr_at(epoch as f64);
        let steps = self.steps_per_epoch();
        let total_steps = steps * self.cfg.epochs;
        let bar =
            self.progress_bar(steps as u64, format!("epoch {}/{}", epoch + 1, self.cfg.epochs));

        let mut loss_sum = 0.0;
        let mut correct = 0i64;
        let mut seen = 0i64;
        let mut term_sums: Vec<(String, f64)> = Vec::new();
        let mut weights: Vec<(String, f64)> = Vec::new();
        let batches = self.train_set.train_batches(self.cfg.batch_size, self.cfg.seed, epoch);
        for (i, batch) in batches.take(steps as usize).enumerate() {
            let step = epoch * steps + i as i64;
            lr = self.cfg.lr_at(epoch as f64 + i as f64 / steps as f64);
            let nets = StepNets { student: self.student, teacher: self.teacher };
            let progress = step as f64 / total_steps as f64;
            let outcome = match train_step(
                &nets,
                distiller.as_deref_mut(),
                sgd,
                &batch,
                lr,
                step,
                progress,
            ) {
                Ok(outcome) => outcome,
                Err(StepError::NonFinite { term, value }) => {
                    bail!(self.non_finite_error(&term, value, epoch, i as i64, step, log))
                }
                Err(StepError::Other(err)) => return Err(err),
            };
            weights.clear();
            for (k, (name, value, weight)) in outcome.terms.into_iter().enumerate() {
                if term_sums.len() <= k {
                    term_sums.push((name.to_string(), 0.0));
                }
                term_sums[k].1 += value;
                let short = name.strip_prefix("loss_").unwrap_or(name);
                weights.push((format!("weight_{short}"), weight));
            }
            loss_sum += outcome.loss;
            correct += outcome.correct;
            seen += batch.labels.size()[0];
            bar.inc(1);
        }
        bar.finish_and_clear();

        let (test_loss, test_top1, test_top5) = self.evaluate();
        let n = steps.max(1) as f64;
        Ok(EpochRow {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / n,
            train_top1: 100.0 * correct as f64 / seen.max(1) as f64,
            test_loss,
            test_top1,
            test_top5,
            seconds: 0.0,
            terms: term_sums.into_iter().map(|(name, sum)| (name, sum / n)).collect(),
            weights,
        })
    }

    /// Returns mean cross-entropy, top-1 and top-5 (percent) on the test
    /// split, with BatchNorm in eval mode.
    fn evaluate(&self) -> (f64, f64, f64) {
        evaluate(self.student, self.test_set, self.cfg.batch_size.max(256))
    }

    fn non_finite_error(
        &self,
        term: &str,
        value: f64,
        epoch: i64,
        step_in_epoch: i64,
        step: i64,
        log: &MetricsLog,
    ) -> String {
        let kept = match log.rows.last() {
            Some(row) => format!("the checkpoint of epoch {} is kept", row.epoch),
            None => "no checkpoint was written yet".to_string(),
        };
        format!(
            "loss term {term} is {value} at epoch {}, step {} (global step {step}); training stopped and {kept} in {}; lower the learning rate or the loss weights",
            epoch + 1,
            step_in_epoch + 1,
            self.run_dir.display()
        )
    }

    fn progress_bar(&self, len: u64, message: String) -> ProgressBar {
        if !self.options.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len).with_message(message);
        let style =
            ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .expect("static progress template is valid")
                .progress_chars("=> ");
        bar.set_style(style);
        bar
    }
}

/// The networks of one optimizer step.
pub struct StepNets<'a> {
    pub student: &'a dyn Network,
    /// The frozen teacher of a distillation run.
    pub teacher: Option<&'a dyn Network>,
}

/// Results of one optimizer step.
#[derive(Debug)]
pub struct StepOutcome {
    /// The total loss that was backpropagated.
    pub loss: f64,
    /// Each loss term's name, unweighted value and weight.
    pub terms: Vec<(&'static str, f64, f64)>,
    /// Training images of the batch classified correctly (top-1).
    pub correct: i64,
}

/// Failure of one optimizer step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A loss term (or the total, named `loss`) was NaN or infinite; no
    /// parameter was updated.
    #[error("loss term {term} is {value}")]
    NonFinite { term: String, value: f64 },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Runs one optimizer step on `batch`: the student in train mode, the
/// teacher (if any) under no_grad in eval mode (or train mode when the
/// distiller requests it), the distiller's loss terms or plain cross-entropy,
/// backward and SGD at `lr`. `progress` is the global step over the total.
pub fn train_step(
    nets: &StepNets,
    distiller: Option<&mut (dyn Distiller + '_)>,
    sgd: &mut Sgd,
    batch: &data::Batch,
    lr: f64,
    step: i64,
    progress: f64,
) -> Result<StepOutcome, StepError> {
    let out = nets.student.forward_t(&batch.images, true);
    let mut terms = Vec::new();
    let loss = match (nets.teacher, distiller) {
        (Some(teacher), Some(distiller)) => {
            let teacher_out =
                tch::no_grad(|| teacher.forward_t(&batch.images, distiller.teacher_train_mode()));
            let input = StepInput {
                student: &out,
                teacher: &teacher_out,
                student_classifier: nets.student.classifier(),
                teacher_classifier: teacher.classifier(),
                labels: &batch.labels,
                indices: &batch.indices,
                progress,
                step,
            };
            let mut total = Tensor::zeros([], (Kind::Float, out.logits.device()));
            for term in distiller.losses(&input)? {
                let value = term.value.double_value(&[]);
                if !value.is_finite() {
                    return Err(StepError::NonFinite { term: term.name.to_string(), value });
                }
                if term.weight != 0.0 {
                    total += &term.value * term.weight;
                }
                terms.push((term.name, value, term.weight));
            }
            total
        }
        (None, None) => out.logits.cross_entropy_for_logits(&batch.labels),
        _ => {
            return Err(
                anyhow::anyhow!("a distillation step needs both a teacher and a distiller").into()
            )
        }
    };
    let value = loss.double_value(&[]);
    if !value.is_finite() {
        return Err(StepError::NonFinite { term: "loss".into(), value });
    }
    sgd.zero_grad();
    loss.backward();
    sgd.step(lr);
    let (correct, _) = metrics::correct_top1_topk(&out.logits.detach(), &batch.labels, 1);
    Ok(StepOutcome { loss: value, terms, correct })
}

/// Returns mean cross-entropy, top-1 and top-5 accuracy (percent) of `net`
/// on `data`, with BatchNorm in eval mode and no gradient.
pub fn evaluate(net: &dyn Network, data: &Dataset, batch_size: i64) -> (f64, f64, f64) {
    tch::no_grad(|| {
        let mut loss_sum = 0.0;
        let (mut top1, mut top5, mut seen) = (0i64, 0i64, 0i64);
        for batch in data.test_batches(batch_size) {
            let out = net.forward_t(&batch.images, false);
            let n = batch.labels.size()[0];
            let loss = out.logits.cross_entropy_for_logits(&batch.labels).double_value(&[]);
            loss_sum += loss * n as f64;
            let (c1, c5) = metrics::correct_top1_topk(&out.logits, &batch.labels, 5);
            top1 += c1;
            top5 += c5;
            seen += n;
        }
        let seen_f = seen.max(1) as f64;
        (loss_sum / seen_f, 100.0 * top1 as f64 / seen_f, 100.0 * top5 as f64 / seen_f)
    })
}

/// Loads a checkpoint into a freshly built network and evaluates it on the
/// test split of `dataset`; returns the checkpoint's description and
/// (loss, top-1, top-5).
pub fn evaluate_checkpoint(
    path: &Path,
    dataset: crate::data::DatasetName,
    data_dir: &Path,
    device: Device,
) -> anyhow::Result<(CheckpointMeta, (f64, f64, f64))> {
    let (file, meta) = checkpoint::locate(path)?;
    let test_set = data::load(dataset, data_dir, Split::Test)?;
    if test_set.num_classes != meta.num_classes {
        bail!(
            "checkpoint {} is a {}-class {}, but {dataset} has {} classes; pass the dataset it was trained on",
            file.display(),
            meta.num_classes,
            meta.arch,
            test_set.num_classes
        );
    }
    let vs = nn::VarStore::new(device);
    let net = models::build(meta.arch, &vs.root(), meta.num_classes);
    let entries = checkpoint::read(&file)?;
    checkpoint::check_no_extra_variables(&vs, &entries, &file)?;
    checkpoint::load_into(&vs, &entries, "", &file)
        .with_context(|| format!("failed to load {} as {}", file.display(), meta.arch))?;
    let test_set = test_set.to_device(device);
    Ok((meta, evaluate(net.as_ref(), &test_set, 256)))
}
