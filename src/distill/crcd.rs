//! Complementary Relation Contrastive Distillation (Zhu et al., CVPR 2021,
//! <https://arxiv.org/abs/2103.16367>).
//!
//! CRCD distils relations between a sample and the memory-bank entries of
//! its batch instead of the samples themselves, for two elements: the pooled
//! feature (`loss_feat`) and the gradient of the cross-entropy with respect
//! to it (`loss_grad`). Each element has its own heads, banks and Z; both
//! share the step's contrast indices. The total adds KD:
//!
//! ```text
//! L = γ·w_task·CE + α·w_mimic·KD + β·w_mimic·(L_feat + λ_g·L_grad)
//! ```
//!
//! With `grad_times_kd`, the authors' release variant, the gradient term is
//! `α·λ_g·KD·L_grad` instead: multiplied by the KD loss and not scheduled.

use anyhow::Result;
use tch::{nn, Tensor};

use super::contrast::{ContrastBranch, Objective};
use super::crd::FEATURE_BANK_STREAM;
use super::gradient::{cosine_gradient_loss, student_gradient, teacher_gradient};
use super::memory::ContrastSampler;
use super::schedule::schedule_weights;
use super::{check_step, logit_terms, DistillShapes, Distiller, LossTerm, StepInput};
use super::{LOSS_FEAT, LOSS_GRAD};
use crate::config::{DistillConfig, Element, GradientLoss};

/// Init streams of the gradient branch's two banks; the feature branch uses
/// the two before them.
const GRADIENT_BANK_STREAM: u64 = FEATURE_BANK_STREAM + 2;

/// The loss on the gradient element.
#[derive(Debug)]
pub enum GradientTerm {
    /// CRCD's relation loss or CRD's loss, with the branch's own variables.
    Contrast(ContrastBranch),
    /// `10 · (1 − mean cos(g_t, g_s))`.
    Cosine,
}

/// The CRCD method.
pub struct Crcd {
    cfg: DistillConfig,
    /// Present when a contrastive branch needs contrast indices.
    sampler: Option<ContrastSampler>,
    feature: Option<ContrastBranch>,
    gradient: Option<GradientTerm>,
    n_data: i64,
}

impl Crcd {
    /// Builds the method with its variables under `p`: the feature branch
    /// under `feat/`, the gradient branch under `grad/` and, for queue
    /// sampling, the FIFO `queue`.
    pub fn new(
        cfg: &DistillConfig,
        p: &nn::Path,
        shapes: &DistillShapes,
        train_labels: &Tensor,
        seed: u64,
    ) -> Result<Crcd> {
        let relation = Objective::Crcd(cfg.relation_form);
        let (d_s, d_t) = (shapes.student_dim, shapes.teacher_dim);
        let feature = if cfg.elements.contains(&Element::Feature) {
            let p = p / "feat";
            Some(ContrastBranch::new(&p, cfg, relation, shapes, seed, FEATURE_BANK_STREAM)?)
        } else {
            None
        };
        let gradient = if cfg.elements.contains(&Element::Gradient) {
            let p = p / "grad";
            let objective = match cfg.gradient_loss {
                GradientLoss::Crcd => Some(relation),
                GradientLoss::Crd => Some(Objective::Crd),
                GradientLoss::Cosine => None,
            };
            Some(match objective {
                Some(objective) => GradientTerm::Contrast(ContrastBranch::new(
                    &p,
                    cfg,
                    objective,
                    shapes,
                    seed,
                    GRADIENT_BANK_STREAM,
                )?),
                None => {
                    if d_s != d_t {
                        anyhow::bail!(
                            "gradient_loss cosine compares gradients of equal width, but the \
                             student's is {d_s} and the teacher's is {d_t}; use gradient_loss \
                             crcd or crd"
                        );
                    }
                    GradientTerm::Cosine
                }
            })
        } else {
            None
        };
        let needs_sampler =
            feature.is_some() || matches!(gradient, Some(GradientTerm::Contrast(_)));
        let sampler = if needs_sampler {
            Some(ContrastSampler::new(p, cfg.sampling, cfg.nce_k, train_labels, seed)?)
        } else {
            None
        };
        Ok(Crcd { cfg: cfg.clone(), sampler, feature, gradient, n_data: shapes.num_data })
    }

    /// Returns the feature branch, if `elements` has `feature`.
    pub fn feature_branch(&self) -> Option<&ContrastBranch> {
        self.feature.as_ref()
    }

    /// Returns the gradient term, if `elements` has `gradient`.
    pub fn gradient_term(&self) -> Option<&GradientTerm> {
        self.gradient.as_ref()
    }
}

impl Distiller for Crcd {
    fn losses(&mut self, input: &StepInput) -> Result<Vec<LossTerm>> {
        check_step(input, Some(self.n_data))?;
        let cfg = &self.cfg;
        let weights = schedule_weights(cfg, input.progress);
        let (mut terms, kd) = logit_terms(cfg, input, weights, true)?;
        let kd = kd.expect("logit_terms returns KD when asked for it");
        let contrast = match &self.sampler {
            Some(sampler) => Some(sampler.sample(input.indices, input.step)?),
            None => None,
        };
        let contrast_ref = || contrast.as_ref().expect("a contrastive branch has a sampler");
        if let Some(branch) = &self.feature {
            let (f_s, f_t) = (input.student.pooled(), input.teacher.pooled());
            let loss = branch.loss(f_s, f_t, input.indices, contrast_ref())?;
            terms.push(LossTerm { name: LOSS_FEAT, value: loss, weight: cfg.beta * weights.mimic });
        }
        if let Some(gradient) = &self.gradient {
            let path = cfg.gradient_path;
            let g_s =
                student_gradient(path, input.student, input.student_classifier, input.labels)?;
            let g_t =
                teacher_gradient(path, input.teacher, input.teacher_classifier, input.labels)?;
            let loss = match gradient {
                GradientTerm::Contrast(branch) => {
                    branch.loss(&g_s, &g_t, input.indices, contrast_ref())?
                }
                GradientTerm::Cosine => cosine_gradient_loss(&g_s, &g_t)?,
            };
            terms.push(if cfg.grad_times_kd {
                LossTerm { name: LOSS_GRAD, value: &kd * loss, weight: cfg.alpha * cfg.lambda_g }
            } else {
                LossTerm {
                    name: LOSS_GRAD,
                    value: loss,
                    weight: cfg.beta * weights.mimic * cfg.lambda_g,
                }
            });
        }
        if let Some(sampler) = &self.sampler {
            sampler.push(input.indices)?;
        }
        Ok(terms)
    }

    fn teacher_train_mode(&self) -> bool {
        self.cfg.teacher_train_mode
    }
}
