//! Fully resolved run configurations, shared by the CLI, the trainer and the
//! ablation harness.
//!
//! A configuration here has every default filled in. Its canonical JSON form
//! is what a run directory stores and what a run's id hashes, so adding a
//! field changes every id: give new fields a `#[serde(default)]` only when the
//! old behaviour is the default.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::data::DatasetName;
pub use crate::models::Arch;

/// Hyperparameters of one supervised or distillation training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Network to train (the student, for a distillation run).
    pub model: Arch,
    pub dataset: DatasetName,
    /// Train on a seeded, class-balanced subset of this many images.
    pub subset: Option<usize>,
    /// Evaluate on a class-balanced subset of this many test images, the
    /// same for every seed; the whole test split when `None`.
    #[serde(default)]
    pub test_subset: Option<usize>,
    pub epochs: i64,
    pub batch_size: i64,
    /// Initial SGD learning rate.
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Points of training, in epochs, from which the rate is multiplied by
    /// `lr_decay_rate`. Whole numbers decay after that many epochs, as
    /// RepDistiller does. Fractions decay at the step inside an epoch that
    /// reaches them, so runs of a few epochs keep the protocol's shape.
    pub lr_decay_epochs: Vec<f64>,
    pub lr_decay_rate: f64,
    pub seed: u64,
    /// Stop each epoch after this many steps; used by quick smoke runs.
    pub max_steps_per_epoch: Option<i64>,
}

/// Epochs of the CIFAR-100 protocol for teachers and CRD-protocol students.
pub const PAPER_EPOCHS: i64 = 240;
/// Learning-rate milestones of the CIFAR-100 protocol, for 240 epochs.
pub const PAPER_LR_DECAY_EPOCHS: [f64; 3] = [150.0, 180.0, 210.0];

impl TrainConfig {
    /// Builds the CIFAR-100 protocol defaults (SGD, momentum 0.9, weight decay
    /// 5e-4, batch 64, lr 0.05 or 0.01 for the light students, ×0.1 at epochs
    /// 150, 180 and 210 of 240) for `model` on `dataset`.
    pub fn protocol(model: Arch, dataset: DatasetName) -> TrainConfig {
        TrainConfig {
            model,
            dataset,
            subset: None,
            test_subset: None,
            epochs: PAPER_EPOCHS,
            batch_size: 64,
            lr: model.default_lr(),
            momentum: 0.9,
            weight_decay: 5e-4,
            lr_decay_epochs: PAPER_LR_DECAY_EPOCHS.to_vec(),
            lr_decay_rate: 0.1,
            seed: 0,
            max_steps_per_epoch: None,
        }
    }

    /// Sets `epochs` and moves the learning-rate milestones to the same
    /// fractions of the run (150/240, 180/240 and 210/240 by default), so a
    /// one-epoch run decays at 62.5 %, 75 % and 87.5 % of its steps.
    pub fn with_epochs_scaled(mut self, epochs: i64) -> TrainConfig {
        let scale = epochs as f64 / self.epochs.max(1) as f64;
        self.lr_decay_epochs = self
            .lr_decay_epochs
            .iter()
            .map(|&e| e * scale)
            .filter(|&e| e > 0.0 && e < epochs as f64)
            .collect();
        self.epochs = epochs;
        self
    }

    /// Returns the learning rate after `epochs_done` epochs, a fraction when
    /// inside an epoch (epoch e, step i of n is `e + i / n`).
    pub fn lr_at(&self, epochs_done: f64) -> f64 {
        let passed = self.lr_decay_epochs.iter().filter(|&&e| epochs_done >= e).count();
        self.lr * self.lr_decay_rate.powi(passed as i32)
    }

    /// Checks value ranges; the error names the field and the accepted range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.epochs >= 1, "epochs", self.epochs, "at least 1")?;
        check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")?;
        check(self.lr > 0.0 && self.lr.is_finite(), "lr", self.lr, "a positive number")?;
        check((0.0..1.0).contains(&self.momentum), "momentum", self.momentum, "in [0, 1)")?;
        check(self.weight_decay >= 0.0, "weight_decay", self.weight_decay, "at least 0")?;
        check(self.lr_decay_rate > 0.0, "lr_decay_rate", self.lr_decay_rate, "positive")?;
        let increasing = self.lr_decay_epochs.windows(2).all(|w| w[0] < w[1]);
        let milestones = format!("{:?}", self.lr_decay_epochs);
        check(increasing, "lr_decay_epochs", milestones, "increasing epochs")?;
        if let Some(n) = self.subset {
            check(n >= 1, "subset", n, "at least 1")?;
        }
        if let Some(n) = self.test_subset {
            check(n >= 1, "test_subset", n, "at least 1")?;
        }
        if let Some(n) = self.max_steps_per_epoch {
            check(n >= 1, "max_steps_per_epoch", n, "at least 1")?;
        }
        Ok(())
    }
}

/// Knowledge-distillation method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Cross-entropy only: the student trained alone.
    Vanilla,
    /// Hinton et al.'s soft-target loss.
    Kd,
    /// Contrastive Representation Distillation (Tian et al., ICLR 2020).
    Crd,
    /// CRD plus KD.
    CrdKd,
    /// Complementary Relation Contrastive Distillation (Zhu et al., CVPR 2021).
    Crcd,
}

/// Relation element used by CRCD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Element {
    /// The pooled penultimate feature.
    Feature,
    /// The gradient of the cross-entropy with respect to that feature.
    Gradient,
}

/// Loss applied to the gradient element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradientLoss {
    /// The CRCD relation contrastive loss with its own heads and banks.
    Crcd,
    /// The CRD contrastive loss on the gradients.
    Crd,
    /// `10 · (1 − mean cosine(g_t, g_s))`, the authors' code default.
    Cosine,
}

/// Computation of the gradient element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradientPath {
    /// `(softmax(f Wᵀ + b) − onehot(y)) · W / B` for the pooled feature.
    ClosedForm,
    /// Autograd with `create_graph = true`.
    Autograd,
}

/// Embedding head on each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Embed {
    Linear,
    Nonlinear,
    /// Identity; needs equal teacher and student widths.
    None,
}

/// Sampling of the contrast indices from the memory bank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Positive = the sample itself, negatives from other classes.
    Exact,
    /// Positive = a random sample of the same class.
    Relax,
    /// Negatives from a FIFO of recently seen indices.
    Queue,
}

/// Computation of CRCD's relation scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelationForm {
    /// Dot products only: memory B·B·(K+1).
    Gram,
    /// The materialised relation vectors: memory B·B·(K+1)·m; the oracle.
    Direct,
}

/// Loss-weight schedule over training progress `t ∈ [0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    Step,
    LinearDecrease,
    LinearDecrease2,
    ExpIncrease,
}

macro_rules! snake_case_from_str {
    ($($ty:ty => $what:literal),*) => {$(
        impl FromStr for $ty {
            type Err = ConfigError;

            fn from_str(s: &str) -> Result<Self, ConfigError> {
                serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
                    ConfigError::UnknownName {
                        what: $what,
                        value: s.to_owned(),
                        expected: <$ty>::NAMES.join(", "),
                    }
                })
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let value = serde_json::to_value(self).map_err(|_| fmt::Error)?;
                f.write_str(value.as_str().ok_or(fmt::Error)?)
            }
        }
    )*};
}

impl Method {
    pub const NAMES: &'static [&'static str] = &["vanilla", "kd", "crd", "crd_kd", "crcd"];
}
impl Element {
    pub const NAMES: &'static [&'static str] = &["feature", "gradient"];
}
impl GradientLoss {
    pub const NAMES: &'static [&'static str] = &["crcd", "crd", "cosine"];
}
impl GradientPath {
    pub const NAMES: &'static [&'static str] = &["closed_form", "autograd"];
}
impl Embed {
    pub const NAMES: &'static [&'static str] = &["linear", "nonlinear", "none"];
}
impl Sampling {
    pub const NAMES: &'static [&'static str] = &["exact", "relax", "queue"];
}
impl RelationForm {
    pub const NAMES: &'static [&'static str] = &["gram", "direct"];
}
impl ScheduleKind {
    pub const NAMES: &'static [&'static str] =
        &["constant", "step", "linear_decrease", "linear_decrease2", "exp_increase"];
}
snake_case_from_str!(
    Method => "method",
    Element => "relation element",
    GradientLoss => "gradient loss",
    GradientPath => "gradient path",
    Embed => "embedding head",
    Sampling => "sampling mode",
    RelationForm => "relation form",
    ScheduleKind => "schedule"
);

/// Every setting of a distillation method, defaults filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    pub method: Method,
    /// Weight of the cross-entropy on the labels.
    pub gamma: f64,
    /// Weight of the KD loss.
    pub alpha: f64,
    /// Weight of the contrastive or relation loss.
    pub beta: f64,
    /// Weight of the gradient relation loss inside the β term (CRCD).
    pub lambda_g: f64,
    /// KD temperature.
    pub kd_t: f64,
    /// CRCD relation elements; empty for other methods.
    pub elements: Vec<Element>,
    pub gradient_loss: GradientLoss,
    pub gradient_path: GradientPath,
    pub embed: Embed,
    pub sampling: Sampling,
    pub relation_form: RelationForm,
    pub schedule: ScheduleKind,
    /// Progress `t` at which the `step` schedule turns the mimic weight off.
    pub schedule_step: f64,
    /// `exp_increase`: the mimic weight is `exp_alpha0 · exp_factor^⌊3t⌋`.
    pub exp_alpha0: f64,
    pub exp_factor: f64,
    /// Negatives per sample (K).
    pub nce_k: i64,
    /// Contrast temperature (T).
    pub nce_t: f64,
    /// Memory-bank momentum (μ).
    pub nce_mu: f64,
    /// Embedding width (m).
    pub feat_dim: i64,
    /// The authors' release: add the gradient term as `α·KD·L_grad`,
    /// multiplied by the KD loss and not scheduled.
    pub grad_times_kd: bool,
    /// The authors' release: run the teacher in train mode (batch statistics).
    pub teacher_train_mode: bool,
}

impl DistillConfig {
    /// Builds the defaults of `method`: CRD's scripts for KD, CRD and CRD+KD
    /// (K = 16384, T = 0.07) and the CRCD release (K = 500, T = 0.05, γ 1,
    /// α 0.9, β 1, λ_g 1, step schedule, both elements).
    pub fn for_method(method: Method) -> DistillConfig {
        let (gamma, alpha, beta) = match method {
            Method::Vanilla => (1.0, 0.0, 0.0),
            Method::Kd => (0.1, 0.9, 0.0),
            Method::Crd => (1.0, 0.0, 0.8),
            Method::CrdKd => (1.0, 1.0, 0.8),
            Method::Crcd => (1.0, 0.9, 1.0),
        };
        let crcd = method == Method::Crcd;
        DistillConfig {
            method,
            gamma,
            alpha,
            beta,
            lambda_g: 1.0,
            kd_t: 4.0,
            elements: if crcd { vec![Element::Feature, Element::Gradient] } else { vec![] },
            gradient_loss: GradientLoss::Crcd,
            gradient_path: GradientPath::ClosedForm,
            embed: Embed::Linear,
            sampling: Sampling::Exact,
            relation_form: RelationForm::Gram,
            schedule: if crcd { ScheduleKind::Step } else { ScheduleKind::Constant },
            schedule_step: 24.0 / 25.0,
            exp_alpha0: 0.1,
            exp_factor: 10.0,
            nce_k: if crcd { 500 } else { 16384 },
            nce_t: if crcd { 0.05 } else { 0.07 },
            nce_mu: 0.5,
            feat_dim: 128,
            grad_times_kd: false,
            teacher_train_mode: false,
        }
    }

    /// Checks value ranges that do not depend on the data or the networks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.feat_dim >= 1, "feat_dim", self.feat_dim, "at least 1")?;
        check(self.nce_k >= 1, "nce_k", self.nce_k, "at least 1")?;
        check(self.nce_t > 0.0, "nce_t", self.nce_t, "positive")?;
        check((0.0..1.0).contains(&self.nce_mu), "nce_mu", self.nce_mu, "in [0, 1)")?;
        check(self.kd_t > 0.0, "kd_t", self.kd_t, "positive")?;
        check(
            (0.0..=1.0).contains(&self.schedule_step),
            "schedule_step",
            self.schedule_step,
            "in [0, 1]",
        )?;
        for (name, w) in [
            ("gamma", self.gamma),
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("lambda_g", self.lambda_g),
        ] {
            check(w >= 0.0 && w.is_finite(), name, w, "a finite number ≥ 0")?;
        }
        if self.method == Method::Crcd && self.elements.is_empty() {
            return Err(ConfigError::Invalid {
                field: "elements",
                value: "[]".into(),
                expected: "at least one of feature, gradient for method crcd".into(),
            });
        }
        Ok(())
    }

    /// Returns whether the method needs a teacher.
    pub fn needs_teacher(&self) -> bool {
        self.method != Method::Vanilla
    }
}

/// A student trained from a teacher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentConfig {
    pub train: TrainConfig,
    pub distill: DistillConfig,
    /// The teacher's own run; its id names the teacher's run directory.
    pub teacher: TrainConfig,
}

/// One unit of work of the ablation harness.
// A plan contains a few hundred of these at most, so the size gap between the
// variants costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunConfig {
    Teacher(TrainConfig),
    Student(StudentConfig),
}

impl RunConfig {
    /// Returns the run's identity: the first 16 hex digits of the SHA-256 of
    /// its canonical JSON.
    pub fn id(&self) -> String {
        let json = serde_json::to_vec(self).expect("run configs serialise to JSON");
        let digest = Sha256::digest(&json);
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// Returns the network this run trains.
    pub fn train(&self) -> &TrainConfig {
        match self {
            RunConfig::Teacher(t) => t,
            RunConfig::Student(s) => &s.train,
        }
    }
}

/// A configuration value outside its accepted range or name set.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("invalid {field} {value}: expected {expected}")]
    Invalid { field: &'static str, value: String, expected: String },
    #[error("unknown {what} '{value}': expected one of {expected}")]
    UnknownName { what: &'static str, value: String, expected: String },
}

fn check(
    ok: bool,
    field: &'static str,
    value: impl fmt::Display,
    expected: &str,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid { field, value: value.to_string(), expected: expected.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_schedule_decays_after_milestones() {
        let c = TrainConfig::protocol(Arch::Resnet20, DatasetName::Cifar100);
        assert_eq!(c.lr_at(0.0), 0.05);
        assert_eq!(c.lr_at(149.99), 0.05);
        assert!((c.lr_at(150.0) - 0.005).abs() < 1e-12);
        assert!((c.lr_at(239.5) - 0.05 * 1e-3).abs() < 1e-12);
    }

    #[test]
    fn scaled_epochs_keep_milestone_fractions() {
        let c = TrainConfig::protocol(Arch::Resnet20, DatasetName::Cifar100).with_epochs_scaled(24);
        assert_eq!(c.lr_decay_epochs, vec![15.0, 18.0, 21.0]);
        let one = c.with_epochs_scaled(1);
        assert_eq!(one.lr_decay_epochs, vec![0.625, 0.75, 0.875]);
        assert_eq!(one.lr_at(0.6), 0.05);
        assert!((one.lr_at(0.7) - 0.005).abs() < 1e-12);
    }

    #[test]
    fn method_names_round_trip() {
        for name in Method::NAMES {
            let m: Method = name.parse().unwrap();
            assert_eq!(m.to_string(), *name);
        }
        let err = "crdd".parse::<Method>().unwrap_err().to_string();
        assert!(err.contains("'crdd'"), "{err}");
        assert!(err.contains("crd_kd"), "{err}");
    }

    #[test]
    fn run_id_changes_with_any_field() {
        let t = TrainConfig::protocol(Arch::Resnet8, DatasetName::Synthetic);
        let a = RunConfig::Teacher(t.clone());
        let b = RunConfig::Teacher(TrainConfig { seed: 1, ..t });
        assert_eq!(a.id().len(), 16);
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id(), a.clone().id());
    }
}
