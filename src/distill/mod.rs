//! Knowledge-distillation methods: the loss terms of one training step.
//!
//! - vanilla: cross-entropy on the labels only.
//! - KD: Hinton et al., "Distilling the Knowledge in a Neural Network",
//!   <https://arxiv.org/abs/1503.02531>.
//! - CRD and CRD+KD: Tian et al., "Contrastive Representation Distillation",
//!   ICLR 2020, <https://arxiv.org/abs/1910.10699>.
//! - CRCD: Zhu et al., "Complementary Relation Contrastive Distillation",
//!   CVPR 2021, <https://arxiv.org/abs/2103.16367>.
//!
//! Every method computes, with `(w_task, w_mimic)` from the schedule at the
//! step's progress,
//!
//! ```text
//! L = γ·w_task·CE + α·w_mimic·KD + β·w_mimic·(L_feat + λ_g·L_grad)
//! ```
//!
//! and returns each term unweighted together with its weight, so that the
//! trainer can log them apart. The trainer owns the optimiser, the teacher's
//! forward pass and the check for non-finite losses.

pub mod contrast;
pub mod crcd;
pub mod crd;
pub mod embed;
pub mod gradient;
pub mod kd;
pub mod memory;
pub mod nce;
pub mod relation;
pub mod schedule;

use anyhow::{bail, Context, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::config::{DistillConfig, Method};
use crate::models::ModelOutput;

pub use contrast::{ContrastBranch, Objective};
pub use crcd::Crcd;
pub use crd::Crd;
pub use kd::{cross_entropy, kd_loss, Kd};
pub use memory::{ContrastSampler, MemoryBank, NormConstant};
pub use schedule::{schedule_weights, ScheduleWeights};

/// Name of the cross-entropy term on the labels.
pub const LOSS_CE: &str = "loss_ce";
/// Name of the KD term.
pub const LOSS_KD: &str = "loss_kd";
/// Name of the CRD term (methods crd and crd_kd).
pub const LOSS_CRD: &str = "loss_crd";
/// Name of CRCD's feature relation term.
pub const LOSS_FEAT: &str = "loss_feat";
/// Name of CRCD's gradient term.
pub const LOSS_GRAD: &str = "loss_grad";

/// Inputs of one training step to a method.
pub struct StepInput<'a> {
    /// Student forward pass, with its autograd graph.
    pub student: &'a ModelOutput,
    /// Teacher forward pass, computed by the trainer under `no_grad`.
    pub teacher: &'a ModelOutput,
    /// The student's final linear layer: weight (C, d_s) and bias (C,),
    /// trainable.
    pub student_classifier: (&'a Tensor, &'a Tensor),
    /// The teacher's final linear layer: weight (C, d_t) and bias (C,),
    /// frozen.
    pub teacher_classifier: (&'a Tensor, &'a Tensor),
    /// Class labels, (B,) i64.
    pub labels: &'a Tensor,
    /// Dataset rows of the batch, (B,) i64 in `[0, N)`.
    pub indices: &'a Tensor,
    /// Training progress `t`: global iteration / total iterations.
    pub progress: f64,
    /// Global iteration, 0-based; the negative sampling is seeded from
    /// `(seed, step)`, so a resumed run draws the same negatives.
    pub step: i64,
}

/// One term of the total loss.
pub struct LossTerm {
    /// Stable snake_case name, used as a CSV column and snapshot key.
    pub name: &'static str,
    /// Unweighted value, () scalar with its autograd graph.
    pub value: Tensor,
    /// Weight the trainer multiplies `value` by, schedule included.
    pub weight: f64,
}

/// A distillation method.
pub trait Distiller {
    /// Returns the loss terms of one step; the trainer sums `weight · value`,
    /// backpropagates, and logs each term and weight. Memory-bank updates
    /// happen in here, after the scores, from detached embeddings.
    fn losses(&mut self, input: &StepInput) -> Result<Vec<LossTerm>>;

    /// Returns whether the teacher runs in train mode (batch statistics in
    /// BatchNorm), as in the CRCD authors' release.
    fn teacher_train_mode(&self) -> bool {
        false
    }
}

/// Sizes a method needs to build its heads and memory banks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DistillShapes {
    /// Width d_s of the student's pooled feature.
    pub student_dim: i64,
    /// Width d_t of the teacher's pooled feature.
    pub teacher_dim: i64,
    pub num_classes: i64,
    /// Training-set size N: rows of each memory bank.
    pub num_data: i64,
}

/// Builds the distiller of `cfg.method`.
///
/// Embedding heads become trainable variables under `p`, and memory banks,
/// normalisation constants and the FIFO queue become non-trainable variables
/// there, so saving and loading the VarStore checkpoints the method's state.
/// `train_labels` (N,) i64 are the training-set labels that `exact` and
/// `relax` sampling read to find other-class and same-class samples. `seed`
/// seeds the memory banks and, with the step, the negative sampling; the
/// heads draw their initial weights from libtorch's global generator.
pub fn build(
    cfg: &DistillConfig,
    p: &nn::Path,
    shapes: &DistillShapes,
    train_labels: &Tensor,
    seed: u64,
) -> Result<Box<dyn Distiller>> {
    cfg.validate()?;
    check_shapes(shapes)?;
    let labels_len = train_labels.size1().context("train_labels must be (N,) i64")?;
    if labels_len != shapes.num_data {
        bail!(
            "train_labels has {labels_len} rows but num_data is {}; pass the labels of the \
             whole training set",
            shapes.num_data
        );
    }
    let distiller: Box<dyn Distiller> = match cfg.method {
        Method::Vanilla => Box::new(Kd::new(cfg, false)),
        Method::Kd => Box::new(Kd::new(cfg, true)),
        Method::Crd | Method::CrdKd => Box::new(Crd::new(cfg, p, shapes, train_labels, seed)?),
        Method::Crcd => Box::new(Crcd::new(cfg, p, shapes, train_labels, seed)?),
    };
    Ok(distiller)
}

fn check_shapes(shapes: &DistillShapes) -> Result<()> {
    for (name, value) in [
        ("student_dim", shapes.student_dim),
        ("teacher_dim", shapes.teacher_dim),
        ("num_classes", shapes.num_classes),
        ("num_data", shapes.num_data),
    ] {
        if value < 1 {
            bail!("invalid {name} {value}: expected at least 1");
        }
    }
    Ok(())
}

/// Returns the batch size after checking that logits, labels and indices
/// describe the same batch and that every index is a row of the dataset.
pub(crate) fn check_step(input: &StepInput, num_data: Option<i64>) -> Result<i64> {
    let (b, _classes) = input.student.logits.size2().context("student logits")?;
    let labels = input.labels.size1().context("labels must be (B,) i64")?;
    let indices = input.indices.size1().context("indices must be (B,) i64")?;
    if b == 0 {
        bail!("empty batch: student logits have 0 rows");
    }
    if labels != b || indices != b {
        bail!(
            "batch size mismatch: student logits have {b} rows, labels {labels}, indices {indices}"
        );
    }
    if let Some(n) = num_data {
        let (lo, hi) = index_range(input.indices)?;
        if lo < 0 || hi >= n {
            bail!("dataset index out of range: indices span [{lo}, {hi}] but num_data is {n}");
        }
    }
    Ok(b)
}

fn index_range(indices: &Tensor) -> Result<(i64, i64)> {
    if indices.kind() != Kind::Int64 {
        bail!("indices must be i64, got {:?}", indices.kind());
    }
    let cpu = indices.to_device(Device::Cpu);
    Ok((cpu.min().int64_value(&[]), cpu.max().int64_value(&[])))
}

/// Builds the cross-entropy and KD terms shared by every method.
///
/// Returns the KD term only when `with_kd`; its tensor is also returned for
/// the CRCD release variant that multiplies the gradient term by it.
pub(crate) fn logit_terms(
    cfg: &DistillConfig,
    input: &StepInput,
    weights: ScheduleWeights,
    with_kd: bool,
) -> Result<(Vec<LossTerm>, Option<Tensor>)> {
    let ce = cross_entropy(&input.student.logits, input.labels)?;
    let mut terms = vec![LossTerm { name: LOSS_CE, value: ce, weight: cfg.gamma * weights.task }];
    if !with_kd {
        return Ok((terms, None));
    }
    let kd = kd_loss(&input.student.logits, &input.teacher.logits, cfg.kd_t)?;
    terms.push(LossTerm {
        name: LOSS_KD,
        value: kd.shallow_clone(),
        weight: cfg.alpha * weights.mimic,
    });
    Ok((terms, Some(kd)))
}
