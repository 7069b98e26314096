//! The gradient element of CRCD (Zhu et al., "Complementary Relation
//! Contrastive Distillation", CVPR 2021, <https://arxiv.org/abs/2103.16367>):
//! `g = ∂ CE(logits, y) / ∂ f` for the pooled feature f, with the
//! cross-entropy averaged over the batch.
//!
//! For a feature that feeds a linear classifier `logits = f Wᵀ + b` the
//! gradient has the closed form `(softmax(f Wᵀ + b) − onehot(y)) · W / B`;
//! the autograd path computes the same with `create_graph = true`. The
//! student's element keeps its graph, so a loss on it trains the student
//! through second-order terms; the teacher's is a constant.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::kd::cross_entropy;
use crate::config::GradientPath;
use crate::models::ModelOutput;

/// Scale of the cosine gradient loss, `10 · (1 − mean cos)`: the default of
/// the CRCD release, which brings the loss near the size of the others.
pub const COSINE_SCALE: f64 = 10.0;
/// Norms below this are clamped in the cosine, as `F.cosine_similarity`
/// does with its default `eps`.
pub const COSINE_EPS: f64 = 1e-8;

/// Computes `(softmax(f Wᵀ + b) − onehot(y)) · W / B`, differentiable in f,
/// W and b.
///
/// # Shapes
/// - `feat`: (B, d) float, the pooled feature.
/// - `weight`: (C, d) and `bias`: (C,), the linear classifier.
/// - `labels`: (B,) i64 in `[0, C)`.
/// - returns: (B, d), the gradient of the batch-mean cross-entropy.
pub fn closed_form_gradient(
    feat: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    labels: &Tensor,
) -> Result<Tensor> {
    let (b, d) = feat.size2()?;
    let (c, wd) = weight.size2()?;
    let bias_len = bias.size1()?;
    let labels_len = labels.size1()?;
    if wd != d || bias_len != c || labels_len != b {
        bail!(
            "gradient element: feature [{b}, {d}], classifier weight [{c}, {wd}], \
             bias [{bias_len}] and {labels_len} labels do not fit together"
        );
    }
    let probs = feat.linear(weight, Some(bias)).softmax(-1, feat.kind());
    let onehot = labels.onehot(c).to_kind(feat.kind());
    Ok((probs - onehot).mm(weight) / b as f64)
}

/// Computes `∂ CE(logits, y) / ∂ feat` with autograd; `logits` must have been
/// computed from `feat` inside the current graph.
///
/// With `create_graph` the result keeps a graph of its own, so a loss on it
/// can be backpropagated into whatever produced `feat` and `logits`. The
/// graph of `logits` is kept for the trainer's backward pass.
///
/// # Shapes
/// - `feat`: (B, d) float, any feature layer with autograd graph.
/// - `logits`: (B, C) float; `labels`: (B,) i64.
/// - returns: (B, d).
pub fn autograd_gradient(
    feat: &Tensor,
    logits: &Tensor,
    labels: &Tensor,
    create_graph: bool,
) -> Result<Tensor> {
    let ce = cross_entropy(logits, labels)?;
    let mut grads = Tensor::f_run_backward(&[ce], &[feat], true, create_graph)?;
    Ok(grads.remove(0))
}

/// Computes the student's gradient element, with its graph.
pub fn student_gradient(
    path: GradientPath,
    student: &ModelOutput,
    classifier: (&Tensor, &Tensor),
    labels: &Tensor,
) -> Result<Tensor> {
    match path {
        GradientPath::ClosedForm => {
            closed_form_gradient(student.pooled(), classifier.0, classifier.1, labels)
        }
        GradientPath::Autograd => {
            autograd_gradient(student.pooled(), &student.logits, labels, true)
        }
    }
}

/// Computes the teacher's gradient element as a constant.
///
/// The trainer runs the teacher without a graph, so the autograd path
/// differentiates the frozen classifier applied to a detached copy of the
/// pooled feature. Both paths therefore use the pooled feature.
pub fn teacher_gradient(
    path: GradientPath,
    teacher: &ModelOutput,
    classifier: (&Tensor, &Tensor),
    labels: &Tensor,
) -> Result<Tensor> {
    let (weight, bias) = (classifier.0.detach(), classifier.1.detach());
    let feat = teacher.pooled().detach();
    let grad = match path {
        GradientPath::ClosedForm => {
            tch::no_grad(|| closed_form_gradient(&feat, &weight, &bias, labels))?
        }
        GradientPath::Autograd => tch::with_grad(|| {
            let feat = feat.set_requires_grad(true);
            let logits = feat.linear(&weight, Some(&bias));
            autograd_gradient(&feat, &logits, labels, false)
        })?,
    };
    Ok(grad.detach())
}

/// Computes `10 · (1 − mean_i cos(g_t[i], g_s[i]))`.
///
/// # Shapes
/// - `student`, `teacher`: (B, d) float; only equal widths can be compared.
/// - returns: () scalar.
pub fn cosine_gradient_loss(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let (b, d) = student.size2()?;
    let (bt, dt) = teacher.size2()?;
    if (b, d) != (bt, dt) {
        bail!(
            "cosine gradient loss needs equal shapes, got student [{b}, {d}] and teacher \
             [{bt}, {dt}]; use gradient_loss crcd or crd for different widths"
        );
    }
    let norm =
        |x: &Tensor| x.norm_scalaropt_dim(2.0, [1i64].as_slice(), false).clamp_min(COSINE_EPS);
    let dot = (student * teacher).sum_dim_intlist([1i64].as_slice(), false, student.kind());
    let cos = dot / (norm(student) * norm(teacher));
    Ok((1.0 - cos.mean(Kind::Double).to_kind(student.kind())) * COSINE_SCALE)
}
