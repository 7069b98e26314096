//! Expansion of a suite under a profile into resolved runs.
//!
//! Every run of a plan is a [`RunConfig`] with all defaults filled in, and
//! its id ([`RunConfig::id`]) names its folder in the run store. Teachers are
//! runs too and come first. A vanilla student is supervised training of the
//! student network alone, so it is planned as a [`RunConfig::Teacher`] run of
//! the student architecture: it needs no teacher and is shared by every pair
//! with that student.
//!
//! Teacher seed policy: every teacher trains with seed [`TEACHER_SEED`], and
//! the students of all seeds distil from that one teacher. This follows the
//! CRD benchmark, which distils every student from one pretrained teacher per
//! architecture, so the spread over seeds measures the students only.

use std::collections::HashMap;
use std::fmt;

use super::facts::{dataset_size, negatives_pool, pooled_width};
use super::profile::Profile;
use super::spec::{apply_distill_settings, Key, PublishedTable, Settings, Suite, Value};
use crate::config::{
    DistillConfig, Embed, Method, RunConfig, StudentConfig, TrainConfig, PAPER_EPOCHS,
};
use crate::data::DatasetName;
use crate::models::Arch;

/// Seed of every teacher run (see the module documentation).
pub const TEACHER_SEED: u64 = 0;

/// Seeds of a suite that names none under a profile that names none.
pub const DEFAULT_SEEDS: [u64; 1] = [0];

/// The role of a run in a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// A supervised run that students distil from (it may also be a vanilla
    /// baseline of the same network).
    Teacher,
    /// A supervised run of a student network: the `vanilla` method.
    Vanilla,
    /// A distillation run.
    Student,
}

impl fmt::Display for RunKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunKind::Teacher => "teacher",
            RunKind::Vanilla => "vanilla",
            RunKind::Student => "student",
        })
    }
}

/// A teacher → student pair, after substitution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pair {
    pub teacher: Arch,
    pub student: Arch,
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} → {}", self.teacher, self.student)
    }
}

/// One run of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedRun {
    pub id: String,
    pub config: RunConfig,
    pub kind: RunKind,
    /// Index into [`Plan::runs`] of the teacher a student distils from.
    pub teacher: Option<usize>,
    /// The pair of the first combination that produced the run.
    pub pair: Pair,
    /// The method, `None` for a teacher.
    pub method: Option<Method>,
}

impl PlannedRun {
    pub fn seed(&self) -> u64 {
        self.config.train().seed
    }
}

/// One table cell entry: a run's result belongs to `row` and `pair`.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub row: String,
    pub pair: Pair,
    pub seed: u64,
    /// Index into [`Plan::runs`].
    pub run: usize,
}

/// The runs of one suite under one profile, in execution order.
#[derive(Clone, Debug)]
pub struct Plan {
    pub suite: String,
    pub profile: String,
    pub description: String,
    pub dataset: DatasetName,
    /// Teachers first, then vanilla and distillation students with the seeds
    /// as the outer loop, so that a partial suite has every setting at seed 0.
    pub runs: Vec<PlannedRun>,
    /// Row labels, in order of first appearance.
    pub rows: Vec<String>,
    /// Pairs, in order of first appearance.
    pub pairs: Vec<Pair>,
    pub cells: Vec<Cell>,
    /// The published table to compare with, when the profile reproduces the
    /// protocol that produced it.
    pub published: Option<PublishedTable>,
    /// Reason the suite's published table is not compared, when it names one.
    pub published_note: Option<String>,
    /// Combinations left out, each with its reason.
    pub skipped: Vec<String>,
    /// Substitutions that changed a pair of this suite.
    pub substituted: Vec<(Arch, Arch)>,
}

/// A suite that cannot be planned under a profile.
#[derive(Debug, thiserror::Error)]
#[error("suite {suite}, profile {profile}: {message}")]
pub struct PlanError {
    pub suite: String,
    pub profile: String,
    pub message: String,
}

/// A combination of settings before seeds are applied.
struct Combination {
    settings: Settings,
    row: String,
}

/// A combination resolved under the profile, ready to be seeded.
struct Resolved {
    row: String,
    pair: Pair,
    method: Method,
    distill: DistillConfig,
}

/// Expands `suite` under `profile` (see the module documentation).
pub fn expand(suite: &Suite, profile: &Profile) -> Result<Plan, PlanError> {
    let error = |message: String| PlanError {
        suite: suite.name.clone(),
        profile: profile.name.clone(),
        message,
    };
    let combinations = combine(suite).map_err(error)?;

    let mut skipped = Vec::new();
    let mut substituted = Vec::new();
    let mut resolved = Vec::new();
    for combination in combinations {
        match resolve(combination, profile, &mut substituted).map_err(error)? {
            Ok(r) => resolved.push(r),
            Err(reason) => skipped.push(reason),
        }
    }
    if resolved.is_empty() {
        return Err(error(format!(
            "the plan is empty: every combination is excluded or skipped{}",
            if skipped.is_empty() { String::new() } else { format!(" ({})", skipped.join("; ")) }
        )));
    }

    let seeds: Vec<u64> = profile
        .seeds
        .clone()
        .or_else(|| suite.seeds.clone())
        .unwrap_or_else(|| DEFAULT_SEEDS.to_vec());
    let mut builder = Builder::default();
    for r in resolved.iter().filter(|r| r.method != Method::Vanilla) {
        builder.add_teacher(r, profile).map_err(error)?;
    }
    for &seed in &seeds {
        for r in &resolved {
            builder.add(r, seed, profile).map_err(error)?;
        }
    }

    let (published, published_note) = match suite.published {
        None => (None, None),
        Some(table) => match comparability(profile, &substituted) {
            Ok(()) => (Some(table), None),
            Err(why) => (None, Some(why)),
        },
    };
    let (runs, cells) = builder.finish();
    let mut rows: Vec<String> = Vec::new();
    let mut pairs: Vec<Pair> = Vec::new();
    for cell in &cells {
        if !rows.contains(&cell.row) {
            rows.push(cell.row.clone());
        }
        if !pairs.contains(&cell.pair) {
            pairs.push(cell.pair);
        }
    }
    Ok(Plan {
        suite: suite.name.clone(),
        profile: profile.name.clone(),
        description: suite.description.clone(),
        dataset: profile.dataset,
        runs,
        rows,
        pairs,
        cells,
        published,
        published_note,
        skipped,
        substituted,
    })
}

/// Builds the cartesian product of the suite's dimensions over its base
/// settings and drops the excluded combinations.
fn combine(suite: &Suite) -> Result<Vec<Combination>, String> {
    // Each partial combination carries the parts of its row label.
    let mut partial: Vec<(Settings, Vec<String>)> = vec![(suite.base.clone(), Vec::new())];
    for dim in &suite.dimensions {
        let mut next = Vec::new();
        for (settings, parts) in &partial {
            for entry in &dim.entries {
                let mut settings = settings.clone();
                for (key, value) in dim.keys.iter().zip(&entry.values) {
                    settings.insert(*key, value.clone());
                }
                let mut parts = parts.clone();
                match &entry.label {
                    Some(label) => parts.push(label.clone()),
                    None => parts.extend(
                        dim.keys
                            .iter()
                            .zip(&entry.values)
                            .filter(|(k, _)| !k.is_pair())
                            .map(|(k, v)| row_part(*k, v)),
                    ),
                }
                next.push((settings, parts));
            }
        }
        partial = next;
    }
    let mut combinations: Vec<Combination> = partial
        .into_iter()
        .map(|(settings, parts)| {
            let row = if parts.is_empty() {
                settings.get(&Key::METHOD).map(|v| v.to_string()).unwrap_or_default()
            } else {
                parts.join(", ")
            };
            Combination { settings, row }
        })
        .collect();

    let mut used = vec![false; suite.exclude.len()];
    combinations.retain(|c| {
        let mut keep = true;
        for (rule, used) in suite.exclude.iter().zip(used.iter_mut()) {
            if rule.iter().all(|(k, v)| c.settings.get(k) == Some(v)) {
                *used = true;
                keep = false;
            }
        }
        keep
    });
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(format!(
            "exclude[{i}] matches no combination of the axes: check its values in {}",
            suite.file.display()
        ));
    }
    Ok(combinations)
}

fn row_part(key: Key, value: &Value) -> String {
    if key == Key::METHOD {
        value.to_string()
    } else {
        format!("{key}={value}")
    }
}

/// Resolves one combination under the profile: `Ok(Err(reason))` when it is
/// skipped, `Err` when it is invalid.
fn resolve(
    combination: Combination,
    profile: &Profile,
    substituted: &mut Vec<(Arch, Arch)>,
) -> Result<Result<Resolved, String>, String> {
    let settings = &combination.settings;
    let arch = |key: Key| match settings.get(&key) {
        Some(Value::Arch(a)) => *a,
        other => unreachable!("suite parsing checks that {key} is a model, found {other:?}"),
    };
    let method = match settings.get(&Key::METHOD) {
        Some(Value::Method(m)) => *m,
        other => unreachable!("suite parsing checks that method is set, found {other:?}"),
    };
    let (teacher0, student0) = (arch(Key::TEACHER), arch(Key::STUDENT));
    let pair =
        Pair { teacher: profile.substitute(teacher0), student: profile.substitute(student0) };
    for (from, to) in [(teacher0, pair.teacher), (student0, pair.student)] {
        if from != to && !substituted.contains(&(from, to)) {
            substituted.push((from, to));
        }
    }

    let mut distill = apply_distill_settings(&DistillConfig::for_method(method), settings)
        .map_err(|e| {
            format!("row {}: the settings do not form a valid config: {e}", combination.row)
        })?;
    distill.nce_k = profile.nce_k(distill.nce_k);
    distill.validate().map_err(|e| format!("row {}, pair {pair}: {e}", combination.row))?;

    let contrastive = matches!(method, Method::Crd | Method::CrdKd | Method::Crcd);
    if contrastive && distill.embed == Embed::None {
        let (wt, ws) = (pooled_width(pair.teacher), pooled_width(pair.student));
        if wt != ws {
            return Ok(Err(format!(
                "{} on {pair}: embed none needs equal feature widths, but they are {wt} and {ws}",
                combination.row
            )));
        }
    }
    if contrastive {
        let size = dataset_size(profile.dataset);
        let train = profile.subset.unwrap_or(size.train);
        let pool = negatives_pool(train, size.classes);
        if distill.nce_k as usize > pool {
            return Err(format!(
                "row {}: K = {} exceeds the {pool} negatives of {train} {} training images; \
                 map it to a smaller K under [{}.nce_k] in profiles.toml",
                combination.row, distill.nce_k, profile.dataset, profile.name
            ));
        }
    }
    Ok(Ok(Resolved { row: combination.row, pair, method, distill }))
}

/// Returns why `profile` runs a protocol other than the published one.
fn comparability(profile: &Profile, substituted: &[(Arch, Arch)]) -> Result<(), String> {
    let mut differences = Vec::new();
    if profile.dataset != DatasetName::Cifar100 {
        differences.push(format!("uses {}", profile.dataset));
    }
    if let Some(n) = profile.subset {
        differences.push(format!("trains on a subset of {n} images"));
    }
    if profile.max_steps_per_epoch.is_some() {
        differences.push("caps the steps per epoch".to_owned());
    }
    if profile.epochs != PAPER_EPOCHS {
        let plural = if profile.epochs == 1 { "" } else { "s" };
        differences.push(format!("trains {} epoch{plural}, not {PAPER_EPOCHS}", profile.epochs));
    }
    if !substituted.is_empty() {
        differences.push("substitutes models".to_owned());
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "published numbers not compared: profile {} {}",
            profile.name,
            differences.join(", ")
        ))
    }
}

/// Collects runs without duplicates, teachers apart from the others.
#[derive(Default)]
struct Builder {
    teachers: Vec<PlannedRun>,
    others: Vec<PlannedRun>,
    index: HashMap<String, (bool, usize)>,
    /// Cells with run indices as (is_teacher, index).
    cells: Vec<(String, Pair, u64, (bool, usize))>,
}

impl Builder {
    /// Plans the teacher of `r`. It runs for every combination before any
    /// student is planned, so teachers come first even when a vanilla run of
    /// the same network and settings would otherwise precede them.
    fn add_teacher(&mut self, r: &Resolved, profile: &Profile) -> Result<usize, String> {
        let teacher = self.teacher_config(r, profile);
        teacher.validate().map_err(|e| format!("teacher of pair {}: {e}", r.pair))?;
        let (_, index) =
            self.insert(RunConfig::Teacher(teacher), RunKind::Teacher, None, r.pair, None);
        Ok(index)
    }

    fn teacher_config(&self, r: &Resolved, profile: &Profile) -> TrainConfig {
        let epochs = profile.teacher_epochs;
        profile.train_config(r.pair.teacher, epochs, epochs, TEACHER_SEED)
    }

    /// Plans the run of `r` with `seed` and its table cell.
    fn add(&mut self, r: &Resolved, seed: u64, profile: &Profile) -> Result<(), String> {
        let (config, kind, teacher) = if r.method == Method::Vanilla {
            let train = profile.train_config(r.pair.student, profile.epochs, profile.epochs, seed);
            train.validate().map_err(|e| format!("pair {}: {e}", r.pair))?;
            (RunConfig::Teacher(train), RunKind::Vanilla, None)
        } else {
            let teacher = self.teacher_config(r, profile);
            let teacher_run = self.index[&RunConfig::Teacher(teacher.clone()).id()];
            let epochs =
                if r.method == Method::Crcd { profile.crcd_epochs } else { profile.epochs };
            let train = profile.train_config(r.pair.student, epochs, profile.epochs, seed);
            train.validate().map_err(|e| format!("pair {}: {e}", r.pair))?;
            let student = StudentConfig { train, distill: r.distill.clone(), teacher };
            (RunConfig::Student(student), RunKind::Student, Some(teacher_run.1))
        };
        let run = self.insert(config, kind, teacher, r.pair, Some(r.method));
        let same_cell =
            |c: &&(String, Pair, u64, (bool, usize))| c.0 == r.row && c.1 == r.pair && c.2 == seed;
        match self.cells.iter().find(same_cell) {
            Some(cell) if cell.3 != run => Err(format!(
                "two different runs share row {}, pair {} and seed {seed}: \
                 give the zip group `labels` that tell them apart",
                r.row, r.pair
            )),
            Some(_) => Ok(()),
            None => {
                self.cells.push((r.row.clone(), r.pair, seed, run));
                Ok(())
            }
        }
    }

    /// Adds `config` unless it is already planned and returns its position as
    /// (in the teacher list, index in that list).
    fn insert(
        &mut self,
        config: RunConfig,
        kind: RunKind,
        teacher: Option<usize>,
        pair: Pair,
        method: Option<Method>,
    ) -> (bool, usize) {
        let id = config.id();
        if let Some(&position) = self.index.get(&id) {
            return position;
        }
        let is_teacher = kind == RunKind::Teacher;
        let list = if is_teacher { &mut self.teachers } else { &mut self.others };
        list.push(PlannedRun { id: id.clone(), config, kind, teacher, pair, method });
        let position = (is_teacher, list.len() - 1);
        self.index.insert(id, position);
        position
    }

    fn finish(self) -> (Vec<PlannedRun>, Vec<Cell>) {
        let offset = self.teachers.len();
        let global = |(is_teacher, i): (bool, usize)| if is_teacher { i } else { offset + i };
        let cells = self
            .cells
            .into_iter()
            .map(|(row, pair, seed, run)| Cell { row, pair, seed, run: global(run) })
            .collect();
        let mut runs = self.teachers;
        runs.extend(self.others);
        (runs, cells)
    }
}

impl Plan {
    /// Returns the number of runs of each kind: teachers, vanilla, students.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |kind| self.runs.iter().filter(|r| r.kind == kind).count();
        (count(RunKind::Teacher), count(RunKind::Vanilla), count(RunKind::Student))
    }

    /// Returns the index of the teacher run of `pair`, if the plan has one.
    pub fn teacher_of(&self, pair: Pair) -> Option<usize> {
        self.runs
            .iter()
            .find(|r| r.kind == RunKind::Student && r.pair == pair)
            .and_then(|r| r.teacher)
    }
}
