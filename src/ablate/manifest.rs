//! Suite manifests: `<results>/suites/<suite>.<profile>.json`.
//!
//! A run can belong to several suites (the default CRCD run of a pair is in
//! most ablations), so a run folder cannot record which tables it belongs to. The
//! manifest, written when a suite starts, lists a suite's table cells and the
//! run id of each. `report` reads it with the runs' `summary.json` and
//! `config.json`, so it needs neither the suite files nor the profiles.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan::Plan;
use super::store::{read_json, write_json, StoreError};

/// One entry of a table cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestCell {
    pub row: String,
    pub teacher: String,
    pub student: String,
    pub seed: u64,
    pub run: String,
}

/// A table column: a pair and the run of its teacher, if the suite trains one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestPair {
    pub teacher: String,
    pub student: String,
    pub teacher_run: Option<String>,
}

/// The table layout of one suite under one profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub suite: String,
    pub profile: String,
    pub description: String,
    pub dataset: String,
    /// The `table` of the published CSV to compare with.
    pub published: Option<String>,
    /// Reason the suite's published table is not compared.
    pub published_note: Option<String>,
    pub rows: Vec<String>,
    pub pairs: Vec<ManifestPair>,
    pub cells: Vec<ManifestCell>,
}

impl Manifest {
    /// Builds the manifest of `plan`.
    pub fn from_plan(plan: &Plan) -> Manifest {
        let pairs = plan
            .pairs
            .iter()
            .map(|p| ManifestPair {
                teacher: p.teacher.name().to_owned(),
                student: p.student.name().to_owned(),
                teacher_run: plan.teacher_of(*p).map(|i| plan.runs[i].id.clone()),
            })
            .collect();
        let cells = plan
            .cells
            .iter()
            .map(|c| ManifestCell {
                row: c.row.clone(),
                teacher: c.pair.teacher.name().to_owned(),
                student: c.pair.student.name().to_owned(),
                seed: c.seed,
                run: plan.runs[c.run].id.clone(),
            })
            .collect();
        Manifest {
            suite: plan.suite.clone(),
            profile: plan.profile.clone(),
            description: plan.description.clone(),
            dataset: plan.dataset.to_string(),
            published: plan.published.map(|t| t.name().to_owned()),
            published_note: plan.published_note.clone(),
            rows: plan.rows.clone(),
            pairs,
            cells,
        }
    }

    /// Returns the manifest path of `suite` under `profile`.
    pub fn path(results_dir: &Path, suite: &str, profile: &str) -> PathBuf {
        manifests_dir(results_dir).join(format!("{suite}.{profile}.json"))
    }

    /// Writes the manifest atomically under `results_dir`.
    pub fn write(&self, results_dir: &Path) -> Result<PathBuf, StoreError> {
        let dir = manifests_dir(results_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|source| StoreError::Io { path: dir.clone(), source })?;
        let path = Manifest::path(results_dir, &self.suite, &self.profile);
        write_json(&path, self)?;
        Ok(path)
    }

    /// Reads a manifest file.
    pub fn read(path: &Path) -> Result<Manifest, StoreError> {
        read_json(path)?.ok_or_else(|| StoreError::Io {
            path: path.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }
}

/// Returns the folder of the manifests under `results_dir`.
pub fn manifests_dir(results_dir: &Path) -> PathBuf {
    results_dir.join("suites")
}
