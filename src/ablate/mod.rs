//! The ablation harness: declarative suites (`ablations/<suite>.toml`), scale
//! profiles (`ablations/profiles.toml`), their expansion into resolved runs,
//! the resumable run store, sharding over processes and the dry-run listing.
//!
//! The CLI calls [`list_suites`], [`run`] (or [`run_with`] and its own
//! trainer) and then [`crate::report::write_tables`].

pub mod cost;
pub mod dry_run;
pub mod facts;
pub mod manifest;
pub mod plan;
pub mod profile;
pub mod runner;
pub mod shard;
pub mod spec;
pub mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use tch::Device;

pub use manifest::Manifest;
pub use plan::{Plan, PlannedRun, RunKind};
pub use profile::Profile;
pub use runner::{Session, SuiteOutcome, Trainer};
pub use shard::Shard;
pub use spec::Suite;
pub use store::Store;

/// File name of the profiles in the suites folder.
pub const PROFILES_FILE: &str = "profiles.toml";

/// Time between two looks at a teacher that another process trains.
const TEACHER_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// Selection of the suites to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SuiteSelection {
    /// Every suite file of the suites folder, by name.
    All,
    Named(String),
}

impl FromStr for SuiteSelection {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<SuiteSelection, Self::Err> {
        Ok(if s == "all" { SuiteSelection::All } else { SuiteSelection::Named(s.to_owned()) })
    }
}

/// Arguments of `crcd ablate`.
#[derive(Clone, Debug)]
pub struct AblateArgs {
    pub suite: SuiteSelection,
    /// Profile name in `profiles.toml`.
    pub profile: String,
    /// Print the plan and train nothing.
    pub dry_run: bool,
    pub shard: Option<Shard>,
    /// Folder of the suite files and `profiles.toml`.
    pub suites_dir: PathBuf,
    /// Folder of `runs/`, `suites/` (manifests), `tables/` and `published/`.
    pub results_dir: PathBuf,
    pub device: Device,
    /// libtorch intra-op threads.
    pub threads: i64,
    /// Folder of the profile's dataset; `None` uses `data/<dataset>`.
    pub data_dir: Option<PathBuf>,
    /// Draw progress bars.
    pub progress: bool,
}

impl AblateArgs {
    /// Builds the arguments for `suite` under `profile` with the defaults of
    /// the CLI: folders `ablations`, `results` and `data`, CPU, one thread.
    pub fn new(suite: SuiteSelection, profile: &str) -> AblateArgs {
        AblateArgs {
            suite,
            profile: profile.to_owned(),
            dry_run: false,
            shard: None,
            suites_dir: PathBuf::from("ablations"),
            results_dir: PathBuf::from("results"),
            device: Device::Cpu,
            threads: 1,
            data_dir: None,
            progress: false,
        }
    }

    fn data_dir(&self, dataset: crate::data::DatasetName) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| crate::data::default_data_dir(dataset))
    }
}

/// A suite as `crcd ablate --list` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct SuiteInfo {
    pub name: String,
    pub description: String,
    /// Varied settings; a zip group is joined by `+`.
    pub axes: Vec<String>,
    /// Run count (teachers included) under each profile, by profile name.
    pub runs: Vec<(String, usize)>,
}

/// The result of [`run`].
#[derive(Clone, Debug, Default)]
pub struct AblateOutcome {
    /// The plan listing, for a dry run.
    pub dry_run: Option<String>,
    /// Per suite, for a real run.
    pub suites: Vec<SuiteOutcome>,
}

impl AblateOutcome {
    /// Returns the number of failed runs over all suites.
    pub fn failed(&self) -> usize {
        self.suites.iter().map(|s| s.failed.len()).sum()
    }
}

impl fmt::Display for AblateOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(listing) = &self.dry_run {
            f.write_str(listing)?;
        }
        for s in &self.suites {
            writeln!(
                f,
                "suite {}, profile {}: {} of {} runs in this share: {} finished, {} resumed, \
                 {} done before, {} locked by another process, {} unfinished, {} failed",
                s.suite,
                s.profile,
                s.share,
                s.planned,
                s.finished.len(),
                s.resumed.len(),
                s.already_done.len(),
                s.locked.len(),
                s.unfinished.len(),
                s.failed.len()
            )?;
            for id in &s.locked {
                writeln!(f, "  locked: run {id}")?;
            }
            for (id, error) in &s.failed {
                writeln!(f, "  failed: run {id}: {error}")?;
            }
        }
        Ok(())
    }
}

/// Lists the suites of `dir` with their axes and run counts under every
/// profile of `dir/profiles.toml`.
pub fn list_suites(dir: &Path) -> anyhow::Result<Vec<SuiteInfo>> {
    let profiles = load_profiles(dir)?;
    let suites = load_suites(dir, &SuiteSelection::All)?;
    let mut infos = Vec::new();
    for suite in suites {
        let mut runs = Vec::new();
        for (name, profile) in &profiles {
            runs.push((name.clone(), plan::expand(&suite, profile)?.runs.len()));
        }
        infos.push(SuiteInfo {
            name: suite.name.clone(),
            description: suite.description.clone(),
            axes: suite.axis_names(),
            runs,
        });
    }
    Ok(infos)
}

/// Reads `dir/profiles.toml`.
pub fn load_profiles(dir: &Path) -> anyhow::Result<BTreeMap<String, Profile>> {
    Ok(profile::load_profiles(&dir.join(PROFILES_FILE))?)
}

/// Returns the suite files of `dir` (every `*.toml` but the profiles), by name.
pub fn suite_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the suites folder {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read the suites folder {}", dir.display()))?
            .path();
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        if is_toml && path.file_name().is_some_and(|n| n != PROFILES_FILE) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and checks the selected suites of `dir`.
pub fn load_suites(dir: &Path, selection: &SuiteSelection) -> anyhow::Result<Vec<Suite>> {
    let files = suite_files(dir)?;
    let chosen: Vec<PathBuf> = match selection {
        SuiteSelection::All => files,
        SuiteSelection::Named(name) => {
            let path = dir.join(format!("{name}.toml"));
            if !files.contains(&path) {
                let names: Vec<String> = files
                    .iter()
                    .filter_map(|f| f.file_stem()?.to_str().map(str::to_owned))
                    .collect();
                bail!(
                    "suite '{name}' not found in {}\n{}",
                    dir.display(),
                    spec::hint("suites", name, names.iter().map(|s| s.as_str()))
                );
            }
            vec![path]
        }
    };
    if chosen.is_empty() {
        bail!("no suite files (*.toml) in {}", dir.display());
    }
    chosen.iter().map(|f| Suite::load(f).map_err(anyhow::Error::from)).collect()
}

/// Reads the suites and the profile of `args` and expands the plans.
pub fn plans(args: &AblateArgs) -> anyhow::Result<(Profile, Vec<Plan>)> {
    let profiles = load_profiles(&args.suites_dir)?;
    let Some(profile) = profiles.get(&args.profile).cloned() else {
        bail!(
            "profile '{}' not found in {}\n{}",
            args.profile,
            args.suites_dir.join(PROFILES_FILE).display(),
            spec::hint("profiles", &args.profile, profiles.keys().map(|k| k.as_str()))
        );
    };
    let suites = load_suites(&args.suites_dir, &args.suite)?;
    let plans = suites
        .iter()
        .map(|s| plan::expand(s, &profile).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((profile, plans))
}

/// Runs the selected suites with `crate::train::run`.
pub fn run(args: &AblateArgs) -> anyhow::Result<AblateOutcome> {
    run_with(args, &crate::train::run)
}

/// Runs the selected suites with `trainer`.
///
/// Every check comes before the first run trains: suite and profile files,
/// the plans, the stored configs of the planned runs, the dataset files and a
/// writable results folder. A dry run only lists the plans.
pub fn run_with(args: &AblateArgs, trainer: Trainer<'_>) -> anyhow::Result<AblateOutcome> {
    let (profile, plans) = plans(args)?;
    let store = Store::new(&args.results_dir);
    for plan in &plans {
        for run in &plan.runs {
            store.read_config(&run.id)?;
        }
    }
    let data_dir = args.data_dir(profile.dataset);
    let missing = facts::missing_dataset(profile.dataset, &data_dir);
    if args.dry_run {
        let mut listing = dry_run::render(&plans, &profile, &store, args.shard)?;
        if let Some(missing) = missing {
            listing.push_str(&format!("note: a real run would stop here: {missing}\n"));
        }
        return Ok(AblateOutcome { dry_run: Some(listing), suites: Vec::new() });
    }
    if let Some(missing) = missing {
        bail!("profile {} needs {}: {missing}", profile.name, profile.dataset);
    }
    store.ensure_writable()?;
    crate::report::ensure_published_csv(store.results_dir())?;

    let session = Session {
        device: args.device,
        threads: args.threads,
        data_dir,
        progress: args.progress,
        poll_interval: TEACHER_POLL_INTERVAL,
    };
    // All manifests first, so that `report` shows every selected suite while
    // the first one trains.
    for plan in &plans {
        Manifest::from_plan(plan).write(store.results_dir())?;
    }
    let mut runner = runner::Runner::new(&store, trainer, &session);
    let mut outcome = AblateOutcome::default();
    for plan in &plans {
        let share = match args.shard {
            Some(shard) => shard.share(plan.runs.len()),
            None => (0..plan.runs.len()).collect(),
        };
        let bar = progress_bar(args.progress, share.len(), &plan.suite);
        tracing::info!(
            "suite {}, profile {}: {} of {} runs in this share",
            plan.suite,
            plan.profile,
            share.len(),
            plan.runs.len()
        );
        let suite_outcome = runner.run_plan(plan, &share, &bar)?;
        bar.finish_and_clear();
        outcome.suites.push(suite_outcome);
    }
    Ok(outcome)
}

fn progress_bar(enabled: bool, len: usize, suite: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template("{prefix:>20} [{bar:30}] {pos}/{len} {elapsed} {msg}")
        .expect("the template is valid")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(suite.to_owned());
    bar
}
