//! Per-epoch metrics, kept in memory and rewritten atomically as
//! `metrics.csv` after every epoch.

use std::path::Path;

use anyhow::{bail, Context};
use tch::{Kind, Tensor};

use crate::fsutil;

/// File name of the per-epoch metrics.
pub const METRICS_FILE: &str = "metrics.csv";

/// Fixed leading columns; loss terms and their weights follow.
const BASE_COLUMNS: [&str; 8] =
    ["epoch", "lr", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "seconds"];

/// One epoch's results.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochRow {
    /// 1-based.
    pub epoch: i64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Mean total loss over the epoch's steps.
    pub train_loss: f64,
    /// Top-1 accuracy on the augmented training batches, percent.
    pub train_top1: f64,
    pub test_loss: f64,
    pub test_top1: f64,
    pub test_top5: f64,
    pub seconds: f64,
    /// Mean unweighted value of each loss term, e.g. `loss_kd`.
    pub terms: Vec<(String, f64)>,
    /// Weight of each term at the epoch's last step, e.g. `weight_kd`.
    pub weights: Vec<(String, f64)>,
}

/// All rows of a run.
#[derive(Clone, Debug, Default)]
pub struct MetricsLog {
    pub rows: Vec<EpochRow>,
}

impl MetricsLog {
    /// Reads the rows of `path` whose epoch is at most `max_epoch`: rows after
    /// the last checkpoint belong to an epoch that will be trained again.
    pub fn read(path: &Path, max_epoch: i64) -> anyhow::Result<MetricsLog> {
        if !path.exists() {
            return Ok(MetricsLog::default());
        }
        let mut reader = csv::Reader::from_path(path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        let headers = reader.headers()?.clone();
        let names: Vec<&str> = headers.iter().collect();
        if names.len() < BASE_COLUMNS.len() || names[..BASE_COLUMNS.len()] != BASE_COLUMNS {
            bail!(
                "{} has unexpected columns {names:?}; move it away to restart the run",
                path.display()
            );
        }
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.with_context(|| format!("{} is damaged", path.display()))?;
            let value = |i: usize| -> anyhow::Result<f64> {
                record.get(i).unwrap_or("").parse::<f64>().with_context(|| {
                    format!("{}: column {} is not a number", path.display(), names[i])
                })
            };
            let epoch = value(0)? as i64;
            if epoch > max_epoch {
                break;
            }
            let mut terms = Vec::new();
            let mut weights = Vec::new();
            for (i, name) in names.iter().enumerate().skip(BASE_COLUMNS.len()) {
                let target = if name.starts_with("weight_") { &mut weights } else { &mut terms };
                target.push((name.to_string(), value(i)?));
            }
            rows.push(EpochRow {
                epoch,
                lr: value(1)?,
                train_loss: value(2)?,
                train_top1: value(3)?,
                test_loss: value(4)?,
                test_top1: value(5)?,
                test_top5: value(6)?,
                seconds: value(7)?,
                terms,
                weights,
            });
        }
        Ok(MetricsLog { rows })
    }

    /// Writes every row to `path` atomically.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        if let Some(first) = self.rows.first() {
            let mut header: Vec<String> = BASE_COLUMNS.iter().map(|s| s.to_string()).collect();
            header.extend(first.terms.iter().map(|(n, _)| n.clone()));
            header.extend(first.weights.iter().map(|(n, _)| n.clone()));
            writer.write_record(&header)?;
        } else {
            writer.write_record(BASE_COLUMNS)?;
        }
        for row in &self.rows {
            let mut fields = vec![
                row.epoch.to_string(),
                format_float(row.lr),
                format_float(row.train_loss),
                format_float(row.train_top1),
                format_float(row.test_loss),
                format_float(row.test_top1),
                format_float(row.test_top5),
                format!("{:.3}", row.seconds),
            ];
            fields.extend(row.terms.iter().map(|(_, v)| format_float(*v)));
            fields.extend(row.weights.iter().map(|(_, v)| format_float(*v)));
            writer.write_record(&fields)?;
        }
        let bytes = writer.into_inner().context("failed to format metrics")?;
        fsutil::write_atomic(path, &bytes)
            .with_context(|| format!("failed to write {}", path.display()))
    }

    /// Returns the row with the highest test top-1 (the first one on ties).
    pub fn best(&self) -> Option<&EpochRow> {
        self.rows.iter().fold(None, |best: Option<&EpochRow>, row| match best {
            Some(b) if b.test_top1 >= row.test_top1 => Some(b),
            _ => Some(row),
        })
    }
}

/// Formats with enough digits that reading the value back gives the same
/// `f64`: rows rewritten after a resume stay byte-identical.
fn format_float(v: f64) -> String {
    format!("{v}")
}

/// Returns how many of the (B, C) `logits` rank `labels` (B,) first and how
/// many rank it among the top `k`.
pub fn correct_top1_topk(logits: &Tensor, labels: &Tensor, k: i64) -> (i64, i64) {
    let k = k.min(logits.size()[1]);
    let (_, top) = logits.topk(k, -1, true, true);
    let hits = top.eq_tensor(&labels.unsqueeze(1));
    let top1 = hits.narrow(1, 0, 1).sum(Kind::Int64).int64_value(&[]);
    let topk = hits.sum(Kind::Int64).int64_value(&[]);
    (top1, topk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(epoch: i64, top1: f64) -> EpochRow {
        EpochRow {
            epoch,
            lr: 0.05,
            train_loss: 1.0 / 3.0,
            train_top1: 50.0,
            test_loss: 0.9,
            test_top1: top1,
            test_top5: 90.0,
            seconds: 1.25,
            terms: vec![("loss_ce".into(), 0.1)],
            weights: vec![("weight_ce".into(), 1.0)],
        }
    }

    #[test]
    fn csv_round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        let log = MetricsLog { rows: vec![row(1, 40.0), row(2, 55.5), row(3, 50.0)] };
        log.write(&path).unwrap();
        let back = MetricsLog::read(&path, 2).unwrap();
        assert_eq!(back.rows, log.rows[..2].to_vec());
        assert_eq!(log.best().unwrap().epoch, 2);
    }

    #[test]
    fn top_k_counts() {
        let logits = Tensor::from_slice(&[0.1f32, 0.7, 0.2, 0.9, 0.05, 0.05]).view([2, 3]);
        let labels = Tensor::from_slice(&[1i64, 2]);
        assert_eq!(correct_top1_topk(&logits, &labels, 2), (1, 1));
        assert_eq!(correct_top1_topk(&logits, &labels, 5), (1, 2));
    }
}
