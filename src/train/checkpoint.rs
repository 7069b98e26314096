//! Checkpoints: every variable of a run's VarStore (network, distillation
//! heads and memory banks), the optimizer's momentum buffers and the count of
//! finished epochs, in one safetensors file replaced atomically after every
//! epoch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::fsutil;
use crate::models::Arch;

/// File name of the tensors.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// File name of the human-readable description beside it.
pub const CHECKPOINT_META_FILE: &str = "checkpoint.json";

const EPOCHS_KEY: &str = "meta.epochs_done";
const WALL_KEY: &str = "meta.wall_seconds";

/// Description of a checkpoint, written beside its tensors. A resume trusts
/// the epoch count inside the safetensors file, because this file is written
/// second and may lag by one epoch after a kill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub arch: Arch,
    pub num_classes: i64,
    pub epochs_done: i64,
    pub run_id: String,
}

/// Progress stored in a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    pub epochs_done: i64,
    pub wall_seconds: f64,
}

/// Writes `vs`, `extra` entries (optimizer state) and `progress` to
/// `dir/checkpoint.safetensors`, then `meta` to `dir/checkpoint.json`.
pub fn save(
    dir: &Path,
    vs: &VarStore,
    extra: Vec<(String, Tensor)>,
    progress: Progress,
    meta: &CheckpointMeta,
) -> anyhow::Result<()> {
    let mut entries: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    entries.extend(extra);
    entries.push((EPOCHS_KEY.into(), Tensor::from(progress.epochs_done)));
    entries.push((WALL_KEY.into(), Tensor::from(progress.wall_seconds)));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let entries: Vec<(String, Tensor)> = entries
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    let path = dir.join(CHECKPOINT_FILE);
    fsutil::write_atomic_with(&path, |tmp| {
        Tensor::write_safetensors(&entries, tmp)
            .with_context(|| format!("failed to write checkpoint {}", path.display()))
    })?;
    fsutil::write_json_atomic(&dir.join(CHECKPOINT_META_FILE), meta)
}

/// Finds the checkpoint of a run folder, or accepts the safetensors file
/// itself, and reads its description.
pub fn locate(path: &Path) -> anyhow::Result<(PathBuf, CheckpointMeta)> {
    let file = if path.is_dir() { path.join(CHECKPOINT_FILE) } else { path.to_path_buf() };
    if !file.is_file() {
        bail!(
            "checkpoint not found: {}; pass a run folder that contains {CHECKPOINT_FILE}, or the file itself",
            file.display()
        );
    }
    let meta_path = file.with_file_name(CHECKPOINT_META_FILE);
    let text = std::fs::read_to_string(&meta_path).with_context(|| {
        format!(
            "checkpoint description {} is missing beside {}",
            meta_path.display(),
            file.display()
        )
    })?;
    let meta: CheckpointMeta = serde_json::from_str(&text)
        .with_context(|| format!("checkpoint description {} is invalid", meta_path.display()))?;
    Ok((file, meta))
}

/// Reads a checkpoint file into a map of named tensors on the CPU.
pub fn read(file: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let entries = Tensor::read_safetensors(file).with_context(|| {
        format!(
            "checkpoint {} cannot be read; it may be damaged: delete it to restart the run",
            file.display()
        )
    })?;
    Ok(entries.into_iter().collect())
}

/// Returns the progress stored in checkpoint entries.
pub fn progress(entries: &HashMap<String, Tensor>, file: &Path) -> anyhow::Result<Progress> {
    let get = |key: &str| {
        entries.get(key).with_context(|| format!("checkpoint {} lacks '{key}'", file.display()))
    };
    Ok(Progress {
        epochs_done: get(EPOCHS_KEY)?.int64_value(&[]),
        wall_seconds: get(WALL_KEY)?.to_kind(Kind::Double).double_value(&[]),
    })
}

/// Copies the checkpoint's values into every variable of `vs` whose name
/// starts with `prefix` (all of them for ""). Each such variable must be
/// present with the same shape, so a checkpoint of another model is rejected
/// with the first mismatching name.
pub fn load_into(
    vs: &VarStore,
    entries: &HashMap<String, Tensor>,
    prefix: &str,
    file: &Path,
) -> anyhow::Result<()> {
    let mut names: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(n, _)| n.starts_with(prefix)).collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut var) in names {
            let Some(src) = entries.get(&name) else {
                bail!("checkpoint {} has no variable '{name}': it was written for another model or method", file.display());
            };
            if src.size() != var.size() {
                bail!(
                    "checkpoint {} has '{name}' with shape {:?}, this model needs {:?}: it was written for another model or class count",
                    file.display(),
                    src.size(),
                    var.size()
                );
            }
            var.f_copy_(src)
                .with_context(|| format!("failed to load '{name}' from {}", file.display()))?;
        }
        Ok(())
    })
}

/// Prefixes of checkpoint entries that are not network variables.
const NON_NETWORK_PREFIXES: [&str; 3] = ["optimizer.", "meta.", "distill."];

/// Checks that every network variable in `entries` exists in `vs`, so a
/// checkpoint of a larger network of the same family (say resnet14 read as
/// resnet8, whose names are a subset) is rejected rather than half loaded.
pub fn check_no_extra_variables(
    vs: &VarStore,
    entries: &HashMap<String, Tensor>,
    file: &Path,
) -> anyhow::Result<()> {
    let known = vs.variables();
    let mut extra: Vec<&String> = entries
        .keys()
        .filter(|name| !NON_NETWORK_PREFIXES.iter().any(|p| name.starts_with(p)))
        .filter(|name| !known.contains_key(*name))
        .collect();
    extra.sort();
    if let Some(first) = extra.first() {
        bail!(
            "checkpoint {} has {} variable(s) this model lacks, such as '{first}': it was written for another model",
            file.display(),
            extra.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;

    fn meta() -> CheckpointMeta {
        CheckpointMeta { arch: Arch::Resnet8, num_classes: 10, epochs_done: 3, run_id: "x".into() }
    }

    #[test]
    fn round_trip_restores_variables_and_progress() {
        let dir = tempfile::tempdir().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let w = (vs.root() / "layer").var_copy("w", &Tensor::from_slice(&[1.5f32, -2.0]));
        let stored = Progress { epochs_done: 3, wall_seconds: 12.5 };
        let extra = vec![("optimizer.x".to_string(), Tensor::from_slice(&[7.0f32]))];
        save(dir.path(), &vs, extra, stored, &meta()).unwrap();

        let fresh = nn::VarStore::new(Device::Cpu);
        let w2 =
            (fresh.root() / "layer").var_copy("w", &Tensor::zeros([2], (Kind::Float, Device::Cpu)));
        let (file, m) = locate(dir.path()).unwrap();
        assert_eq!(m, meta());
        let entries = read(&file).unwrap();
        load_into(&fresh, &entries, "", &file).unwrap();
        assert_eq!(Vec::<f32>::try_from(&w2).unwrap(), Vec::<f32>::try_from(&w).unwrap());
        assert_eq!(progress(&entries, &file).unwrap(), stored);
        assert!(entries.contains_key("optimizer.x"));
    }

    #[test]
    fn other_model_is_rejected_by_name_and_shape() {
        let dir = tempfile::tempdir().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = (vs.root() / "fc")
            .var_copy("weight", &Tensor::zeros([10, 4], (Kind::Float, Device::Cpu)));
        save(dir.path(), &vs, vec![], Progress { epochs_done: 1, wall_seconds: 0.0 }, &meta())
            .unwrap();
        let file = dir.path().join(CHECKPOINT_FILE);
        let entries = read(&file).unwrap();

        let wider = nn::VarStore::new(Device::Cpu);
        let _ = (wider.root() / "fc")
            .var_copy("weight", &Tensor::zeros([100, 4], (Kind::Float, Device::Cpu)));
        let err = load_into(&wider, &entries, "", &file).unwrap_err().to_string();
        assert!(err.contains("'fc.weight'"), "{err}");
        assert!(err.contains("[10, 4]"), "{err}");

        let other = nn::VarStore::new(Device::Cpu);
        let _ = (other.root() / "classifier")
            .var_copy("weight", &Tensor::zeros([1], (Kind::Float, Device::Cpu)));
        let err = load_into(&other, &entries, "", &file).unwrap_err().to_string();
        assert!(err.contains("'classifier.weight'"), "{err}");
    }

    #[test]
    fn damaged_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(CHECKPOINT_FILE);
        std::fs::write(&file, b"not a checkpoint").unwrap();
        let err = format!("{:#}", read(&file).unwrap_err());
        assert!(err.contains("cannot be read"), "{err}");
    }
}
