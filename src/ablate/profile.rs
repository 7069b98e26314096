//! Scale profiles, read from `ablations/profiles.toml`: one table per profile.
//!
//! A profile turns a suite's settings into runs of a given size: the dataset,
//! an optional training subset, epochs, seeds, a step cap, K values that fit
//! the subset, and model substitutions that replace heavy networks by light
//! ones. Everything a profile leaves out keeps the CIFAR-100 protocol value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::spec::{hint, one_line, SpecError};
use crate::config::{TrainConfig, PAPER_EPOCHS};
use crate::data::DatasetName;
use crate::models::Arch;

/// Seconds per resnet8x4 optimizer step at batch 64 assumed when a profile
/// sets no `step_seconds`: the rough CPU cost (0.1–0.2 s) on a 2-core x86-64
/// machine, an estimate that only scales the dry-run's time column.
pub const DEFAULT_STEP_SECONDS: f64 = 0.15;

/// Keys of a profile table.
const PROFILE_KEYS: &[&str] = &[
    "description",
    "dataset",
    "subset",
    "test_subset",
    "epochs",
    "teacher_epochs",
    "crcd_epochs",
    "lr_decay_epochs",
    "batch_size",
    "max_steps_per_epoch",
    "seeds",
    "nce_k",
    "substitute",
    "step_seconds",
];

/// A profile as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    description: String,
    dataset: String,
    subset: Option<usize>,
    test_subset: Option<usize>,
    epochs: Option<i64>,
    teacher_epochs: Option<i64>,
    crcd_epochs: Option<i64>,
    lr_decay_epochs: Option<Vec<f64>>,
    batch_size: Option<i64>,
    max_steps_per_epoch: Option<i64>,
    seeds: Option<Vec<u64>>,
    #[serde(default)]
    nce_k: BTreeMap<String, i64>,
    #[serde(default)]
    substitute: BTreeMap<String, String>,
    step_seconds: Option<f64>,
}

/// A checked profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub dataset: DatasetName,
    /// Train on a seeded, class-balanced subset of this many images.
    pub subset: Option<usize>,
    /// Evaluate on a class-balanced subset of this many test images.
    pub test_subset: Option<usize>,
    /// Epochs of distillation students (other than CRCD) and vanilla students.
    pub epochs: i64,
    /// Epochs of teacher runs.
    pub teacher_epochs: i64,
    /// Epochs of CRCD students; the protocol adds 10 epochs to 240.
    pub crcd_epochs: i64,
    /// Learning-rate milestones of student runs; `None` scales the protocol's
    /// 150/180/210 of 240 to `epochs`.
    pub lr_decay_epochs: Option<Vec<f64>>,
    pub batch_size: Option<i64>,
    pub max_steps_per_epoch: Option<i64>,
    /// Seeds of the student runs; `None` keeps the suite's.
    pub seeds: Option<Vec<u64>>,
    /// K of the suite → K of this profile, for K values too large for `subset`.
    pub nce_k: BTreeMap<i64, i64>,
    /// (architecture, the one that replaces it), for teachers and students
    /// alike, ordered by the first name.
    pub substitute: Vec<(Arch, Arch)>,
    /// Seconds per resnet8x4 optimizer step at batch 64, for the time estimate.
    pub step_seconds: f64,
}

impl Profile {
    /// Returns the architecture that runs in place of `arch`.
    pub fn substitute(&self, arch: Arch) -> Arch {
        self.substitute.iter().find(|(from, _)| *from == arch).map_or(arch, |(_, to)| *to)
    }

    /// Returns the K that runs in place of the suite's `k`.
    pub fn nce_k(&self, k: i64) -> i64 {
        self.nce_k.get(&k).copied().unwrap_or(k)
    }

    /// Builds the training settings of `model` for `epochs` epochs.
    ///
    /// They are the CIFAR protocol (see [`TrainConfig::protocol`]) with this
    /// profile's dataset, subset, batch size and step cap. The milestones are
    /// those of a `milestone_epochs` run, so CRCD's extra epochs run at the
    /// last rate, as in the protocol.
    pub fn train_config(
        &self,
        model: Arch,
        epochs: i64,
        milestone_epochs: i64,
        seed: u64,
    ) -> TrainConfig {
        let mut config = TrainConfig::protocol(model, self.dataset);
        config = match &self.lr_decay_epochs {
            Some(milestones) => TrainConfig { lr_decay_epochs: milestones.clone(), ..config },
            None => config.with_epochs_scaled(milestone_epochs),
        };
        config.epochs = epochs;
        config.subset = self.subset;
        config.test_subset = self.test_subset;
        config.seed = seed;
        config.max_steps_per_epoch = self.max_steps_per_epoch;
        if let Some(batch) = self.batch_size {
            config.batch_size = batch;
        }
        config
    }
}

/// Reads every profile of `path`, in file order of their names (sorted).
pub fn load_profiles(path: &Path) -> Result<BTreeMap<String, Profile>, SpecError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| SpecError::Read { file: path.to_owned(), source })?;
    parse_profiles(path, &text)
}

/// Parses profiles text; `path` appears in errors.
pub fn parse_profiles(path: &Path, text: &str) -> Result<BTreeMap<String, Profile>, SpecError> {
    let file = path.to_owned();
    let table: toml::Table = toml::from_str(text)
        .map_err(|e| SpecError::Toml { file: file.clone(), message: one_line(&e) })?;
    let mut profiles = BTreeMap::new();
    for (name, value) in table {
        let Some(fields) = value.as_table() else {
            return Err(SpecError::WrongType {
                file,
                key: name,
                expected: "a table of profile settings".into(),
                found: value.type_str().into(),
            });
        };
        for key in fields.keys() {
            if !PROFILE_KEYS.contains(&key.as_str()) {
                return Err(SpecError::UnknownKey {
                    file,
                    what: "profile key",
                    key: format!("{name}.{key}"),
                    hint: hint("keys", key, PROFILE_KEYS.iter().copied()),
                });
            }
        }
        let raw: RawProfile =
            value.clone().try_into().map_err(|e: toml::de::Error| SpecError::Toml {
                file: file.clone(),
                message: format!("profile {name}: {}", one_line(&e)),
            })?;
        let profile = Profile::from_raw(&file, &name, raw)?;
        profiles.insert(name, profile);
    }
    if profiles.is_empty() {
        return Err(SpecError::Invalid {
            file,
            key: "profiles".into(),
            message: "the file defines no profile".into(),
        });
    }
    Ok(profiles)
}

impl Profile {
    fn from_raw(file: &Path, name: &str, raw: RawProfile) -> Result<Profile, SpecError> {
        let invalid = |key: &str, message: String| invalid(file, name, key, message);
        let dataset: DatasetName = raw.dataset.parse().map_err(|_| {
            let hint = hint("names", &raw.dataset, DatasetName::NAMES.iter().copied());
            invalid("dataset", format!("unknown dataset '{}'\n{hint}", raw.dataset))
        })?;

        let epochs = raw.epochs.unwrap_or(PAPER_EPOCHS);
        let teacher_epochs = raw.teacher_epochs.unwrap_or(epochs);
        let crcd_epochs = raw.crcd_epochs.unwrap_or(epochs);
        for (key, value) in
            [("epochs", epochs), ("teacher_epochs", teacher_epochs), ("crcd_epochs", crcd_epochs)]
        {
            if value < 1 {
                return Err(invalid(key, format!("{value} is not a positive number of epochs")));
            }
        }
        check_sizes(file, name, &raw)?;

        let step_seconds = raw.step_seconds.unwrap_or(DEFAULT_STEP_SECONDS);
        if !(step_seconds > 0.0 && step_seconds.is_finite()) {
            let message = format!("{step_seconds} is not a positive number");
            return Err(invalid("step_seconds", message));
        }
        Ok(Profile {
            name: name.to_owned(),
            description: raw.description,
            dataset,
            subset: raw.subset,
            test_subset: raw.test_subset,
            epochs,
            teacher_epochs,
            crcd_epochs,
            lr_decay_epochs: raw.lr_decay_epochs,
            batch_size: raw.batch_size,
            max_steps_per_epoch: raw.max_steps_per_epoch,
            seeds: raw.seeds,
            nce_k: parse_nce_k(file, name, &raw.nce_k)?,
            substitute: parse_substitute(file, name, &raw.substitute)?,
            step_seconds,
        })
    }
}

fn invalid(file: &Path, profile: &str, key: &str, message: String) -> SpecError {
    SpecError::Invalid { file: PathBuf::from(file), key: format!("{profile}.{key}"), message }
}

/// Checks the subset, batch size, step cap, milestones and seeds of `raw`.
fn check_sizes(file: &Path, name: &str, raw: &RawProfile) -> Result<(), SpecError> {
    let invalid = |key: &str, message: String| invalid(file, name, key, message);
    if let Some(n) = raw.test_subset {
        if n < 1 {
            return Err(invalid("test_subset", format!("{n} is not positive")));
        }
    }
    if let Some(n) = raw.subset {
        if n < 2 {
            return Err(invalid(
                "subset",
                format!("{n} images leave no negatives: use at least 2"),
            ));
        }
    }
    for (key, value) in
        [("batch_size", raw.batch_size), ("max_steps_per_epoch", raw.max_steps_per_epoch)]
    {
        if let Some(v) = value {
            if v < 1 {
                return Err(invalid(key, format!("{v} is not positive")));
            }
        }
    }
    if let Some(milestones) = &raw.lr_decay_epochs {
        if milestones.windows(2).any(|w| w[0] >= w[1]) || milestones.iter().any(|&e| e <= 0.0) {
            let message = format!("{milestones:?} must be increasing positive epochs");
            return Err(invalid("lr_decay_epochs", message));
        }
    }
    if let Some(seeds) = &raw.seeds {
        if seeds.is_empty() {
            return Err(invalid("seeds", "the list is empty: give at least one seed".into()));
        }
        if seeds.iter().enumerate().any(|(i, s)| seeds[..i].contains(s)) {
            return Err(invalid("seeds", format!("{seeds:?} lists a seed twice")));
        }
    }
    Ok(())
}

fn parse_nce_k(
    file: &Path,
    name: &str,
    raw: &BTreeMap<String, i64>,
) -> Result<BTreeMap<i64, i64>, SpecError> {
    let mut nce_k = BTreeMap::new();
    for (from, to) in raw {
        let k: i64 = from.parse().map_err(|_| {
            invalid(file, name, "nce_k", format!("key '{from}' is not an integer K of a suite"))
        })?;
        if *to < 1 {
            let key = format!("nce_k.{from}");
            return Err(invalid(file, name, &key, format!("K {to} is not positive")));
        }
        nce_k.insert(k, *to);
    }
    Ok(nce_k)
}

fn parse_substitute(
    file: &Path,
    name: &str,
    raw: &BTreeMap<String, String>,
) -> Result<Vec<(Arch, Arch)>, SpecError> {
    let mut substitute = Vec::new();
    for (from, to) in raw {
        let parse = |text: &str| {
            text.parse::<Arch>().map_err(|_| {
                let hint = hint("names", text, Arch::ALL.iter().map(|a| a.name()));
                let key = format!("substitute.{from}");
                invalid(file, name, &key, format!("unknown model '{text}'\n{hint}"))
            })
        };
        substitute.push((parse(from)?, parse(to)?));
    }
    Ok(substitute)
}
