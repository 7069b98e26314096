//! Errors of the dataset loaders.

use std::path::PathBuf;

use super::pickle::PickleError;
use super::{DatasetName, Split};

/// Error from loading or subsetting a dataset. Each message names the file
/// or value and states the fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{dataset} data folder {} not found; {hint}", dir.display())]
    MissingDir { dataset: DatasetName, dir: PathBuf, hint: String },

    #[error("no {dataset} {split} files in {}: expected {expected}; {hint}", dir.display())]
    MissingFiles {
        dataset: DatasetName,
        split: Split,
        dir: PathBuf,
        /// The file names looked for, in words.
        expected: String,
        hint: String,
    },

    #[error("failed to read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{} is {size} bytes, not a whole number of {record_size}-byte {dataset} records; \
         the file is truncated or not in the {dataset} binary format, so download it again",
        path.display()
    )]
    PartialRecord { path: PathBuf, dataset: DatasetName, size: u64, record_size: usize },

    #[error(
        "{} contains {found} records, expected {expected} for the {dataset} {split} split; \
         the file is truncated or from another dataset, so download it again",
        path.display()
    )]
    RecordCount { path: PathBuf, dataset: DatasetName, split: Split, found: usize, expected: usize },

    #[error(
        "{}: label {label} of record {record} is out of range for {num_classes} classes; \
         the file is corrupt or from another dataset",
        path.display()
    )]
    LabelOutOfRange { path: PathBuf, record: usize, label: i64, num_classes: i64 },

    #[error(
        "{}: magic number {found:#010x} is invalid, expected {expected:#010x} for an IDX {content} file",
        path.display()
    )]
    IdxMagic { path: PathBuf, content: &'static str, found: u32, expected: u32 },

    #[error(
        "{} is {found} bytes, shorter than its {expected}-byte IDX header; the file is truncated",
        path.display()
    )]
    IdxHeader { path: PathBuf, found: usize, expected: usize },

    #[error("{}: images are {rows}x{cols} pixels, expected 28x28 for Fashion-MNIST", path.display())]
    IdxDims { path: PathBuf, rows: u32, cols: u32 },

    #[error(
        "{}: the header declares {count} items, which need {expected} bytes after the header, \
         but the file has {found}; the file is truncated or corrupt, so download it again",
        path.display()
    )]
    IdxLength { path: PathBuf, count: u32, expected: usize, found: usize },

    #[error(
        "{} contains {images} images but {} contains {labels} labels; \
         both files must come from the same split",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch { images_path: PathBuf, images: usize, labels_path: PathBuf, labels: usize },

    #[error("{} is not a readable pickle: {source}", path.display())]
    Pickle {
        path: PathBuf,
        #[source]
        source: PickleError,
    },

    #[error("{} is not a {dataset} python batch: {reason}", path.display())]
    NotCifarBatch { path: PathBuf, dataset: DatasetName, reason: String },

    #[error("invalid subset size {requested} for a dataset of {available} images: {reason}")]
    InvalidSubset { requested: usize, available: i64, reason: String },
}
