//! Soft-target knowledge distillation (Hinton et al., "Distilling the
//! Knowledge in a Neural Network", <https://arxiv.org/abs/1503.02531>) and
//! the plain cross-entropy that every method adds.

use anyhow::{bail, Result};
use tch::Tensor;

use super::schedule::schedule_weights;
use super::{check_step, logit_terms, Distiller, LossTerm, StepInput};
use crate::config::DistillConfig;

/// Computes the mean cross-entropy of logits against class labels.
///
/// # Shapes
/// - `logits`: (B, C) float, raw logits.
/// - `labels`: (B,) i64 in `[0, C)`.
/// - returns: () scalar, mean over the batch.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, _classes) = logits.size2()?;
    let labels_len = labels.size1()?;
    if labels_len != b {
        bail!("cross_entropy: {b} rows of logits but {labels_len} labels");
    }
    // ignore_index −100 is PyTorch's default: no class is ignored.
    let loss =
        logits.f_cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Mean, -100, 0.0)?;
    Ok(loss)
}

/// Computes `T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))`, summed over classes
/// and averaged over the batch.
///
/// The gradients of the softened distributions shrink as 1/T², so the T²
/// factor keeps the KD term's gradient on the same scale as the
/// cross-entropy's whatever the temperature.
///
/// # Shapes
/// - `logits_student`, `logits_teacher`: (B, C) float, raw logits.
/// - returns: () scalar.
pub fn kd_loss(
    logits_student: &Tensor,
    logits_teacher: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let (b, c) = logits_student.size2()?;
    let (bt, ct) = logits_teacher.size2()?;
    if (b, c) != (bt, ct) {
        bail!(
            "kd_loss: shape mismatch between student logits [{b}, {c}] and teacher logits \
             [{bt}, {ct}]"
        );
    }
    let kind = logits_student.kind();
    let log_p_s = (logits_student / temperature).log_softmax(1, kind);
    let log_p_t = (logits_teacher.to_kind(kind) / temperature).log_softmax(1, kind);
    let kl = (log_p_t.exp() * (&log_p_t - log_p_s)).sum(kind);
    Ok(kl * (temperature * temperature) / b as f64)
}

/// Vanilla training (cross-entropy only) and KD.
pub struct Kd {
    cfg: DistillConfig,
    with_kd: bool,
}

impl Kd {
    /// Builds vanilla training when `with_kd` is false, KD otherwise.
    pub fn new(cfg: &DistillConfig, with_kd: bool) -> Kd {
        Kd { cfg: cfg.clone(), with_kd }
    }
}

impl Distiller for Kd {
    fn losses(&mut self, input: &StepInput) -> Result<Vec<LossTerm>> {
        check_step(input, None)?;
        let weights = schedule_weights(&self.cfg, input.progress);
        let (terms, _kd) = logit_terms(&self.cfg, input, weights, self.with_kd)?;
        Ok(terms)
    }

    fn teacher_train_mode(&self) -> bool {
        self.cfg.teacher_train_mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn kd_loss_zero_when_logits_equal() -> Result<()> {
        let z = Tensor::randn([4, 7], (Kind::Float, Device::Cpu));
        let loss = kd_loss(&z, &z, 4.0)?.double_value(&[]);
        assert!(loss.abs() < 1e-6, "{loss}");
        Ok(())
    }

    #[test]
    fn kd_loss_rejects_mismatched_classes() {
        let s = Tensor::zeros([4, 7], (Kind::Float, Device::Cpu));
        let t = Tensor::zeros([4, 5], (Kind::Float, Device::Cpu));
        let err = kd_loss(&s, &t, 4.0).unwrap_err().to_string();
        assert!(err.contains("[4, 7]"), "{err}");
        assert!(err.contains("[4, 5]"), "{err}");
    }
}
