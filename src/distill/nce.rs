//! The NCE objective of Contrastive Representation Distillation (Tian et
//! al., ICLR 2020, <https://arxiv.org/abs/1910.10699>), which CRD and CRCD
//! both minimise.
//!
//! Every row of scores contains one positive (column 0) and K negatives. The
//! objective treats each row as K + 1 binary decisions "drawn from the data or
//! from the noise distribution", with a uniform noise distribution
//! `P_n = 1/N` over the N training samples:
//!
//! ```text
//! L(x) = -( Σ_r log( x[r,0] / (x[r,0] + K·P_n + ε) )
//!         + Σ_r Σ_{k≥1} log( K·P_n / (x[r,k] + K·P_n + ε) ) ) / R
//! ```

use anyhow::{bail, Result};
use tch::Tensor;

/// Added to every denominator of the objective so that a score of 0 cannot
/// divide by zero; the value of the CRD release.
pub const NCE_EPS: f64 = 1e-7;

/// Returns `K · P_n = K / N`, the noise mass of one row's negatives.
pub fn noise_mass(k: i64, n_data: i64) -> f64 {
    k as f64 / n_data as f64
}

/// Computes the NCE objective of normalised scores.
///
/// # Shapes
/// - `x`: (R, K+1) float, positive scores `exp(s/T)/Z`; column 0 is the
///   positive of each row.
/// - returns: () scalar, the sum over the row's K + 1 terms, averaged over
///   the R rows.
pub fn nce_loss(x: &Tensor, n_data: i64) -> Result<Tensor> {
    let (rows, cols) = x.size2()?;
    if cols < 2 {
        bail!(
            "nce_loss: scores have {cols} column(s), expected a positive and at least 1 negative"
        );
    }
    if n_data < 1 {
        bail!("nce_loss: invalid dataset size {n_data}, expected at least 1");
    }
    let k = cols - 1;
    let mass = noise_mass(k, n_data);
    let positive = x.narrow(1, 0, 1);
    let negatives = x.narrow(1, 1, k);
    let log_d1 = (&positive / (&positive + (mass + NCE_EPS))).log();
    // log(K·P_n / (x + K·P_n + ε)) = log(K·P_n) − log(x + K·P_n + ε).
    let log_d0 = -(&negatives + (mass + NCE_EPS)).log() + mass.ln();
    Ok(-(log_d1.sum(x.kind()) + log_d0.sum(x.kind())) / rows as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn nce_loss_matches_hand_computed_row() -> Result<()> {
        // One row, K = 2, N = 4, so K·P_n = 0.5.
        let x = Tensor::from_slice(&[1.0f64, 0.25, 0.5]).view([1, 3]);
        let loss = nce_loss(&x, 4)?.double_value(&[]);
        let d = 0.5 + NCE_EPS;
        let expected = -((1.0 / (1.0 + d)).ln() + (0.5 / (0.25 + d)).ln() + (0.5 / (0.5 + d)).ln());
        assert!((loss - expected).abs() < 1e-12, "{loss} vs {expected}");
        Ok(())
    }

    #[test]
    fn nce_loss_rejects_rows_without_negatives() {
        let x = Tensor::ones([3, 1], (Kind::Float, tch::Device::Cpu));
        let err = nce_loss(&x, 10).unwrap_err().to_string();
        assert!(err.contains("1 column"), "{err}");
    }
}
