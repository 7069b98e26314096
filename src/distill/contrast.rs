//! One contrastive branch of CRD (Tian et al., ICLR 2020,
//! <https://arxiv.org/abs/1910.10699>) or CRCD (Zhu et al., CVPR 2021,
//! <https://arxiv.org/abs/2103.16367>): an embedding head per side, a memory
//! bank per side and a normalisation constant per side's scores.
//!
//! The student side scores the student's embedding `e_s` against the teacher
//! bank `M_t`, and the teacher side scores `e_t` against `M_s`. The branch's
//! loss is the sum of the two sides' NCE objectives. The same branch serves
//! features and gradient elements, each with its own variables.

use anyhow::{bail, Result};
use tch::{nn, Kind, Tensor};

use super::crd::crd_scores;
use super::embed::EmbedHead;
use super::memory::{MemoryBank, NormConstant};
use super::nce::nce_loss;
use super::relation::relation_loss;
use super::DistillShapes;
use crate::config::{DistillConfig, Embed, RelationForm};

/// Scoring rule of a branch: embeddings against memory-bank rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// `s[i,k] = ⟨M[C[i,k]], e_i⟩`.
    Crd,
    /// The relation scores of CRCD, in the given form.
    Crcd(RelationForm),
}

/// Turns raw scores into the NCE objective: `x = exp(s/T)/Z`, setting Z from
/// these scores if it is unset.
///
/// # Shapes
/// - `scores`: (R, K+1) float, column 0 the positives.
/// - returns: () scalar.
pub fn scores_to_loss(
    scores: &Tensor,
    temperature: f64,
    z: &NormConstant,
    n_data: i64,
) -> Result<Tensor> {
    let (_rows, _cols) = scores.size2()?;
    let exp = (scores / temperature).exp();
    let z = z.get_or_init(n_data, || Ok(exp.detach().mean(Kind::Double).double_value(&[])))?;
    nce_loss(&(exp / z), n_data)
}

/// Heads, banks and normalisation constants of one contrastive branch.
#[derive(Debug)]
pub struct ContrastBranch {
    objective: Objective,
    embed_s: EmbedHead,
    embed_t: EmbedHead,
    memory_s: MemoryBank,
    memory_t: MemoryBank,
    /// Z of the student side's scores (`e_s` against `M_t`).
    z_s: NormConstant,
    /// Z of the teacher side's scores (`e_t` against `M_s`).
    z_t: NormConstant,
    temperature: f64,
    n_data: i64,
}

impl ContrastBranch {
    /// Builds a branch under `p` for inputs of widths `shapes.student_dim`
    /// and `shapes.teacher_dim`, which a gradient element shares with its
    /// feature.
    ///
    /// Variables: `embed_s` and `embed_t` (trainable), `memory_s` and
    /// `memory_t` (N, m), `z_s` and `z_t` (1,) f64. The banks draw their
    /// initial rows from init streams `bank_stream` and `bank_stream + 1`.
    pub fn new(
        p: &nn::Path,
        cfg: &DistillConfig,
        objective: Objective,
        shapes: &DistillShapes,
        seed: u64,
        bank_stream: u64,
    ) -> Result<ContrastBranch> {
        let (student_dim, teacher_dim) = (shapes.student_dim, shapes.teacher_dim);
        let n_data = shapes.num_data;
        if cfg.embed == Embed::None && student_dim != teacher_dim {
            bail!(
                "embed none needs equal student and teacher widths, but the student's is \
                 {student_dim} and the teacher's is {teacher_dim}; use embed linear or nonlinear"
            );
        }
        if cfg.feat_dim < 1 {
            bail!("invalid feat_dim {}: expected at least 1", cfg.feat_dim);
        }
        let embed_s = EmbedHead::new(&(p / "embed_s"), cfg.embed, student_dim, cfg.feat_dim)?;
        let embed_t = EmbedHead::new(&(p / "embed_t"), cfg.embed, teacher_dim, cfg.feat_dim)?;
        let m = embed_s.out_dim();
        let memory_s = MemoryBank::new(p, "memory_s", n_data, m, cfg.nce_mu, seed, bank_stream)?;
        let memory_t =
            MemoryBank::new(p, "memory_t", n_data, m, cfg.nce_mu, seed, bank_stream + 1)?;
        Ok(ContrastBranch {
            objective,
            embed_s,
            embed_t,
            memory_s,
            memory_t,
            z_s: NormConstant::new(p, "z_s"),
            z_t: NormConstant::new(p, "z_t"),
            temperature: cfg.nce_t,
            n_data,
        })
    }

    /// Computes the branch's loss `L(x_s) + L(x_t)`, then moves the banks'
    /// rows `rows` towards this batch's detached embeddings.
    ///
    /// # Shapes
    /// - `student`: (B, d_s) float, with its autograd graph.
    /// - `teacher`: (B, d_t) float, a constant.
    /// - `rows`: (B,) i64 dataset rows; `contrast`: (B, K+1) i64.
    /// - returns: () scalar.
    pub fn loss(
        &self,
        student: &Tensor,
        teacher: &Tensor,
        rows: &Tensor,
        contrast: &Tensor,
    ) -> Result<Tensor> {
        let device = self.memory_s.rows().device();
        let (rows, contrast) = (&rows.to_device(device), &contrast.to_device(device));
        let e_s = self.embed_s.forward(student)?;
        let e_t = self.embed_t.forward(&teacher.detach())?;
        let (t, n) = (self.temperature, self.n_data);
        let loss = match self.objective {
            Objective::Crd => {
                let loss_s = scores_to_loss(
                    &crd_scores(&e_s, self.memory_t.rows(), contrast)?,
                    t,
                    &self.z_s,
                    n,
                )?;
                let loss_t = scores_to_loss(
                    &crd_scores(&e_t, self.memory_s.rows(), contrast)?,
                    t,
                    &self.z_t,
                    n,
                )?;
                loss_s + loss_t
            }
            Objective::Crcd(form) => {
                let loss_s = relation_loss(
                    form,
                    &e_s,
                    self.memory_t.rows(),
                    rows,
                    contrast,
                    t,
                    &self.z_s,
                    n,
                )?;
                let loss_t = relation_loss(
                    form,
                    &e_t,
                    self.memory_s.rows(),
                    rows,
                    contrast,
                    t,
                    &self.z_t,
                    n,
                )?;
                loss_s + loss_t
            }
        };
        self.memory_s.update(rows, &e_s)?;
        self.memory_t.update(rows, &e_t)?;
        Ok(loss)
    }

    /// Returns the student bank (N, m) and the teacher bank (N, m).
    pub fn banks(&self) -> (&Tensor, &Tensor) {
        (self.memory_s.rows(), self.memory_t.rows())
    }

    /// Returns Z of the student side and of the teacher side, None until set.
    pub fn norm_constants(&self) -> (Option<f64>, Option<f64>) {
        (self.z_s.get(), self.z_t.get())
    }
}
