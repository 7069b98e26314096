//! Contrastive Representation Distillation (Tian et al., ICLR 2020,
//! <https://arxiv.org/abs/1910.10699>), alone (method crd) or with KD
//! (method crd_kd).
//!
//! Scores are `s_s[i,k] = ⟨M_t[C[i,k]], e_s[i]⟩` on the student side and
//! `s_t[i,k] = ⟨M_s[C[i,k]], e_t[i]⟩` on the teacher side, and the loss is the
//! NCE objective of both sides; see [`super::nce`].

use anyhow::{bail, Result};
use tch::{nn, Tensor};

use super::contrast::{ContrastBranch, Objective};
use super::memory::ContrastSampler;
use super::schedule::schedule_weights;
use super::{check_step, logit_terms, DistillShapes, Distiller, LossTerm, StepInput, LOSS_CRD};
use crate::config::{DistillConfig, Method};

/// Init streams of the feature branch's two banks.
pub(crate) const FEATURE_BANK_STREAM: u64 = 0;

/// Computes CRD's scores of embeddings against bank rows.
///
/// # Shapes
/// - `embed`: (B, m) float, one side's unit-norm embeddings.
/// - `bank`: (N, m) float, the other side's memory bank.
/// - `contrast`: (B, K+1) i64.
/// - returns: (B, K+1), `⟨bank[C[i,k]], embed[i]⟩`.
pub fn crd_scores(embed: &Tensor, bank: &Tensor, contrast: &Tensor) -> Result<Tensor> {
    let (b, m) = embed.size2()?;
    let (_n, bank_m) = bank.size2()?;
    let (cb, k1) = contrast.size2()?;
    if bank_m != m || cb != b {
        bail!(
            "crd scores: embeddings [{b}, {m}] do not fit bank width {bank_m} and contrast \
             indices [{cb}, {k1}]"
        );
    }
    let rows = bank.detach().to_kind(embed.kind()).f_index_select(0, &contrast.reshape([-1]))?;
    Ok(rows.view([b, k1, m]).bmm(&embed.unsqueeze(2)).view([b, k1]))
}

/// CRD and CRD+KD.
pub struct Crd {
    cfg: DistillConfig,
    sampler: ContrastSampler,
    branch: ContrastBranch,
    n_data: i64,
}

impl Crd {
    /// Builds the method with its variables under `p`: the feature branch
    /// under `feat/` and, for queue sampling, the FIFO `queue`.
    pub fn new(
        cfg: &DistillConfig,
        p: &nn::Path,
        shapes: &DistillShapes,
        train_labels: &Tensor,
        seed: u64,
    ) -> Result<Crd> {
        let sampler = ContrastSampler::new(p, cfg.sampling, cfg.nce_k, train_labels, seed)?;
        let branch = ContrastBranch::new(
            &(p / "feat"),
            cfg,
            Objective::Crd,
            shapes,
            seed,
            FEATURE_BANK_STREAM,
        )?;
        Ok(Crd { cfg: cfg.clone(), sampler, branch, n_data: shapes.num_data })
    }

    /// Returns the contrastive branch on the pooled features.
    pub fn branch(&self) -> &ContrastBranch {
        &self.branch
    }
}

impl Distiller for Crd {
    fn losses(&mut self, input: &StepInput) -> Result<Vec<LossTerm>> {
        check_step(input, Some(self.n_data))?;
        let weights = schedule_weights(&self.cfg, input.progress);
        // Method crd has α = 0 by default; a non-zero α adds KD all the same.
        let with_kd = self.cfg.method == Method::CrdKd || self.cfg.alpha > 0.0;
        let (mut terms, _kd) = logit_terms(&self.cfg, input, weights, with_kd)?;
        let contrast = self.sampler.sample(input.indices, input.step)?;
        let loss = self.branch.loss(
            input.student.pooled(),
            input.teacher.pooled(),
            input.indices,
            &contrast,
        )?;
        self.sampler.push(input.indices)?;
        terms.push(LossTerm { name: LOSS_CRD, value: loss, weight: self.cfg.beta * weights.mimic });
        Ok(terms)
    }

    fn teacher_train_mode(&self) -> bool {
        self.cfg.teacher_train_mode
    }
}
