//! Fashion-MNIST from its IDX files, gzip-compressed or not.
//!
//! An IDX file is a big-endian header (a magic number whose last byte is the
//! number of dimensions, then one `u32` per dimension) followed by the `u8`
//! items in row-major order. The 28x28 grey images are zero-padded to 32x32
//! and their channel repeated three times, so that every CIFAR model runs on
//! them unchanged.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use tch::{Kind, Tensor};

use super::{DataError, Dataset, DatasetName, Split};

/// Mean and standard deviation of the unpadded 28x28 training images on
/// [0, 1], used for all three channels. The zero padding lowers the mean of
/// a padded image, but the normalisation keeps these customary values.
pub const FASHION_MNIST_MEAN: [f64; 3] = [0.2860; 3];
pub const FASHION_MNIST_STD: [f64; 3] = [0.3530; 3];

/// Magic numbers: 0x08 (unsigned bytes) then the number of dimensions.
const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const SIDE: usize = 28;
/// Zero pixels added on each side to reach 32x32.
const PAD: i64 = 2;
const NUM_CLASSES: i64 = 10;
/// Folder name that `scripts/setup` and this loader use inside a data folder.
const FOLDER: &str = "fashion-mnist";

fn file_stems(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
}

fn hint() -> String {
    "run scripts/setup, which links the Debian package dataset-fashion-mnist \
     (/usr/share/datasets/fashion-mnist) into data/fashion-mnist, or pass --data-dir \
     with a folder that contains the four IDX files"
        .into()
}

/// Finds `stem.gz` or `stem` in `dir` or in its `fashion-mnist` subfolder.
fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join(FOLDER)]
        .iter()
        .flat_map(|folder| [folder.join(format!("{stem}.gz")), folder.join(stem)])
        .find(|path| path.is_file())
}

/// Reads a file, decompressing it when it starts with the gzip magic bytes.
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, DataError> {
    let io_error = |source| DataError::Io { path: path.to_path_buf(), source };
    let raw = fs::read(path).map_err(io_error)?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(io_error)?;
    Ok(out)
}

/// Checks the header of an IDX file and returns its dimensions and items.
fn parse_idx<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
    content: &'static str,
) -> Result<(Vec<u32>, &'a [u8]), DataError> {
    let word = |i: usize| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    let ndims = (magic & 0xff) as usize;
    let header = 4 * (1 + ndims);
    if bytes.len() < header {
        return Err(DataError::IdxHeader {
            path: path.to_path_buf(),
            found: bytes.len(),
            expected: header,
        });
    }
    if word(0) != magic {
        return Err(DataError::IdxMagic {
            path: path.to_path_buf(),
            content,
            found: word(0),
            expected: magic,
        });
    }
    let dims: Vec<u32> = (1..=ndims).map(word).collect();
    let expected = dims.iter().map(|&d| d as usize).product::<usize>();
    let payload = &bytes[header..];
    if payload.len() != expected {
        return Err(DataError::IdxLength {
            path: path.to_path_buf(),
            count: dims[0],
            expected,
            found: payload.len(),
        });
    }
    Ok((dims, payload))
}

/// Loads `split` of Fashion-MNIST from `dir`.
pub(super) fn load(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let dataset = DatasetName::FashionMnist;
    if !dir.is_dir() {
        return Err(DataError::MissingDir { dataset, dir: dir.to_path_buf(), hint: hint() });
    }
    let (images_stem, labels_stem) = file_stems(split);
    let (Some(images_path), Some(labels_path)) =
        (find_file(dir, images_stem), find_file(dir, labels_stem))
    else {
        return Err(DataError::MissingFiles {
            dataset,
            split,
            dir: dir.to_path_buf(),
            expected: format!(
                "{images_stem}[.gz] and {labels_stem}[.gz], in the folder itself or in {FOLDER}/"
            ),
            hint: hint(),
        });
    };

    let image_bytes = read_maybe_gzip(&images_path)?;
    let (dims, pixels) = parse_idx(&images_path, &image_bytes, IMAGES_MAGIC, "images")?;
    let (count, rows, cols) = (dims[0] as usize, dims[1], dims[2]);
    if (rows as usize, cols as usize) != (SIDE, SIDE) {
        return Err(DataError::IdxDims { path: images_path, rows, cols });
    }

    let label_bytes = read_maybe_gzip(&labels_path)?;
    let (_, raw_labels) = parse_idx(&labels_path, &label_bytes, LABELS_MAGIC, "labels")?;
    if raw_labels.len() != count {
        return Err(DataError::CountMismatch {
            images_path,
            images: count,
            labels_path,
            labels: raw_labels.len(),
        });
    }
    if let Some(record) = raw_labels.iter().position(|&l| i64::from(l) >= NUM_CLASSES) {
        return Err(DataError::LabelOutOfRange {
            path: labels_path,
            record,
            label: raw_labels[record].into(),
            num_classes: NUM_CLASSES,
        });
    }

    let n = count as i64;
    let side = SIDE as i64;
    let size = side + 2 * PAD;
    let images = Tensor::from_data_size(pixels, &[n, 1, side, side], Kind::Uint8)
        .constant_pad_nd([PAD, PAD, PAD, PAD])
        .expand([n, 3, size, size], false)
        .contiguous();
    let labels = Tensor::from_slice(raw_labels).to_kind(Kind::Int64);
    Ok(Dataset {
        name: dataset,
        images,
        labels,
        num_classes: NUM_CLASSES,
        mean: FASHION_MNIST_MEAN,
        std: FASHION_MNIST_STD,
    })
}
