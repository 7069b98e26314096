//! A seeded generator of class-dependent images, for tests and benchmarks.
//!
//! Each class has a fixed colour and a fixed stripe pattern (orientation and
//! spatial frequency) that depend only on the class number, so sets drawn
//! from different seeds share their classes. Each image adds a random stripe
//! phase, contrast and brightness, and uniform pixel noise. The colour alone
//! separates the classes: a nearest-class-mean classifier on raw pixels
//! scores above 90 % on the test split (checked in `tests/data.rs`). Crops
//! and flips keep the colour, so the augmented images keep their class.

use std::f64::consts::PI;

use rand::seq::SliceRandom;
use rand::{Rng, RngCore};
use tch::{Device, Kind, Tensor};

use super::batches::{seeded_rng, RngPurpose};
use super::{Dataset, DatasetName, Split};

/// Classes of the sets that [`load`] returns.
pub const NUM_CLASSES: i64 = 10;
/// Images in the sets that [`load`] returns for each split.
pub const TRAIN_SIZE: usize = 2000;
pub const TEST_SIZE: usize = 500;
/// Seeds of the two splits; any two different values would do.
pub const TRAIN_SEED: u64 = 1;
pub const TEST_SEED: u64 = 2;

/// Normalisation of every synthetic set: the per-channel mean and standard
/// deviation of `generate(10, 2000, TRAIN_SEED)`, rounded to 4 decimals.
pub const MEAN: [f64; 3] = [0.5008, 0.5007, 0.5008];
pub const STD: [f64; 3] = [0.2475, 0.2482, 0.2471];

const SIZE: i64 = 32;
/// Half-width of the uniform pixel noise, on [0, 1] pixels.
const NOISE: f64 = 0.1;

/// Returns the split of the fixed synthetic dataset: `TRAIN_SIZE` or
/// `TEST_SIZE` images of `NUM_CLASSES` classes.
pub fn load(split: Split) -> Dataset {
    match split {
        Split::Train => generate(NUM_CLASSES, TRAIN_SIZE, TRAIN_SEED),
        Split::Test => generate(NUM_CLASSES, TEST_SIZE, TEST_SEED),
    }
}

/// Generates `n` images of `num_classes` classes from `seed`, on the CPU.
/// The classes are as balanced as `n` allows and come in a seeded random
/// order.
///
/// # Panics
///
/// If `num_classes` is not positive.
pub fn generate(num_classes: i64, n: usize, seed: u64) -> Dataset {
    assert!(num_classes > 0, "num_classes must be positive, got {num_classes}");
    let mut rng = seeded_rng(RngPurpose::Synthetic, seed, 0, 0);
    let mut labels: Vec<i64> = (0..n as i64).map(|i| i % num_classes).collect();
    labels.shuffle(&mut rng);

    // Per-image phase in [0, 2 pi), contrast in [0.15, 0.3] and brightness
    // shift in [-0.08, 0.08], all on [0, 1] pixels.
    let mut per_image = Vec::with_capacity(3 * n);
    for _ in 0..n {
        per_image.push(rng.random_range(0.0..2.0 * PI) as f32);
        per_image.push(rng.random_range(0.15..=0.3) as f32);
        per_image.push(rng.random_range(-0.08..=0.08) as f32);
    }
    let mut noise = vec![0u8; n * 3 * (SIZE * SIZE) as usize];
    rng.fill_bytes(&mut noise);

    let n = n as i64;
    let options = (Kind::Float, Device::Cpu);
    let label_tensor = Tensor::from_slice(&labels);
    let (colours, angles, frequencies) = class_patterns(num_classes);
    let colour = colours.index_select(0, &label_tensor).view([n, 3, 1, 1]);
    let angle = angles.index_select(0, &label_tensor).view([n, 1, 1, 1]);
    let frequency = frequencies.index_select(0, &label_tensor).view([n, 1, 1, 1]);
    let per_image = Tensor::from_slice(&per_image).view([n, 3, 1, 1]);
    let phase = per_image.narrow(1, 0, 1);
    let contrast = per_image.narrow(1, 1, 1);
    let brightness = per_image.narrow(1, 2, 1);

    let x = Tensor::arange(SIZE, options).view([1, 1, 1, SIZE]);
    let y = Tensor::arange(SIZE, options).view([1, 1, SIZE, 1]);
    let along = x * angle.cos() + y * angle.sin();
    let stripes = (along * frequency * (2.0 * PI / SIZE as f64) + phase).sin();
    let noise = (Tensor::from_slice(&noise).to_kind(Kind::Float) / 255.0 - 0.5) * (2.0 * NOISE);
    let pixels = colour + brightness + contrast * stripes + noise.view([n, 3, SIZE, SIZE]);
    let images = (pixels.clamp(0.0, 1.0) * 255.0).round().to_kind(Kind::Uint8);

    Dataset {
        name: DatasetName::Synthetic,
        images,
        labels: label_tensor,
        num_classes,
        mean: MEAN,
        std: STD,
    }
}

/// Returns each class's RGB colour `(K, 3)`, stripe angle `(K,)` in radians
/// and stripe frequency `(K,)` in cycles per image width, as `f32` tensors.
fn class_patterns(num_classes: i64) -> (Tensor, Tensor, Tensor) {
    let k = num_classes as f64;
    let mut colours = Vec::new();
    let mut angles = Vec::new();
    let mut frequencies = Vec::new();
    for c in 0..num_classes {
        let hue = c as f64 / k;
        // Three cosines a third of a turn apart: a colour wheel around grey.
        for channel in 0..3 {
            colours.push((0.5 + 0.25 * (2.0 * PI * (hue + channel as f64 / 3.0)).cos()) as f32);
        }
        angles.push((PI * hue) as f32);
        frequencies.push((2 + c % 3) as f32);
    }
    (
        Tensor::from_slice(&colours).view([num_classes, 3]),
        Tensor::from_slice(&angles),
        Tensor::from_slice(&frequencies),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-channel mean and standard deviation of `images` on [0, 1].
    fn channel_stats(images: &Tensor) -> ([f64; 3], [f64; 3]) {
        let pixels = images.to_kind(Kind::Double) / 255.0;
        let mean = pixels.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Double);
        let std = pixels.std_dim([0i64, 2, 3].as_slice(), false, false);
        let get = |t: &Tensor| [0, 1, 2].map(|c| t.double_value(&[c]));
        (get(&mean), get(&std))
    }

    #[test]
    fn normalisation_matches_training_set() {
        let (mean, std) = channel_stats(&load(Split::Train).images);
        for c in 0..3 {
            assert!(
                (mean[c] - MEAN[c]).abs() < 5e-5,
                "channel {c}: mean {} vs {}",
                mean[c],
                MEAN[c]
            );
            assert!((std[c] - STD[c]).abs() < 5e-5, "channel {c}: std {} vs {}", std[c], STD[c]);
        }
    }
}
