//! Estimated cost of planned runs: optimizer steps, evaluation batches and a
//! time estimate scaled from a profile's seconds per resnet8x4 step.

use std::fmt;

use super::facts::{dataset_size, forward_mmacs};
use crate::config::{RunConfig, TrainConfig};
use crate::models::Arch;

/// The network whose step time a profile's `step_seconds` gives.
const REFERENCE_ARCH: Arch = Arch::Resnet8x4;
/// Batch size of that reference step.
const REFERENCE_BATCH: f64 = 64.0;
/// A training step costs about three forward passes: the forward pass, and
/// the backward pass through activations and weights.
const STEP_PER_FORWARD: f64 = 3.0;

/// The estimated work of one or more runs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub steps: u64,
    /// Test-set batches evaluated (once per epoch).
    pub eval_batches: u64,
    pub seconds: f64,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, other: Cost) {
        self.steps += other.steps;
        self.eval_batches += other.eval_batches;
        self.seconds += other.seconds;
    }
}

/// Returns the optimizer steps of one epoch of `train`.
pub fn steps_per_epoch(train: &TrainConfig) -> u64 {
    let images = train.subset.unwrap_or(dataset_size(train.dataset).train) as u64;
    let full = images.div_ceil(train.batch_size.max(1) as u64);
    match train.max_steps_per_epoch {
        Some(cap) => full.min(cap as u64),
        None => full,
    }
}

/// Estimates the cost of `config` from scratch, with `step_seconds` the time
/// of one resnet8x4 training step at batch 64.
///
/// A student step adds one teacher forward pass. Evaluation runs over the
/// whole test set after every epoch, at the training batch size.
pub fn run_cost(config: &RunConfig, step_seconds: f64) -> Cost {
    let train = config.train();
    let epochs = train.epochs.max(0) as u64;
    let steps = epochs * steps_per_epoch(train);
    let test = train.test_subset.unwrap_or(dataset_size(train.dataset).test) as u64;
    let eval_batches = epochs * test.div_ceil(train.batch_size.max(1) as u64);

    let batch_scale = train.batch_size as f64 / REFERENCE_BATCH;
    let forward = |arch: Arch| {
        step_seconds * forward_mmacs(arch) / forward_mmacs(REFERENCE_ARCH) / STEP_PER_FORWARD
            * batch_scale
    };
    let mut step = forward(train.model) * STEP_PER_FORWARD;
    if let RunConfig::Student(s) = config {
        step += forward(s.teacher.model);
    }
    let seconds = steps as f64 * step + eval_batches as f64 * forward(train.model);
    Cost { steps, eval_batches, seconds }
}

/// A duration in seconds shown as `1h02m`, `3m05s` or `42s`.
pub struct Duration(pub f64);

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.round().max(0.0) as u64;
        let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
        if h > 0 {
            write!(f, "{h}h{m:02}m")
        } else if m > 0 {
            write!(f, "{m}m{s:02}s")
        } else {
            write!(f, "{s}s")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DatasetName;

    #[test]
    fn steps_follow_subset_and_cap() {
        let mut c = TrainConfig::protocol(Arch::Resnet8, DatasetName::FashionMnist);
        assert_eq!(steps_per_epoch(&c), 938);
        c.subset = Some(1_000);
        assert_eq!(steps_per_epoch(&c), 16);
        c.max_steps_per_epoch = Some(5);
        assert_eq!(steps_per_epoch(&c), 5);
    }

    #[test]
    fn reference_step_costs_step_seconds() {
        let mut c = TrainConfig::protocol(Arch::Resnet8x4, DatasetName::Cifar100);
        c.epochs = 1;
        c.max_steps_per_epoch = Some(10);
        let cost = run_cost(&RunConfig::Teacher(c), 0.2);
        assert_eq!(cost.steps, 10);
        assert_eq!(cost.eval_batches, 157);
        let expected = 10.0 * 0.2 + 157.0 * 0.2 / 3.0;
        assert!((cost.seconds - expected).abs() < 1e-9, "{}", cost.seconds);
    }

    #[test]
    fn duration_formats() {
        assert_eq!(Duration(42.4).to_string(), "42s");
        assert_eq!(Duration(185.0).to_string(), "3m05s");
        assert_eq!(Duration(3720.0).to_string(), "1h02m");
    }
}
