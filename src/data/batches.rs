//! Shuffled, augmented training batches and ordered test batches.
//!
//! The training augmentation is the CIFAR recipe of RepDistiller and CRCD.
//! It pads 4 zero pixels on each side and crops a random 32x32 window, with
//! offsets uniform in `0..=8` in the padded 40x40 image. Then it flips the
//! crop horizontally with probability 0.5, scales it to [0, 1] and
//! normalises each channel. It runs on whole batches with tensor ops on the
//! dataset's device, where one gather over the padded batch does the crop
//! and the flip.
//!
//! Randomness comes from ChaCha8 generators keyed by (seed, epoch, batch
//! number), so an epoch can be replayed exactly after a resume without
//! replaying the ones before it.
//!
//! NOTE: the draws go through `rand` 0.9's `random_range`, `random_bool` and
//! `shuffle`, whose value streams `rand` may change in a later minor release.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::Dataset;

/// Zero padding on each side before the random crop, in pixels.
pub const CROP_PADDING: i64 = 4;
/// Height and width of every image.
const SIZE: i64 = 32;
const PADDED_SIZE: i64 = SIZE + 2 * CROP_PADDING;

/// The random crop and flip of one training image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropFlip {
    /// Column of the crop's left edge in the padded 40x40 image, `0..=8`.
    pub dx: i64,
    /// Row of the crop's top edge in the padded 40x40 image, `0..=8`.
    pub dy: i64,
    /// Whether the crop is mirrored left to right.
    pub flip: bool,
}

/// Use of a seeded generator. Each use has its own key, so the streams of
/// different uses are independent.
#[derive(Clone, Copy)]
pub(crate) enum RngPurpose {
    Permutation = 1,
    Augmentation = 2,
    Subset = 3,
    Synthetic = 4,
}

/// Builds the ChaCha8 generator for `purpose` from its 32-byte key: seed,
/// epoch, batch number and purpose, each as 8 little-endian bytes.
pub(crate) fn seeded_rng(purpose: RngPurpose, seed: u64, epoch: i64, batch: i64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[0..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..24].copy_from_slice(&batch.to_le_bytes());
    key[24..32].copy_from_slice(&(purpose as u64).to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// Draws the crops and flips of batch number `batch` of `epoch`, `len`
/// images, as [`Dataset::train_batches`] applies them.
pub fn crop_flip_params(seed: u64, epoch: i64, batch: i64, len: usize) -> Vec<CropFlip> {
    let mut rng = seeded_rng(RngPurpose::Augmentation, seed, epoch, batch);
    (0..len)
        .map(|_| {
            let dy = rng.random_range(0..=2 * CROP_PADDING);
            let dx = rng.random_range(0..=2 * CROP_PADDING);
            let flip = rng.random_bool(0.5);
            CropFlip { dx, dy, flip }
        })
        .collect()
}

/// A batch of normalised images with their labels and dataset rows.
#[derive(Debug)]
pub struct Batch {
    /// `(B, 3, 32, 32)` `f32`, normalised, on the dataset's device.
    pub images: Tensor,
    /// `(B,)` `i64`.
    pub labels: Tensor,
    /// `(B,)` `i64` row numbers in the dataset the batch came from.
    pub indices: Tensor,
}

/// An iterator over the batches of one pass through a dataset. The last
/// batch is smaller when the batch size does not divide the dataset size.
pub struct Batches {
    images: Tensor,
    labels: Tensor,
    /// Row numbers in the order they are served, `(N,)` `i64`.
    order: Tensor,
    batch_size: i64,
    next_batch: i64,
    num_batches: i64,
    /// `(seed, epoch)` of the augmentation draws; `None` for test batches.
    augmentation: Option<(u64, i64)>,
    /// `(1, 3, 1, 1)` `f32` per-channel mean and standard deviation.
    mean: Tensor,
    std: Tensor,
    /// `(1, 32, 1)` and `(1, 1, 32)` `i64` row and column numbers 0..32.
    rows: Tensor,
    columns: Tensor,
    /// `(1, 1, 32)` `i64`, `31 - 2j` for column `j`: added to `j` it mirrors
    /// the column.
    mirror: Tensor,
}

impl Batches {
    fn new(
        dataset: &Dataset,
        batch_size: i64,
        order: Tensor,
        augmentation: Option<(u64, i64)>,
    ) -> Batches {
        assert!(batch_size > 0, "batch size must be positive, got {batch_size}");
        let size = dataset.images.size();
        assert!(
            size.len() == 4 && size[1..] == [3, SIZE, SIZE],
            "dataset images must be (N, 3, 32, 32), got {size:?}"
        );
        let device = dataset.images.device();
        let channel_tensor = |values: [f64; 3]| {
            Tensor::from_slice(&values.map(|v| v as f32)).view([1, 3, 1, 1]).to_device(device)
        };
        let range = Tensor::arange(SIZE, (Kind::Int64, device));
        Batches {
            images: dataset.images.shallow_clone(),
            labels: dataset.labels.shallow_clone(),
            order,
            batch_size,
            next_batch: 0,
            num_batches: (dataset.len() + batch_size - 1) / batch_size,
            augmentation,
            mean: channel_tensor(dataset.mean),
            std: channel_tensor(dataset.std),
            rows: range.view([1, SIZE, 1]),
            columns: range.view([1, 1, SIZE]),
            mirror: (range.neg() * 2 + (SIZE - 1)).view([1, 1, SIZE]),
        }
    }

    /// Crops and flips `images`, `(L, 3, 32, 32)` `u8`, with one gather over
    /// the zero-padded batch. Returns `(L, 3, 32, 32)` `u8`.
    fn crop_flip(&self, images: &Tensor, params: &[CropFlip]) -> Tensor {
        let len = params.len() as i64;
        let flat: Vec<i64> = params.iter().flat_map(|p| [p.dy, p.dx, i64::from(p.flip)]).collect();
        let params = Tensor::from_slice(&flat).view([len, 3]).to_device(images.device());
        let dy = params.select(1, 0).view([len, 1, 1]);
        let dx = params.select(1, 1).view([len, 1, 1]);
        let flip = params.select(1, 2).view([len, 1, 1]);
        // Source row and column in the padded image of each output pixel.
        let source_rows = &self.rows + dy;
        let source_columns = &self.columns + dx + flip * &self.mirror;
        let index = (source_rows * PADDED_SIZE + source_columns)
            .view([len, 1, SIZE * SIZE])
            .expand([len, 3, SIZE * SIZE], false);
        let pad = CROP_PADDING;
        images
            .constant_pad_nd([pad, pad, pad, pad])
            .view([len, 3, PADDED_SIZE * PADDED_SIZE])
            .gather(2, &index, false)
            .view([len, 3, SIZE, SIZE])
    }

    /// Scales `u8` pixels to [0, 1] and normalises each channel.
    fn normalise(&self, images: &Tensor) -> Tensor {
        (images.to_kind(Kind::Float) / 255.0 - &self.mean) / &self.std
    }
}

impl Iterator for Batches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next_batch >= self.num_batches {
            return None;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        let start = batch * self.batch_size;
        let len = self.batch_size.min(self.order.size()[0] - start);
        let indices = self.order.narrow(0, start, len);
        let mut images = self.images.index_select(0, &indices);
        if let Some((seed, epoch)) = self.augmentation {
            images = self.crop_flip(&images, &crop_flip_params(seed, epoch, batch, len as usize));
        }
        Some(Batch {
            images: self.normalise(&images),
            labels: self.labels.index_select(0, &indices.to_device(self.labels.device())),
            indices,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.num_batches - self.next_batch) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches {}

impl Dataset {
    /// Returns the shuffled, augmented batches of one training epoch.
    ///
    /// The order of the rows depends only on `(seed, epoch)`, and the crops
    /// and flips of each batch only on `(seed, epoch, batch number)` (see
    /// [`crop_flip_params`]), so any epoch can be replayed exactly. The work
    /// runs with tensor ops on the device the images are on.
    ///
    /// # Panics
    ///
    /// If `batch_size` is not positive or the images are not
    /// `(N, 3, 32, 32)`.
    pub fn train_batches(&self, batch_size: i64, seed: u64, epoch: i64) -> Batches {
        let mut rows: Vec<i64> = (0..self.len()).collect();
        rows.shuffle(&mut seeded_rng(RngPurpose::Permutation, seed, epoch, 0));
        let order = Tensor::from_slice(&rows).to_device(self.images.device());
        Batches::new(self, batch_size, order, Some((seed, epoch)))
    }

    /// Returns the batches in row order, normalised only.
    ///
    /// # Panics
    ///
    /// If `batch_size` is not positive or the images are not
    /// `(N, 3, 32, 32)`.
    pub fn test_batches(&self, batch_size: i64) -> Batches {
        let order = Tensor::arange(self.len(), (Kind::Int64, self.images.device()));
        Batches::new(self, batch_size, order, None)
    }
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;
    use crate::data::DatasetName;

    /// Undoes the normalisation of a batch and returns its `(L, 3, 32, 32)`
    /// `u8` pixels on `device`.
    fn unnormalise(batch: &Batch, mean: [f64; 3], std: [f64; 3], device: Device) -> Tensor {
        let to_tensor = |v: [f64; 3]| {
            Tensor::from_slice(&v.map(|x| x as f32)).view([1, 3, 1, 1]).to_device(device)
        };
        ((&batch.images * to_tensor(std) + to_tensor(mean)) * 255.0).round().to_kind(Kind::Uint8)
    }

    fn ramp_dataset(n: i64) -> Dataset {
        // Each image's pixels are distinct in every row and column so that a
        // wrong crop or flip changes the values.
        let images = (Tensor::arange(n * 3 * SIZE * SIZE, (Kind::Int64, Device::Cpu))
            .remainder(251))
        .to_kind(Kind::Uint8)
        .view([n, 3, SIZE, SIZE]);
        Dataset {
            name: DatasetName::Synthetic,
            images,
            labels: Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(10),
            num_classes: 10,
            mean: [0.5, 0.4, 0.3],
            std: [0.2, 0.25, 0.3],
        }
    }

    #[test]
    fn crop_flip_params_cover_all_offsets() {
        let params = crop_flip_params(7, 3, 11, 2000);
        for offset in 0..=8 {
            assert!(params.iter().any(|p| p.dx == offset), "dx {offset} never drawn");
            assert!(params.iter().any(|p| p.dy == offset), "dy {offset} never drawn");
        }
        assert!(params.iter().all(|p| (0..=8).contains(&p.dx) && (0..=8).contains(&p.dy)));
        let flips = params.iter().filter(|p| p.flip).count();
        assert!((900..1100).contains(&flips), "{flips} flips in 2000 draws");
    }

    #[test]
    fn crop_flip_params_depend_on_each_key() {
        let base = crop_flip_params(1, 2, 3, 64);
        assert_eq!(base, crop_flip_params(1, 2, 3, 64));
        assert_ne!(base, crop_flip_params(9, 2, 3, 64));
        assert_ne!(base, crop_flip_params(1, 9, 3, 64));
        assert_ne!(base, crop_flip_params(1, 2, 9, 64));
    }

    #[test]
    fn test_batches_round_trip_pixels() {
        let dataset = ramp_dataset(10);
        let batches: Vec<Batch> = dataset.test_batches(4).collect();
        assert_eq!(batches.len(), 3);
        let pixels = Tensor::cat(
            &batches
                .iter()
                .map(|b| unnormalise(b, dataset.mean, dataset.std, Device::Cpu))
                .collect::<Vec<_>>(),
            0,
        );
        assert!(pixels.equal(&dataset.images));
    }

    #[test]
    fn centre_crop_without_flip_is_identity() {
        let dataset = ramp_dataset(3);
        let batches = dataset.test_batches(3);
        let params = vec![CropFlip { dx: 4, dy: 4, flip: false }; 3];
        assert!(batches.crop_flip(&dataset.images, &params).equal(&dataset.images));
    }

    #[test]
    fn flip_mirrors_columns() {
        let dataset = ramp_dataset(2);
        let batches = dataset.test_batches(2);
        let params = vec![CropFlip { dx: 4, dy: 4, flip: true }; 2];
        assert!(batches.crop_flip(&dataset.images, &params).equal(&dataset.images.flip([3])));
    }
}
