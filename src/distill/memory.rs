//! Memory banks, normalisation constants and contrast-index sampling, shared
//! by CRD (Tian et al., ICLR 2020, <https://arxiv.org/abs/1910.10699>) and
//! CRCD (Zhu et al., CVPR 2021, <https://arxiv.org/abs/2103.16367>).
//!
//! A memory bank keeps one embedding per training sample, (N, m), updated
//! with momentum from the batches that visit it. The contrast indices
//! `C ∈ [N]^{B×(K+1)}` pick bank rows for each sample: column 0 is the
//! positive, columns 1..K the negatives.
//!
//! Random numbers come from ChaCha8 seeded with the run's seed. Each use has
//! its own stream: the sampling of step `s` uses stream `s`, and initial
//! values use streams from 2⁶³ up, so a resumed run draws the same negatives
//! without storing a generator state.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use rand::distr::{Distribution, Uniform};
use rand::seq::index;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Kind, Tensor};

use super::embed::l2_normalize;
use crate::config::Sampling;

/// First random stream of initial values; steps use the streams below it.
pub const INIT_STREAM_BASE: u64 = 1 << 63;
/// Stream of the queue's initial contents; memory banks use the init
/// streams from the base up.
const QUEUE_STREAM: u64 = u64::MAX;

/// Returns the ChaCha8 generator of `(seed, stream)`.
pub fn stream_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Draws the initial rows of a memory bank.
///
/// Rows start uniform in `[-σ, σ]` with `σ = 1/sqrt(m/3)`: that uniform has
/// variance `σ²/3 = 1/m`, so a row's expected squared norm is 1. The rows
/// are then L2-normalised, as the CRD release does.
///
/// # Shapes
/// - returns: (n_data, dim) f32 on the CPU.
pub fn init_bank_rows(n_data: i64, dim: i64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let sigma = 1.0 / (dim as f64 / 3.0).sqrt();
    let uniform = Uniform::new_inclusive(-sigma as f32, sigma as f32)?;
    let len = usize::try_from(n_data * dim).context("memory bank size")?;
    let values: Vec<f32> = (0..len).map(|_| uniform.sample(rng)).collect();
    Ok(l2_normalize(&Tensor::from_slice(&values).view([n_data, dim])))
}

/// Applies the momentum update `M[y] ← n(μ·M[y] + (1 − μ)·e)` in place,
/// without gradient; `e` is detached first.
///
/// # Shapes
/// - `bank`: (N, m) float, updated in place.
/// - `indices`: (B,) i64, the rows y; a batch must not repeat a row.
/// - `embed`: (B, m) float.
pub fn update_rows(bank: &Tensor, indices: &Tensor, embed: &Tensor, momentum: f64) -> Result<()> {
    let (_n, m) = bank.size2()?;
    let (b, me) = embed.size2()?;
    let bi = indices.size1()?;
    if me != m || bi != b {
        bail!(
            "memory update: bank rows have width {m} and indices length {bi}, but the \
             embeddings are [{b}, {me}]"
        );
    }
    tch::no_grad(|| -> Result<()> {
        let old = bank.f_index_select(0, indices)?;
        let mixed = old * momentum + embed.detach().to_kind(bank.kind()) * (1.0 - momentum);
        let mut bank = bank.shallow_clone();
        let _bank = bank.f_index_copy_(0, indices, &l2_normalize(&mixed))?;
        Ok(())
    })
}

/// A memory bank of one side, a non-trainable variable of the VarStore.
#[derive(Debug)]
pub struct MemoryBank {
    rows: Tensor,
    momentum: f64,
}

impl MemoryBank {
    /// Creates the bank `name` under `p` with rows from [`init_bank_rows`]
    /// drawn from stream `INIT_STREAM_BASE + stream` of `seed`.
    pub fn new(
        p: &nn::Path,
        name: &str,
        n_data: i64,
        dim: i64,
        momentum: f64,
        seed: u64,
        stream: u64,
    ) -> Result<MemoryBank> {
        let mut rng = stream_rng(seed, INIT_STREAM_BASE + stream);
        let init = init_bank_rows(n_data, dim, &mut rng)?;
        let rows = p.add(name, init.to_device(p.device()), false);
        Ok(MemoryBank { rows, momentum })
    }

    /// Returns the rows, (N, m).
    pub fn rows(&self) -> &Tensor {
        &self.rows
    }

    /// Applies the momentum update of [`update_rows`] to rows `indices`.
    pub fn update(&self, indices: &Tensor, embed: &Tensor) -> Result<()> {
        update_rows(&self.rows, indices, embed, self.momentum)
    }
}

/// Value of a normalisation constant until the first batch sets it. Any
/// value ≤ 0 reads as unset, because a real Z is a mean of exponentials.
const Z_UNSET: f64 = -1.0;

/// The normalisation constant Z of one side's scores, `x = exp(s/T) / Z`.
///
/// It is set once, from the first batch, to `mean(exp(s/T)) · N`, so that
/// the first batch's scores average 1/N like probabilities under a uniform
/// distribution over the N samples, and never changes afterwards. It is a
/// non-trainable (1,) f64 variable, so checkpoints keep it.
#[derive(Debug)]
pub struct NormConstant {
    value: Tensor,
}

impl NormConstant {
    /// Creates the unset constant `name` under `p`.
    pub fn new(p: &nn::Path, name: &str) -> NormConstant {
        let init = Tensor::full([1], Z_UNSET, (Kind::Double, p.device()));
        NormConstant { value: p.add(name, init, false) }
    }

    /// Returns Z, or None before the first batch.
    pub fn get(&self) -> Option<f64> {
        let z = self.value.double_value(&[0]);
        (z > 0.0).then_some(z)
    }

    /// Returns Z, first setting it to `mean_exp() · n_data` if it is unset.
    pub fn get_or_init(&self, n_data: i64, mean_exp: impl FnOnce() -> Result<f64>) -> Result<f64> {
        if let Some(z) = self.get() {
            return Ok(z);
        }
        let z = mean_exp()? * n_data as f64;
        if !(z.is_finite() && z > 0.0) {
            bail!(
                "normalisation constant Z = {z} from the first batch is not a positive finite \
                 number; lower nce_t's sharpness (raise nce_t) or check the embeddings for NaN"
            );
        }
        let _value = tch::no_grad(|| self.value.shallow_clone().fill_(z));
        tracing::debug!("normalisation constant Z set to {z:.1}");
        Ok(z)
    }
}

/// Position of one class's rows in the class-sorted list of dataset rows.
#[derive(Clone, Copy, Debug)]
struct ClassSpan {
    start: usize,
    len: usize,
}

/// Draws the contrast indices C of each step.
///
/// - `exact`: the positive is the sample itself. The K negatives come from
///   other classes, uniformly without replacement, or with replacement when
///   K exceeds the number of other-class samples.
/// - `relax`: as exact, but the positive is a uniformly drawn sample of the
///   same class (possibly the sample itself).
/// - `queue`: the positive is the sample itself and the negatives, the same
///   for every row, are the K dataset rows most recently pushed into a FIFO.
///   The FIFO starts with K distinct rows drawn without replacement, and
///   every step pushes its batch after the scores.
#[derive(Debug)]
pub struct ContrastSampler {
    mode: Sampling,
    k: i64,
    seed: u64,
    labels: Vec<i64>,
    /// Dataset rows sorted by class, stable within a class.
    by_class: Vec<i64>,
    spans: HashMap<i64, ClassSpan>,
    /// Returns the FIFO of `queue` sampling, (K,) i64, oldest first.
    queue: Option<Tensor>,
}

impl ContrastSampler {
    /// Builds the sampler of `mode` with `k` negatives per row.
    ///
    /// Fails when `exact` or `relax` find no sample of another class, and
    /// when `queue` needs more distinct rows than the dataset has.
    pub fn new(
        p: &nn::Path,
        mode: Sampling,
        k: i64,
        train_labels: &Tensor,
        seed: u64,
    ) -> Result<ContrastSampler> {
        if k < 1 {
            bail!("invalid nce_k {k}: expected at least 1");
        }
        let labels =
            Vec::<i64>::try_from(&train_labels.to_device(Device::Cpu).to_kind(Kind::Int64))
                .context("train_labels must be a (N,) integer tensor")?;
        let n = labels.len();
        let mut by_class: Vec<i64> = (0..n as i64).collect();
        by_class.sort_by_key(|&row| labels[row as usize]);
        let mut spans: HashMap<i64, ClassSpan> = HashMap::new();
        for (pos, &row) in by_class.iter().enumerate() {
            spans.entry(labels[row as usize]).or_insert(ClassSpan { start: pos, len: 0 }).len += 1;
        }
        let queue = match mode {
            Sampling::Exact | Sampling::Relax => {
                check_negative_pools(&spans, n, k)?;
                None
            }
            Sampling::Queue => Some(init_queue(p, n, k, seed)?),
        };
        Ok(ContrastSampler { mode, k, seed, labels, by_class, spans, queue })
    }

    /// Number of negatives per row.
    pub fn k(&self) -> i64 {
        self.k
    }

    /// Draws the contrast indices of batch rows `indices` at `step`.
    ///
    /// # Shapes
    /// - `indices`: (B,) i64 dataset rows.
    /// - returns: (B, K+1) i64 on the device of `indices`; column 0 contains
    ///   the positives.
    pub fn sample(&self, indices: &Tensor, step: i64) -> Result<Tensor> {
        let b = indices.size1()?;
        let rows = Vec::<i64>::try_from(&indices.to_device(Device::Cpu))?;
        let step = u64::try_from(step).with_context(|| format!("invalid step {step}"))?;
        if step >= INIT_STREAM_BASE {
            bail!("invalid step {step}: expected below 2^63");
        }
        let mut rng = stream_rng(self.seed, step);
        let queued = match &self.queue {
            Some(queue) => Vec::<i64>::try_from(&queue.to_device(Device::Cpu))?,
            None => vec![],
        };
        let width = (self.k + 1) as usize;
        let mut out = Vec::with_capacity(rows.len() * width);
        for &row in &rows {
            let label = *self
                .labels
                .get(row as usize)
                .with_context(|| format!("dataset index {row} out of range"))?;
            let span = self.spans[&label];
            match self.mode {
                Sampling::Exact => {
                    out.push(row);
                    self.draw_other_class(&mut rng, span, &mut out);
                }
                Sampling::Relax => {
                    out.push(self.by_class[span.start + rng.random_range(0..span.len)]);
                    self.draw_other_class(&mut rng, span, &mut out);
                }
                Sampling::Queue => {
                    out.push(row);
                    out.extend_from_slice(&queued);
                }
            }
        }
        Ok(Tensor::from_slice(&out).view([b, self.k + 1]).to_device(indices.device()))
    }

    /// Appends K negatives from outside `span` to `out`.
    fn draw_other_class(&self, rng: &mut ChaCha8Rng, span: ClassSpan, out: &mut Vec<i64>) {
        let pool = self.by_class.len() - span.len;
        let k = self.k as usize;
        // Position p of the pool is position p of `by_class` with the class's
        // own rows cut out.
        let row_at = |p: usize| {
            if p < span.start {
                self.by_class[p]
            } else {
                self.by_class[p + span.len]
            }
        };
        if k <= pool {
            out.extend(index::sample(rng, pool, k).into_iter().map(row_at));
        } else {
            out.extend((0..k).map(|_| row_at(rng.random_range(0..pool))));
        }
    }

    /// Pushes the batch rows into the FIFO of `queue` sampling, dropping the
    /// oldest; does nothing for the other modes.
    ///
    /// # Shapes
    /// - `indices`: (B,) i64.
    pub fn push(&self, indices: &Tensor) -> Result<()> {
        let Some(queue) = &self.queue else {
            return Ok(());
        };
        let k = self.k;
        tch::no_grad(|| -> Result<()> {
            let joined =
                Tensor::f_cat(&[queue.shallow_clone(), indices.to_device(queue.device())], 0)?;
            let len = joined.size1()?;
            queue.shallow_clone().f_copy_(&joined.narrow(0, len - k, k))?;
            Ok(())
        })
    }

    /// Returns the FIFO of `queue` sampling, (K,) i64, oldest first.
    pub fn queue(&self) -> Option<&Tensor> {
        self.queue.as_ref()
    }
}

fn check_negative_pools(spans: &HashMap<i64, ClassSpan>, n: usize, k: i64) -> Result<()> {
    let largest = spans.values().map(|s| s.len).max().unwrap_or(0);
    let smallest_pool = n - largest;
    if smallest_pool == 0 {
        bail!(
            "exact and relax sampling draw negatives from other classes, but all {n} training \
             samples have the same label; use sampling queue"
        );
    }
    if k as usize > smallest_pool {
        tracing::warn!(
            "nce_k {k} exceeds the {smallest_pool} samples of other classes of the largest \
             class, so its negatives are drawn with replacement"
        );
    }
    Ok(())
}

fn init_queue(p: &nn::Path, n: usize, k: i64, seed: u64) -> Result<Tensor> {
    if k as usize > n {
        bail!(
            "nce_k {k} is larger than the pool of {n} training samples that queue sampling \
             draws its distinct negatives from; set nce_k to at most {n}"
        );
    }
    let mut rng = stream_rng(seed, QUEUE_STREAM);
    let rows: Vec<i64> =
        index::sample(&mut rng, n, k as usize).into_iter().map(|r| r as i64).collect();
    Ok(p.add("queue", Tensor::from_slice(&rows).to_device(p.device()), false))
}
