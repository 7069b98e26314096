//! Embedding heads of CRD (Tian et al., ICLR 2020,
//! <https://arxiv.org/abs/1910.10699>) and CRCD (Zhu et al., CVPR 2021,
//! <https://arxiv.org/abs/2103.16367>): a small network that maps a feature
//! (or a gradient element) to the unit sphere of the contrast space.
//!
//! Variable names follow the CRCD release's `Embed` module: `linear.weight`
//! for the linear head, and `linear.0`, `linear.2`, `linear.4` for the
//! layers of the nonlinear head's `nn.Sequential`.

use anyhow::{bail, Result};
use tch::{nn, nn::Module, Tensor};

use crate::config::Embed;

/// Norms below this are clamped before dividing, as in PyTorch's
/// `F.normalize`, so that a zero vector maps to zero instead of NaN.
pub const MIN_NORM: f64 = 1e-12;

/// Divides each row by its L2 norm, `x / max(‖x‖, 1e-12)`.
///
/// # Shapes
/// - `xs`: (..., m) float.
/// - returns: the same shape, normalised along the last dimension.
pub fn l2_normalize(xs: &Tensor) -> Tensor {
    let norm = xs.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true).clamp_min(MIN_NORM);
    xs / norm
}

/// An embedding head followed by L2 normalisation.
#[derive(Debug)]
pub struct EmbedHead {
    layers: Vec<nn::Linear>,
    out_dim: i64,
}

impl EmbedHead {
    /// Builds a head of `kind` from width `in_dim` to `feat_dim`.
    ///
    /// `linear` is one Linear(in_dim, feat_dim); `nonlinear` is
    /// Linear(in_dim, in_dim), ReLU, Linear(in_dim, feat_dim), ReLU,
    /// Linear(feat_dim, feat_dim); `none` is the identity, whose output
    /// width is `in_dim` whatever the value of `feat_dim`.
    pub fn new(p: &nn::Path, kind: Embed, in_dim: i64, feat_dim: i64) -> Result<EmbedHead> {
        if in_dim < 1 || feat_dim < 1 {
            bail!("invalid embedding head widths {in_dim} -> {feat_dim}: expected at least 1");
        }
        let cfg = nn::LinearConfig::default();
        let head = p / "linear";
        let (layers, out_dim) = match kind {
            Embed::Linear => (vec![nn::linear(&head, in_dim, feat_dim, cfg)], feat_dim),
            Embed::Nonlinear => (
                vec![
                    nn::linear(&head / 0, in_dim, in_dim, cfg),
                    nn::linear(&head / 2, in_dim, feat_dim, cfg),
                    nn::linear(&head / 4, feat_dim, feat_dim, cfg),
                ],
                feat_dim,
            ),
            Embed::None => (vec![], in_dim),
        };
        Ok(EmbedHead { layers, out_dim })
    }

    /// Width of the embedding.
    pub fn out_dim(&self) -> i64 {
        self.out_dim
    }

    /// Maps rows to unit-norm embeddings.
    ///
    /// # Shapes
    /// - `xs`: (B, d) float.
    /// - returns: (B, out_dim), each row of norm 1 (or 0 for a zero row).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_b, d) = xs.size2()?;
        let expected = self.layers.first().map_or(self.out_dim, |l| l.ws.size()[1]);
        if d != expected {
            bail!("embedding head: input width {d} does not match the head's {expected}");
        }
        let mut hidden = xs.shallow_clone();
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            hidden = layer.forward(&hidden);
            if i < last {
                hidden = hidden.relu();
            }
        }
        Ok(l2_normalize(&hidden))
    }
}
