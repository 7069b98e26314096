//! Relation scores of CRCD (Zhu et al., "Complementary Relation Contrastive
//! Distillation", CVPR 2021, <https://arxiv.org/abs/2103.16367>).
//!
//! On the student side the anchors are the teacher-bank rows of the batch,
//! `a_j = M_t[y_j]`, and the candidates are `w_ik = M_t[C[i,k]]`. For sample
//! i, anchor j and candidate k,
//!
//! ```text
//! u = w_ik − a_j + δ·1,   v = e_i − a_j + δ·1,   s[i,j,k] = ⟨n(u), n(v)⟩
//! ```
//!
//! with `n(x) = x / max(‖x‖, 1e-12)`. The teacher side is the same with the
//! student bank and the teacher's embedding. Two forms compute `s`:
//!
//! - direct: materialises u, B·B·(K+1)·m floats (1 GiB in f32 at B = 64,
//!   K = 500, m = 128); the reference that the Gram form is tested against.
//! - Gram: expands every term into dot products,
//!
//!   ```text
//!   ⟨u,v⟩ = ⟨w,e⟩ − ⟨w,a⟩ − ⟨a,e⟩ + ‖a‖² + δ(Σu₀ + Σv₀) + m·δ²
//!   ‖u‖²  = ‖w‖² + ‖a‖² − 2⟨w,a⟩ + 2δ·Σu₀ + m·δ²      (u₀ = w − a)
//!   ‖v‖²  = ‖e‖² + ‖a‖² − 2⟨a,e⟩ + 2δ·Σv₀ + m·δ²      (v₀ = e − a)
//!   ```
//!
//!   and needs B·B·(K+1) numbers, in slabs of a few rows i at a time.
//!
//! The anchors include the sample's own bank row, so `u = δ·1` exactly
//! whenever `C[i,k] = y_j`. The Gram form finds those degenerate pairs from
//! the indices and sets `u₀ = 0` there, which is what the direct form computes
//! because subtracting a row from itself gives exact zeros.
//!
//! # Tolerance of the Gram form
//!
//! The Gram form computes in f64 whatever the input kind, because
//! `‖w‖² + ‖a‖² − 2⟨w,a⟩` cancels when a candidate is close to an anchor.
//! With unit-norm bank rows and embeddings, every dot product above has an
//! absolute rounding error of at most `γ = (m+4)·2⁻⁵³ / (1 − (m+4)·2⁻⁵³)`
//! (the standard bound `|fl(xᵀy) − xᵀy| ≤ γ_m·‖x‖‖y‖`, with four more
//! additions), and the δ terms add less than `2δ√m·γ`. So `⟨u,v⟩`, `‖u‖²`
//! and `‖v‖²` are each off by at most `5γ`. Clamping `‖u₀‖²` and `‖v₀‖²` at
//! zero only moves them towards their true, non-negative values. To first
//! order, and with `|s| ≤ 1`, the score then satisfies
//!
//! ```text
//! |s_gram − s| ≤ 5γ · (1/(‖u‖‖v‖) + 1/(2‖u‖²) + 1/(2‖v‖²)) + 4·2⁻⁵³
//! ```
//!
//! In a degenerate pair u is exact and only the δ·Σv₀ part of the numerator
//! is rounded, so there the bound is `5γ · (1/‖v‖ + 1/(2‖v‖²)) + 4·2⁻⁵³`.
//! For m = 128 both are below 2e-7 when ‖u‖, ‖v‖ ≥ 1e-3, and below 2e-9
//! when they are ≥ 1e-2. The test `gram_matches_direct_within_bound` checks this bound
//! entry by entry against the direct form in f64, whose own error is at most
//! `4γ`, on random banks that contain degenerate pairs and near-duplicate
//! rows. In f32, the direct form's own rounding (`γ` with 2⁻²⁴) dominates.

use std::ops::Range;

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::contrast::scores_to_loss;
use super::embed::MIN_NORM;
use super::memory::NormConstant;
use super::nce::{noise_mass, NCE_EPS};
use crate::config::RelationForm;

/// Added to every element of u and v, so that a degenerate pair (`u₀ = 0`)
/// still has a direction, `1/√m`; the value of the CRCD release.
pub const RELATION_DELTA: f64 = 1e-6;

/// Target size of one (c, K+1, B) slab of the Gram form, where c is the
/// number of rows i per chunk (at least 1). 2¹⁸ f64 numbers are 2 MiB, and a
/// chunk keeps about five slabs and its (c, K+1, m) candidates at once. Above
/// B·(K+1) = 2¹⁸ a chunk is one row, so a slab grows with K: 8 MiB at B = 64
/// and K = 16384.
const CHUNK_ELEMENTS: i64 = 1 << 18;

/// Checks the shapes of one side's inputs and returns (B, m, K+1).
fn check_inputs(
    embed: &Tensor,
    bank: &Tensor,
    rows: &Tensor,
    contrast: &Tensor,
) -> Result<(i64, i64, i64)> {
    let (b, m) = embed.size2()?;
    let (_n, bank_m) = bank.size2()?;
    let rows_len = rows.size1()?;
    let (cb, k1) = contrast.size2()?;
    if bank_m != m {
        bail!("relation scores: embedding width {m} but memory bank width {bank_m}");
    }
    if rows_len != b || cb != b {
        bail!(
            "relation scores: {b} embeddings but {rows_len} batch rows and {cb} rows of \
             contrast indices"
        );
    }
    if k1 < 2 {
        bail!("relation scores: {k1} contrast column(s), expected a positive and a negative");
    }
    Ok((b, m, k1))
}

/// Computes the relation scores by materialising u and v.
///
/// Runs in the kind of `embed` and keeps its autograd graph.
///
/// # Shapes
/// - `embed`: (B, m) float, unit-norm embeddings e of one side.
/// - `bank`: (N, m) float, the other side's memory bank.
/// - `rows`: (B,) i64, the batch's dataset rows y.
/// - `contrast`: (B, K+1) i64, contrast indices C.
/// - returns: (B, B, K+1), `s[i,j,k]` for sample i, anchor j, candidate k.
pub fn relation_scores_direct(
    embed: &Tensor,
    bank: &Tensor,
    rows: &Tensor,
    contrast: &Tensor,
) -> Result<Tensor> {
    let (b, m, k1) = check_inputs(embed, bank, rows, contrast)?;
    let bank = bank.detach().to_kind(embed.kind());
    let anchors = bank.f_index_select(0, rows)?;
    let candidates = bank.f_index_select(0, &contrast.reshape([-1]))?.view([b, 1, k1, m]);
    // u does not depend on the embedding, so it is built and normalised in
    // place to hold one (B, B, K+1, m) tensor at a time.
    let mut u = candidates - anchors.view([1, b, 1, m]);
    u += RELATION_DELTA;
    let u_norm = u.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true).clamp_min(MIN_NORM);
    u /= u_norm;
    let v = embed.unsqueeze(1) - anchors.unsqueeze(0) + RELATION_DELTA;
    let v = super::embed::l2_normalize(&v);
    let s = u.view([b * b, k1, m]).bmm(&v.view([b * b, m, 1]));
    Ok(s.view([b, b, k1]))
}

/// The batch-level (B, B) quantities of the Gram form that depend on the
/// embedding, computed in f64 with autograd.
struct AnchorTerms {
    /// `⟨e_i, a_j⟩`.
    embed_dot_anchor: Tensor,
    /// `Σv₀ = Σe_i − Σa_j`.
    v0_sum: Tensor,
    /// `1 / max(‖v‖, 1e-12)`.
    v_inv_norm: Tensor,
}

impl AnchorTerms {
    fn new(embed: &Tensor, anchors: &Tensor, anchor_sq: &Tensor, anchor_sum: &Tensor) -> Self {
        let m = embed.size()[1] as f64;
        let embed_dot_anchor = embed.mm(&anchors.tr());
        let embed_sq = embed.square().sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
        let embed_sum = embed.sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
        let v0_sum = embed_sum.unsqueeze(1) - anchor_sum.unsqueeze(0);
        let v0_sq = (embed_sq.unsqueeze(1) + anchor_sq.unsqueeze(0) - &embed_dot_anchor * 2.0)
            .clamp_min(0.0);
        let v_sq = v0_sq + &v0_sum * (2.0 * RELATION_DELTA) + m * RELATION_DELTA * RELATION_DELTA;
        let v_inv_norm = v_sq.clamp_min(MIN_NORM * MIN_NORM).rsqrt();
        AnchorTerms { embed_dot_anchor, v0_sum, v_inv_norm }
    }

    fn detach(&self) -> Self {
        AnchorTerms {
            embed_dot_anchor: self.embed_dot_anchor.detach(),
            v0_sum: self.v0_sum.detach(),
            v_inv_norm: self.v_inv_norm.detach(),
        }
    }
}

/// Detached f64 inputs of the Gram form, shared by all chunks.
struct GramContext<'a> {
    bank: &'a Tensor,
    rows: &'a Tensor,
    contrast: &'a Tensor,
    embed: Tensor,
    anchors: Tensor,
    anchor_sq: Tensor,
    anchor_sum: Tensor,
    terms: AnchorTerms,
    b: i64,
    m: i64,
    k1: i64,
}

/// Scores of the rows i of one chunk, in layout (c, K+1, B) f64: row i,
/// candidate k, anchor j.
struct ChunkScores {
    /// Candidates `w_ik`, (c, K+1, m).
    candidates: Tensor,
    /// Positions (i within the chunk, k, j) where `C[i,k] = y_j`, each (D,).
    degenerate: Vec<Tensor>,
    /// `⟨u, v⟩`.
    numerator: Tensor,
    /// `1 / max(‖u‖, 1e-12)`.
    u_inv_norm: Tensor,
    /// `s = ⟨u,v⟩ / (‖u‖‖v‖)`.
    scores: Tensor,
}

impl GramContext<'_> {
    fn chunk_rows(&self) -> i64 {
        (CHUNK_ELEMENTS / (self.b * self.k1)).max(1)
    }

    fn chunks(&self) -> impl Iterator<Item = Range<i64>> + '_ {
        let step = self.chunk_rows();
        (0..self.b).step_by(step as usize).map(move |start| start..(start + step).min(self.b))
    }

    /// Computes the scores of rows `chunk`. Every (c, K+1, B) tensor is
    /// updated in place, because the loss is memory-bound and these slabs
    /// are its largest tensors.
    fn scores(&self, chunk: Range<i64>) -> Result<ChunkScores> {
        let (b, m, k1) = (self.b, self.m, self.k1);
        let c = chunk.end - chunk.start;
        let sum_m = [-1i64];
        let contrast = self.contrast.narrow(0, chunk.start, c);
        let candidates = self
            .bank
            .f_index_select(0, &contrast.reshape([-1]))?
            .to_kind(Kind::Double)
            .view([c, k1, m]);
        let cand_sq = candidates.square().sum_dim_intlist(sum_m.as_slice(), false, Kind::Double);
        let cand_sum = candidates.sum_dim_intlist(sum_m.as_slice(), false, Kind::Double);
        let embed = self.embed.narrow(0, chunk.start, c);
        let cand_dot_embed = candidates.bmm(&embed.unsqueeze(2)).view([c, k1, 1]);
        let anchor_sq = self.anchor_sq.view([1, 1, b]);
        let anchor_sum = self.anchor_sum.view([1, 1, b]);
        let embed_dot_anchor = self.terms.embed_dot_anchor.narrow(0, chunk.start, c).unsqueeze(1);
        let v0_sum = self.terms.v0_sum.narrow(0, chunk.start, c);
        let v_inv_norm = self.terms.v_inv_norm.narrow(0, chunk.start, c).unsqueeze(1);
        let m_delta_sq = m as f64 * RELATION_DELTA * RELATION_DELTA;

        // ⟨w_ik, a_j⟩, (c, K+1, B): the only term with all three indices.
        let cand_dot_anchor = candidates.view([c * k1, m]).mm(&self.anchors.tr()).view([c, k1, b]);
        // ‖u‖² = max(‖w‖² + ‖a‖² − 2⟨w,a⟩, 0) + 2δ(Σw − Σa) + m·δ².
        let mut u_sq = &cand_dot_anchor * -2.0;
        let _ = u_sq.g_add_(&cand_sq.unsqueeze(2));
        let _ = u_sq.g_add_(&anchor_sq);
        let _ = u_sq.clamp_min_(0.0);
        let _ = u_sq.g_add_(&(cand_sum.unsqueeze(2) * (2.0 * RELATION_DELTA)));
        let _ = u_sq.g_add_(&(&anchor_sum * (-2.0 * RELATION_DELTA) + m_delta_sq));
        // ⟨u,v⟩ = ⟨w,e⟩ − ⟨w,a⟩ − ⟨a,e⟩ + ‖a‖² + δ(Σw − Σa + Σv₀) + m·δ²,
        // built in the memory of ⟨w,a⟩.
        let mut numerator = cand_dot_anchor;
        let _ = numerator.neg_();
        let _ = numerator.g_add_(&(cand_dot_embed + cand_sum.unsqueeze(2) * RELATION_DELTA));
        let pair_terms = anchor_sq - embed_dot_anchor
            + (v0_sum.unsqueeze(1) - anchor_sum) * RELATION_DELTA
            + m_delta_sq;
        let _ = numerator.g_add_(&pair_terms);
        // Degenerate pairs: u₀ = 0, so ⟨u,v⟩ = δ·Σv₀ + m·δ² and ‖u‖² = m·δ².
        let degenerate =
            contrast.unsqueeze(2).eq_tensor(&self.rows.view([1, 1, b])).nonzero().unbind(1);
        let (di, dk, dj) = (&degenerate[0], &degenerate[1], &degenerate[2]);
        let index = [Some(di), Some(dk), Some(dj)];
        let exact = v0_sum.index(&[Some(di), Some(dj)]) * RELATION_DELTA + m_delta_sq;
        let _ = numerator.index_put_(&index, &exact, false);
        let _ = u_sq.index_put_(&index, &Tensor::from(m_delta_sq).to_device(u_sq.device()), false);

        let mut u_inv_norm = u_sq;
        let _ = u_inv_norm.clamp_min_(MIN_NORM * MIN_NORM).rsqrt_();
        let mut scores = &numerator * &u_inv_norm;
        let _ = scores.g_mul_(&v_inv_norm);
        Ok(ChunkScores { candidates, degenerate, numerator, u_inv_norm, scores })
    }
}

fn gram_context<'a>(
    embed: &Tensor,
    bank: &'a Tensor,
    rows: &'a Tensor,
    contrast: &'a Tensor,
) -> Result<(GramContext<'a>, AnchorTerms, Tensor)> {
    let (b, m, k1) = check_inputs(embed, bank, rows, contrast)?;
    let embed64 = embed.to_kind(Kind::Double);
    let anchors = bank.detach().f_index_select(0, rows)?.to_kind(Kind::Double);
    let anchor_sq = anchors.square().sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
    let anchor_sum = anchors.sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
    let terms = AnchorTerms::new(&embed64, &anchors, &anchor_sq, &anchor_sum);
    let ctx = GramContext {
        bank,
        rows,
        contrast,
        embed: embed64.detach(),
        anchors,
        anchor_sq,
        anchor_sum,
        terms: terms.detach(),
        b,
        m,
        k1,
    };
    Ok((ctx, terms, embed64))
}

/// Computes the relation scores in Gram form, without gradient.
///
/// Materialises all B·B·(K+1) scores, so it is meant for tests and small
/// sizes; [`relation_loss_gram`] never keeps more than a chunk.
///
/// # Shapes
/// As [`relation_scores_direct`]; returns (B, B, K+1) f64.
pub fn relation_scores_gram(
    embed: &Tensor,
    bank: &Tensor,
    rows: &Tensor,
    contrast: &Tensor,
) -> Result<Tensor> {
    tch::no_grad(|| {
        let (ctx, _terms, _embed64) = gram_context(embed, bank, rows, contrast)?;
        let chunks = ctx.chunks().map(|c| Ok(ctx.scores(c)?.scores)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::f_cat(&chunks, 0)?.permute([0, 2, 1]).contiguous())
    })
}

/// Computes one side's CRCD loss in Gram form: the NCE objective of
/// `x = exp(s/T)/Z` over the B·B rows (i, j) of K+1 scores.
///
/// Sets `z` from this batch if it is unset. The gradient with respect to
/// `embed` is computed chunk by chunk in closed form, while the scores are
/// formed, and reaches autograd through a surrogate whose value is zero and
/// whose gradient is that of the loss. Autograd therefore never stores a
/// B·B·(K+1) tensor. The loss is differentiable once, which is all training
/// needs, but not twice.
///
/// # Shapes
/// As [`relation_scores_direct`]; returns () scalar in the kind of `embed`.
pub fn relation_loss_gram(
    embed: &Tensor,
    bank: &Tensor,
    rows: &Tensor,
    contrast: &Tensor,
    temperature: f64,
    z: &NormConstant,
    n_data: i64,
) -> Result<Tensor> {
    let (ctx, terms, embed64) = gram_context(embed, bank, rows, contrast)?;
    let (b, m, k1) = (ctx.b, ctx.m, ctx.k1);
    let opts = (Kind::Double, embed.device());
    let entries = (b * b * k1) as f64;
    let z = z.get_or_init(n_data, || {
        tch::no_grad(|| {
            let mut total = 0.0;
            for chunk in ctx.chunks() {
                let exp = (ctx.scores(chunk)?.scores / temperature).exp();
                total += exp.sum(Kind::Double).double_value(&[]);
            }
            Ok(total / entries)
        })
    })?;

    let mass = noise_mass(k1 - 1, n_data);
    let denom_shift = mass + NCE_EPS;
    let rows_r = (b * b) as f64;
    let mut total = Tensor::zeros([], opts);
    let grad_embed = Tensor::zeros([b, m], opts);
    let grad_embed_dot_anchor = Tensor::zeros([b, b], opts);
    let grad_v0_sum = Tensor::zeros([b, b], opts);
    let grad_v_inv_norm = Tensor::zeros([b, b], opts);
    tch::no_grad(|| -> Result<()> {
        for chunk in ctx.chunks() {
            let (start, c) = (chunk.start, chunk.end - chunk.start);
            let ChunkScores { candidates, degenerate, mut numerator, u_inv_norm, scores } =
                ctx.scores(chunk)?;
            // log x₀ = s₀/T − log Z, taken before x₀ can underflow to 0.
            let log_positive = scores.narrow(1, 0, 1) / temperature - z.ln();
            // x = exp(s/T)/Z, in the memory of s.
            let mut x = scores;
            let _ = x.g_mul_scalar_(1.0 / temperature).exp_().g_div_scalar_(z);
            let mut shifted = &x + denom_shift;
            let positive_shifted = shifted.narrow(1, 0, 1).copy();
            // dL/ds = x_k/((x_k+K·P_n+ε)·T·R) for a negative and
            // −(K·P_n+ε)/((x₀+K·P_n+ε)·T·R) for the positive; in x's memory.
            let mut grad_s = x;
            let _ = grad_s.g_div_(&shifted);
            let positive_grad = positive_shifted.reciprocal() * -denom_shift;
            grad_s.narrow(1, 0, 1).copy_(&positive_grad);
            let _ = grad_s.g_mul_scalar_(1.0 / (temperature * rows_r));
            // L = Σ −log(x₀/(x₀+K·P_n+ε)) + Σ_k [log(x_k+K·P_n+ε) − log(K·P_n)].
            let _ = shifted.log_();
            let log_neg = shifted.narrow(1, 1, k1 - 1).sum(Kind::Double);
            let loss_pos = (positive_shifted.log() - log_positive).sum(Kind::Double);
            total += loss_pos + log_neg - (c * b * (k1 - 1)) as f64 * mass.ln();
            // s = ⟨u,v⟩·u_inv_norm·v_inv_norm, where ⟨u,v⟩ depends on e through
            // ⟨w,e⟩ − ⟨a,e⟩ (outside degenerate pairs) and δ·Σv₀.
            let mut h = grad_s;
            let _ = h.g_mul_(&u_inv_norm);
            let _ = numerator.g_mul_(&h);
            let sum_k = [1i64];
            grad_v_inv_norm.narrow(0, start, c).copy_(&numerator.sum_dim_intlist(
                sum_k.as_slice(),
                false,
                Kind::Double,
            ));
            let mut hv = h;
            let _ = hv.g_mul_(&ctx.terms.v_inv_norm.narrow(0, start, c).unsqueeze(1));
            let hv_sum_k = hv.sum_dim_intlist(sum_k.as_slice(), false, Kind::Double);
            grad_v0_sum.narrow(0, start, c).copy_(&(&hv_sum_k * RELATION_DELTA));
            let index = [Some(&degenerate[0]), Some(&degenerate[1]), Some(&degenerate[2])];
            let _ = hv.index_put_(&index, &Tensor::zeros([], opts), false);
            grad_embed_dot_anchor.narrow(0, start, c).copy_(&-hv.sum_dim_intlist(
                sum_k.as_slice(),
                false,
                Kind::Double,
            ));
            // d⟨w_ik, e_i⟩/de_i = w_ik, summed over anchors j first.
            let grad_cand_dot_embed = hv.sum_dim_intlist([2i64].as_slice(), false, Kind::Double);
            grad_embed
                .narrow(0, start, c)
                .copy_(&grad_cand_dot_embed.unsqueeze(1).bmm(&candidates).squeeze_dim(1));
        }
        Ok(())
    })?;
    let value = total / rows_r;
    let surrogate = (grad_embed * &embed64).sum(Kind::Double)
        + (grad_embed_dot_anchor * &terms.embed_dot_anchor).sum(Kind::Double)
        + (grad_v0_sum * &terms.v0_sum).sum(Kind::Double)
        + (grad_v_inv_norm * &terms.v_inv_norm).sum(Kind::Double);
    let loss = value + &surrogate - surrogate.detach();
    Ok(loss.to_kind(embed.kind()))
}

/// Computes one side's CRCD loss in the chosen form; see
/// [`relation_loss_gram`] and [`relation_scores_direct`].
///
/// # Shapes
/// As [`relation_scores_direct`]; returns () scalar.
#[allow(clippy::too_many_arguments)]
pub fn relation_loss(
    form: RelationForm,
    embed: &Tensor,
    bank: &Tensor,
    rows: &Tensor,
    contrast: &Tensor,
    temperature: f64,
    z: &NormConstant,
    n_data: i64,
) -> Result<Tensor> {
    match form {
        RelationForm::Gram => {
            relation_loss_gram(embed, bank, rows, contrast, temperature, z, n_data)
        }
        RelationForm::Direct => {
            let s = relation_scores_direct(embed, bank, rows, contrast)?;
            let k1 = s.size()[2];
            scores_to_loss(&s.view([-1, k1]), temperature, z, n_data)
        }
    }
}
