//! Datasets, batching and augmentation.
//!
//! [`load`] reads CIFAR-100 and CIFAR-10 (binary or python version),
//! Fashion-MNIST (IDX files, gzip or not) or makes the synthetic set, and
//! returns a [`Dataset`] of raw `u8` pixels in the shape `(N, 3, 32, 32)`.
//! [`Dataset::train_batches`] and [`Dataset::test_batches`] turn it into
//! normalised `f32` batches on the device the dataset is on, with the
//! CIFAR training augmentation (zero pad 4, random 32x32 crop, horizontal
//! flip) done on whole batches with tensor ops.

mod batches;
mod cifar;
mod dataset;
mod error;
mod fashion_mnist;
pub mod pickle;
pub mod synthetic;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use batches::{crop_flip_params, Batch, Batches, CropFlip, CROP_PADDING};
pub use cifar::{CIFAR100_MEAN, CIFAR100_STD};
pub use dataset::Dataset;
pub use error::DataError;
pub use fashion_mnist::{FASHION_MNIST_MEAN, FASHION_MNIST_STD};

/// A supported dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    Cifar100,
    Cifar10,
    FashionMnist,
    Synthetic,
}

impl DatasetName {
    pub const NAMES: &'static [&'static str] =
        &["cifar100", "cifar10", "fashion-mnist", "synthetic"];
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = [Self::Cifar100, Self::Cifar10, Self::FashionMnist, Self::Synthetic]
            .iter()
            .position(|d| d == self)
            .expect("listed");
        f.write_str(Self::NAMES[i])
    }
}

/// A dataset name that is not supported.
#[derive(Debug, thiserror::Error)]
#[error("unknown dataset '{0}': expected one of cifar100, cifar10, fashion-mnist, synthetic")]
pub struct UnknownDataset(pub String);

impl FromStr for DatasetName {
    type Err = UnknownDataset;

    fn from_str(s: &str) -> Result<DatasetName, UnknownDataset> {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| UnknownDataset(s.to_owned()))
    }
}

/// Part of a dataset: the training or the test images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Train,
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// Loads one split of a dataset from `data_dir` (ignored for synthetic).
///
/// CIFAR folders may hold either official version, directly or in the
/// folder that the archive extracts to (`cifar-100-binary/`,
/// `cifar-100-python/`, `cifar-10-batches-bin/`, `cifar-10-batches-py/`).
/// Fashion-MNIST folders hold the four IDX files, gzip-compressed or not.
pub fn load(name: DatasetName, data_dir: &Path, split: Split) -> Result<Dataset, DataError> {
    match name {
        DatasetName::Cifar100 | DatasetName::Cifar10 => cifar::load(name, data_dir, split),
        DatasetName::FashionMnist => fashion_mnist::load(data_dir, split),
        DatasetName::Synthetic => Ok(synthetic::load(split)),
    }
}

/// Returns the folder used when the user gives no `--data-dir`, relative to
/// the working directory: `data/cifar100`, `data/cifar10`,
/// `data/fashion-mnist` (`scripts/setup` links the Debian package's files
/// there) or `data/synthetic`, which [`load`] ignores.
pub fn default_data_dir(name: DatasetName) -> PathBuf {
    Path::new("data").join(name.to_string())
}
