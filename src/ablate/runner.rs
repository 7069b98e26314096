//! The loop that trains a plan's runs through the store.
//!
//! For each run of its share the runner skips a finished run and takes the
//! run's lock, skipping the run when another process holds it. It then writes
//! `config.json` and a running `summary.json`, calls the trainer, and stores
//! the summary it returns. An error or a panic of the trainer is stored as a
//! failed summary, and the loop goes on. A failed or interrupted run is
//! started again, and the trainer resumes from its checkpoint.
//!
//! A student first needs its teacher finished. When no process has taken the
//! teacher, the runner trains it, even when it belongs to another shard. When
//! another process is training it, the runner polls its lock until it is free.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::ProgressBar;
use tch::Device;

use super::plan::{Plan, PlannedRun, RunKind};
use super::store::{failed_summary, running_summary, RunState, Store, StoreError};
use crate::config::RunConfig;
use crate::train::{RunOptions, RunStatus, Summary};

/// The training call: `crate::train::run` in the CLI.
pub type Trainer<'a> = &'a dyn Fn(&RunConfig, &Path, &RunOptions) -> anyhow::Result<Summary>;

/// Session settings that do not change the runs' results.
#[derive(Clone, Debug)]
pub struct Session {
    pub device: Device,
    pub threads: i64,
    pub data_dir: PathBuf,
    /// Draw the trainer's progress bars.
    pub progress: bool,
    /// Time between two looks at a teacher that another process trains.
    pub poll_interval: Duration,
}

/// Outcome of the runs of one suite in this process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SuiteOutcome {
    pub suite: String,
    pub profile: String,
    /// Runs in the plan.
    pub planned: usize,
    /// Runs in this process's share.
    pub share: usize,
    /// Runs trained to the end in this session, started fresh.
    pub finished: Vec<String>,
    /// Runs trained to the end in this session, resumed or retried.
    pub resumed: Vec<String>,
    /// Runs found finished and skipped.
    pub already_done: Vec<String>,
    /// Runs skipped because another process held their lock.
    pub locked: Vec<String>,
    /// Runs whose trainer returned with status running.
    pub unfinished: Vec<String>,
    /// Failed runs with their error.
    pub failed: Vec<(String, String)>,
}

/// Result of one attempt at a run.
#[derive(Clone, Debug, PartialEq)]
enum Attempt {
    AlreadyDone,
    Locked,
    Finished { resumed: bool },
    Unfinished,
    Failed(String),
}

/// Action on a run once its lock is held.
enum Action<'p> {
    Train {
        teacher_dir: Option<PathBuf>,
    },
    /// Record the run as failed without training, e.g. when its teacher failed.
    Fail(&'p str),
}

/// Trains plans through a store.
pub struct Runner<'a> {
    store: &'a Store,
    trainer: Trainer<'a>,
    session: &'a Session,
    /// Teachers this process already settled, with `Err` containing the failure.
    teachers: HashMap<String, Result<(), String>>,
}

impl<'a> Runner<'a> {
    pub fn new(store: &'a Store, trainer: Trainer<'a>, session: &'a Session) -> Runner<'a> {
        Runner { store, trainer, session, teachers: HashMap::new() }
    }

    /// Runs the plan indices of `share` in order.
    pub fn run_plan(
        &mut self,
        plan: &Plan,
        share: &[usize],
        bar: &ProgressBar,
    ) -> Result<SuiteOutcome, StoreError> {
        let mut outcome = SuiteOutcome {
            suite: plan.suite.clone(),
            profile: plan.profile.clone(),
            planned: plan.runs.len(),
            share: share.len(),
            ..SuiteOutcome::default()
        };
        for (n, &index) in share.iter().enumerate() {
            let run = &plan.runs[index];
            let position = format!("{}/{}", n + 1, share.len());
            bar.set_message(format!("{} {}", run.kind, run.id));
            let attempt = match run.teacher {
                None => self.attempt(run, &position, Action::Train { teacher_dir: None }, bar)?,
                Some(t) => {
                    let teacher = &plan.runs[t];
                    match self.ensure_teacher(teacher, &mut outcome, bar)? {
                        Ok(()) => {
                            let teacher_dir = Some(self.store.run_dir(&teacher.id));
                            self.attempt(run, &position, Action::Train { teacher_dir }, bar)?
                        }
                        Err(error) => {
                            let message = format!("teacher {} failed: {error}", teacher.id);
                            self.attempt(run, &position, Action::Fail(&message), bar)?
                        }
                    }
                }
            };
            if attempt == Attempt::Locked {
                tracing::info!("run {} ({position}): skip, another process holds its lock", run.id);
            }
            if run.kind == RunKind::Teacher {
                self.settle_teacher(&run.id, &attempt);
            }
            record(&mut outcome, &run.id, attempt);
            bar.inc(1);
        }
        Ok(outcome)
    }

    /// Makes sure `teacher` is finished, training it here when no process has
    /// it, and waiting while another process holds its lock. Returns `Err`
    /// with the error when it failed.
    fn ensure_teacher(
        &mut self,
        teacher: &PlannedRun,
        outcome: &mut SuiteOutcome,
        bar: &ProgressBar,
    ) -> Result<Result<(), String>, StoreError> {
        if let Some(settled) = self.teachers.get(&teacher.id) {
            return Ok(settled.clone());
        }
        let mut waited = false;
        loop {
            let position = "needed by a student";
            let attempt =
                self.attempt(teacher, position, Action::Train { teacher_dir: None }, bar)?;
            if attempt == Attempt::Locked {
                if !waited {
                    tracing::info!(
                        "run {} (teacher {}): waiting, another process holds its lock",
                        teacher.id,
                        teacher.pair.teacher
                    );
                    waited = true;
                }
                std::thread::sleep(self.session.poll_interval);
                continue;
            }
            self.settle_teacher(&teacher.id, &attempt);
            let settled = self.teachers[&teacher.id].clone();
            // A teacher from another share that this process trained counts
            // as this suite's work; one found done was counted by its owner.
            if matches!(
                attempt,
                Attempt::Finished { .. } | Attempt::Failed(_) | Attempt::Unfinished
            ) {
                record(outcome, &teacher.id, attempt);
            }
            return Ok(settled);
        }
    }

    fn settle_teacher(&mut self, id: &str, attempt: &Attempt) {
        let settled = match attempt {
            Attempt::AlreadyDone | Attempt::Finished { .. } => Ok(()),
            Attempt::Failed(error) => Err(error.clone()),
            Attempt::Unfinished => Err("the trainer returned before the last epoch".to_owned()),
            Attempt::Locked => return,
        };
        self.teachers.insert(id.to_owned(), settled);
    }

    /// Runs `action` on `run` under its lock, unless it is finished or locked.
    fn attempt(
        &self,
        run: &PlannedRun,
        position: &str,
        action: Action<'_>,
        bar: &ProgressBar,
    ) -> Result<Attempt, StoreError> {
        let id = &run.id;
        if let RunState::Finished(_) = self.store.state(id)? {
            tracing::info!("run {id} ({position}): skip, finished before");
            return Ok(Attempt::AlreadyDone);
        }
        let Some(_lock) = self.store.try_lock(id)? else {
            return Ok(Attempt::Locked);
        };
        // Another process may have finished the run between the two looks.
        let state = self.store.state(id)?;
        let previous = match &state {
            RunState::Finished(_) => {
                tracing::info!("run {id} ({position}): skip, finished by another process");
                return Ok(Attempt::AlreadyDone);
            }
            RunState::New => None,
            RunState::Interrupted(s) => s.clone(),
            RunState::Failed(s) => Some(s.clone()),
        };
        let resumed = state != RunState::New;
        let dir = self.store.write_config(&run.config)?;
        let running = running_summary(
            &run.config,
            previous.as_ref(),
            self.session.device,
            self.session.threads,
        );

        let teacher_dir = match action {
            Action::Fail(error) => {
                tracing::info!("run {id} ({position}): failed before training: {error}");
                self.store.write_summary(id, &failed_summary(running, error))?;
                return Ok(Attempt::Failed(error.to_owned()));
            }
            Action::Train { teacher_dir } => teacher_dir,
        };
        self.store.write_summary(id, &running)?;
        let verb = match state {
            RunState::New => "start",
            RunState::Failed(_) => "retry",
            _ => "resume",
        };
        tracing::info!("run {id} ({position}): {verb} {}", describe(run));

        let options = RunOptions {
            device: self.session.device,
            threads: self.session.threads,
            data_dir: self.session.data_dir.clone(),
            teacher_checkpoint: teacher_dir,
            progress: self.session.progress,
        };
        let trainer = self.trainer;
        let result = bar.suspend(|| {
            panic::catch_unwind(AssertUnwindSafe(|| trainer(&run.config, &dir, &options)))
        });
        let summary = match result {
            Ok(Ok(summary)) => summary,
            Ok(Err(error)) => failed_summary(running, &format!("{error:#}")),
            Err(payload) => failed_summary(
                running,
                &format!("the trainer panicked: {}", panic_message(&*payload)),
            ),
        };
        self.store.write_summary(id, &summary)?;
        Ok(match summary.status {
            RunStatus::Finished => {
                let top1 = summary.last_top1.map_or("n/a".to_owned(), |t| format!("{t:.2}"));
                tracing::info!("run {id} ({position}): finished, last-epoch top-1 {top1}");
                Attempt::Finished { resumed }
            }
            RunStatus::Failed => {
                let error = summary.error.unwrap_or_else(|| "no error recorded".to_owned());
                tracing::info!("run {id} ({position}): failed: {error}");
                Attempt::Failed(error)
            }
            RunStatus::Running => {
                tracing::info!(
                    "run {id} ({position}): stopped after epoch {} of {}, resumes on the next start",
                    summary.epochs_done,
                    summary.epochs
                );
                Attempt::Unfinished
            }
        })
    }
}

fn record(outcome: &mut SuiteOutcome, id: &str, attempt: Attempt) {
    let id = id.to_owned();
    match attempt {
        Attempt::AlreadyDone => outcome.already_done.push(id),
        Attempt::Locked => outcome.locked.push(id),
        Attempt::Finished { resumed: false } => outcome.finished.push(id),
        Attempt::Finished { resumed: true } => outcome.resumed.push(id),
        Attempt::Unfinished => outcome.unfinished.push(id),
        Attempt::Failed(error) => outcome.failed.push((id, error)),
    }
}

/// Describes a run in one line: kind, pair or network, method and seed.
pub fn describe(run: &PlannedRun) -> String {
    let train = run.config.train();
    match (&run.config, run.kind) {
        (RunConfig::Student(s), _) => format!(
            "student {} from {} by {}, seed {}",
            train.model, s.teacher.model, s.distill.method, train.seed
        ),
        (_, RunKind::Vanilla) => format!("vanilla {}, seed {}", train.model, train.seed),
        _ => format!("teacher {}, seed {}", train.model, train.seed),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".to_owned()
    }
}
