//! The in-memory dataset and its class-balanced subsets.

use std::fmt;

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::batches::{seeded_rng, RngPurpose};
use super::{DataError, DatasetName};

/// One split of a dataset, held in memory as raw pixels.
pub struct Dataset {
    pub name: DatasetName,
    /// Raw pixels, `(N, 3, 32, 32)` `u8`, channels in RGB order.
    pub images: Tensor,
    /// Class of each image, `(N,)` `i64` in `0..num_classes`.
    pub labels: Tensor,
    pub num_classes: i64,
    /// Per-channel mean used for normalisation, on pixels scaled to [0, 1].
    pub mean: [f64; 3],
    /// Per-channel standard deviation used for normalisation, on pixels
    /// scaled to [0, 1].
    pub std: [f64; 3],
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("images", &(self.images.size(), self.images.kind(), self.images.device()))
            .field("labels", &(self.labels.size(), self.labels.kind()))
            .field("num_classes", &self.num_classes)
            .field("mean", &self.mean)
            .field("std", &self.std)
            .finish()
    }
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> i64 {
        self.images.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns a dataset that shares this one's tensors (no pixel copy).
    pub fn shallow_clone(&self) -> Dataset {
        Dataset {
            name: self.name,
            images: self.images.shallow_clone(),
            labels: self.labels.shallow_clone(),
            num_classes: self.num_classes,
            mean: self.mean,
            std: self.std,
        }
    }

    /// Returns a copy of the dataset with its tensors on `device`.
    pub fn to_device(&self, device: Device) -> Dataset {
        Dataset {
            images: self.images.to_device(device),
            labels: self.labels.to_device(device),
            ..self.shallow_clone()
        }
    }

    /// Returns the labels as a vector, copying them to the CPU if needed.
    pub fn labels_vec(&self) -> Vec<i64> {
        Vec::<i64>::try_from(&self.labels.to_device(Device::Cpu).to_kind(Kind::Int64))
            .expect("labels are a 1-D tensor")
    }

    /// Counts the images of each class, `num_classes` entries.
    pub fn class_counts(&self) -> Vec<i64> {
        let mut counts = vec![0; self.num_classes.max(0) as usize];
        for label in self.labels_vec() {
            if let Some(count) = usize::try_from(label).ok().and_then(|l| counts.get_mut(l)) {
                *count += 1;
            }
        }
        counts
    }

    /// Chooses the rows of [`Dataset::subset`]: `n` row numbers in
    /// increasing order, as evenly spread over the classes as the class
    /// sizes allow. When `n` is not a multiple of the number of classes, a
    /// seeded draw picks the classes that get one image more.
    ///
    /// Errors when `n` is zero or larger than the dataset, or when a label is
    /// outside `0..num_classes`.
    pub fn subset_rows(&self, n: usize, seed: u64) -> Result<Vec<i64>, DataError> {
        let invalid = |reason: String| DataError::InvalidSubset {
            requested: n,
            available: self.len(),
            reason,
        };
        if n == 0 {
            return Err(invalid("a subset needs at least one image".into()));
        }
        if n as i64 > self.len() {
            return Err(invalid("pass a size no larger than the dataset, or no subset".into()));
        }

        let mut by_class = vec![Vec::new(); self.num_classes.max(0) as usize];
        for (row, label) in self.labels_vec().into_iter().enumerate() {
            let Some(rows) = usize::try_from(label).ok().and_then(|l| by_class.get_mut(l)) else {
                return Err(invalid(format!(
                    "row {row} has label {label}, outside 0..{}",
                    self.num_classes
                )));
            };
            rows.push(row as i64);
        }

        let mut rng = seeded_rng(RngPurpose::Subset, seed, 0, 0);
        for rows in &mut by_class {
            rows.shuffle(&mut rng);
        }

        let capacity: Vec<usize> = by_class.iter().map(Vec::len).collect();
        let quota = balanced_quota(&capacity, n, &mut rng);
        let mut rows: Vec<i64> =
            by_class.iter().zip(&quota).flat_map(|(rows, &q)| rows[..q].iter().copied()).collect();
        rows.sort_unstable();
        Ok(rows)
    }

    /// Returns a seeded, class-balanced subset of `n` images (see
    /// [`Dataset::subset_rows`]), with rows renumbered `0..n` in their
    /// original order.
    pub fn subset(&self, n: usize, seed: u64) -> Result<Dataset, DataError> {
        let rows = Tensor::from_slice(&self.subset_rows(n, seed)?);
        Ok(Dataset {
            images: self.images.index_select(0, &rows.to_device(self.images.device())),
            labels: self.labels.index_select(0, &rows.to_device(self.labels.device())),
            ..self.shallow_clone()
        })
    }
}

/// Splits `n` among classes of the given sizes as evenly as the sizes allow.
/// Each round gives every class with images left an equal share of the
/// images still unassigned. When the share would be zero, `rng` picks the
/// classes that get the last images, one each.
fn balanced_quota(capacity: &[usize], n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut quota = vec![0; capacity.len()];
    let mut remaining = n;
    while remaining > 0 {
        let open: Vec<usize> = (0..capacity.len()).filter(|&c| quota[c] < capacity[c]).collect();
        assert!(!open.is_empty(), "subset size {n} exceeds the dataset");
        let share = remaining / open.len();
        if share == 0 {
            for i in rand::seq::index::sample(rng, open.len(), remaining) {
                quota[open[i]] += 1;
            }
            break;
        }
        for c in open {
            let add = share.min(capacity[c] - quota[c]);
            quota[c] += add;
            remaining -= add;
        }
    }
    quota
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn quota_even_when_classes_are_large() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let quota = balanced_quota(&[100, 100, 100, 100], 10, &mut rng);
        assert_eq!(quota.iter().sum::<usize>(), 10);
        assert!(quota.iter().all(|&q| q == 2 || q == 3), "{quota:?}");
    }

    #[test]
    fn quota_fills_small_classes_first() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let quota = balanced_quota(&[1, 50, 50], 41, &mut rng);
        assert_eq!(quota[0], 1);
        assert_eq!(quota[1] + quota[2], 40);
        assert_eq!(quota[1], 20);
    }

    #[test]
    fn quota_takes_everything_when_n_is_the_total() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        assert_eq!(balanced_quota(&[3, 0, 7], 10, &mut rng), vec![3, 0, 7]);
    }
}
