//! Dataset loaders, batching and augmentation, on fixtures written byte by
//! byte into temporary folders, and on the real Fashion-MNIST test set when
//! it is installed.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use anyhow::Result;
use crcd::data::{
    self, crop_flip_params, synthetic, Batch, DataError, Dataset, DatasetName, Split,
    CIFAR100_MEAN, CIFAR100_STD, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
};
use flate2::write::GzEncoder;
use tch::{Device, Kind, Tensor};
use tempfile::TempDir;

const IMAGE_BYTES: usize = 3072;
const CIFAR100_RECORD: usize = 2 + IMAGE_BYTES;
const CIFAR10_RECORD: usize = 1 + IMAGE_BYTES;

// ---------------------------------------------------------------------------
// Fixture writers
// ---------------------------------------------------------------------------

/// Pixels of fixture image `i`: a window into a fixed byte sequence, so that
/// neighbouring images, planes and pixels differ.
fn fixture_pixels(i: usize) -> &'static [u8] {
    use std::sync::OnceLock;
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    let base =
        BASE.get_or_init(|| (0..IMAGE_BYTES + 997).map(|k| (k * 7 + k / 251) as u8).collect());
    let start = i * 13 % 997;
    &base[start..start + IMAGE_BYTES]
}

/// Binary CIFAR records for images `0..n`, with the label bytes of each.
fn binary_records(n: usize, labels: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.extend_from_slice(&labels(i));
        out.extend_from_slice(fixture_pixels(i));
    }
    out
}

fn cifar100_labels(i: usize) -> Vec<u8> {
    let fine = (i % 100) as u8;
    vec![fine / 5, fine]
}

fn cifar10_labels(i: usize) -> Vec<u8> {
    vec![(i % 10) as u8]
}

/// Creates a file of `size` zero bytes (sparse, so large ones cost nothing)
/// and writes `records` at the given byte offsets.
fn sparse_file(path: &Path, size: u64, records: &[(u64, &[u8])]) -> Result<()> {
    fs::create_dir_all(path.parent().unwrap())?;
    let file = File::create(path)?;
    file.set_len(size)?;
    for (offset, bytes) in records {
        std::os::unix::fs::FileExt::write_all_at(&file, bytes, *offset)?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::create_dir_all(path.parent().unwrap())?;
    fs::write(path, bytes)?;
    Ok(())
}

/// The parts of a CIFAR python batch that the pickle writers vary.
struct PythonBatch<'a> {
    pixels: &'a [u8],
    rows: u16,
    cols: u16,
    dtype: &'a str,
    label_key: &'a str,
    labels: &'a [u8],
}

impl PythonBatch<'_> {
    fn new<'a>(n: usize, label_key: &'a str, labels: &'a [u8]) -> PythonBatch<'a> {
        PythonBatch {
            pixels: &[],
            rows: n as u16,
            cols: IMAGE_BYTES as u16,
            dtype: "u1",
            label_key,
            labels,
        }
    }
}

fn short_string(opcode: u8, text: &str) -> Vec<u8> {
    let mut out = vec![opcode, text.len() as u8];
    out.extend_from_slice(text.as_bytes());
    out
}

/// Labels as MARK, BININT1 items and APPENDS, in runs of 1000 as Python
/// writes them.
fn appends(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for run in labels.chunks(1000) {
        out.push(b'(');
        for &label in run {
            out.extend_from_slice(&[b'K', label]);
        }
        out.push(b'e');
    }
    out
}

/// Builds a pickle in the layout of the official CIFAR python files: Python 2's
/// cPickle, protocol 2, byte-string keys, `numpy.core.multiarray._reconstruct`
/// and BUILD with the pixels as one BINSTRING.
fn python2_pickle(batch: &PythonBatch) -> Vec<u8> {
    let mut out = b"\x80\x02}q\x01(".to_vec();
    out.extend(short_string(b'U', "batch_label"));
    out.extend(short_string(b'U', "testing batch 1 of 1"));
    out.extend(short_string(b'U', batch.label_key));
    out.extend_from_slice(b"]q\x02");
    out.extend(appends(batch.labels));
    out.extend(short_string(b'U', "data"));
    out.extend_from_slice(
        b"q\x03cnumpy.core.multiarray\n_reconstruct\nq\x04cnumpy\nndarray\nq\x05",
    );
    out.extend_from_slice(b"K\x00\x85U\x01b\x87Rq\x06(K\x01M");
    out.extend_from_slice(&batch.rows.to_le_bytes());
    out.push(b'M');
    out.extend_from_slice(&batch.cols.to_le_bytes());
    out.extend_from_slice(b"\x86cnumpy\ndtype\nq\x07");
    out.extend(short_string(b'U', batch.dtype));
    out.extend_from_slice(
        b"K\x00K\x01\x87Rq\x08(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T",
    );
    out.extend_from_slice(&(batch.pixels.len() as u32).to_le_bytes());
    out.extend_from_slice(batch.pixels);
    out.extend_from_slice(b"tbu.");
    out
}

/// Builds a pickle as Python 3's `pickle.dump(.., protocol=5)` writes it with numpy
/// 2: framed, memoised, `numpy._core.numeric._frombuffer` on a BYTEARRAY8.
fn protocol5_pickle(batch: &PythonBatch) -> Vec<u8> {
    let mut out = b"\x80\x05\x95\x20\x00\x00\x00\x00\x00\x00\x00}\x94(".to_vec();
    out.extend(short_string(0x8c, "data"));
    out.push(0x94);
    out.extend(short_string(0x8c, "numpy._core.numeric"));
    out.push(0x94);
    out.extend(short_string(0x8c, "_frombuffer"));
    out.extend_from_slice(b"\x94\x93\x94(\x96");
    out.extend_from_slice(&(batch.pixels.len() as u64).to_le_bytes());
    out.extend_from_slice(batch.pixels);
    out.push(0x94);
    out.extend(short_string(0x8c, "numpy"));
    out.push(0x94);
    out.extend(short_string(0x8c, "dtype"));
    out.extend_from_slice(b"\x94\x93\x94");
    out.extend(short_string(0x8c, batch.dtype));
    out.extend_from_slice(b"\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01|\x94NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t\x94bM");
    out.extend_from_slice(&batch.rows.to_le_bytes());
    out.push(b'M');
    out.extend_from_slice(&batch.cols.to_le_bytes());
    out.extend_from_slice(b"\x86\x94\x8c\x01C\x94t\x94R\x94");
    out.extend(short_string(0x8c, batch.label_key));
    out.extend_from_slice(b"\x94]\x94");
    out.extend(appends(batch.labels));
    out.extend_from_slice(b"u.");
    out
}

/// Builds an IDX file of unsigned bytes.
fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Writes the Fashion-MNIST test split of `n` 28x28 images to `dir`,
/// gzip-compressed or not. Image `i` has pixel `(y, x)` = `i + 3y + 5x`.
fn write_fashion_mnist(dir: &Path, n: usize, compress: bool) -> Result<Vec<u8>> {
    let pixels: Vec<u8> =
        (0..n * 784).map(|k| ((k / 784) + 3 * (k % 784 / 28) + 5 * (k % 28)) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i * 3 % 10) as u8).collect();
    let images = idx(0x803, &[n as u32, 28, 28], &pixels);
    let labels_file = idx(0x801, &[n as u32], &labels);
    let (suffix, images, labels_file) = if compress {
        (".gz", gzip(&images), gzip(&labels_file))
    } else {
        ("", images, labels_file)
    };
    write(&dir.join(format!("t10k-images-idx3-ubyte{suffix}")), &images)?;
    write(&dir.join(format!("t10k-labels-idx1-ubyte{suffix}")), &labels_file)?;
    Ok(pixels)
}

fn image_bytes(dataset: &Dataset, row: i64) -> Vec<u8> {
    Vec::<u8>::try_from(dataset.images.get(row).flatten(0, -1)).unwrap()
}

fn tensor_i64(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t).unwrap()
}

fn tensor_f32(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

// ---------------------------------------------------------------------------
// CIFAR binary
// ---------------------------------------------------------------------------

#[test]
fn cifar100_binary_test_split() -> Result<()> {
    let dir = TempDir::new()?;
    write(&dir.path().join("cifar-100-binary/test.bin"), &binary_records(10_000, cifar100_labels))?;
    let dataset = data::load(DatasetName::Cifar100, dir.path(), Split::Test)?;
    assert_eq!(dataset.name, DatasetName::Cifar100);
    assert_eq!(dataset.images.size(), [10_000, 3, 32, 32]);
    assert_eq!(dataset.images.kind(), Kind::Uint8);
    assert_eq!(dataset.labels.kind(), Kind::Int64);
    assert_eq!(dataset.num_classes, 100);
    assert_eq!(dataset.mean, CIFAR100_MEAN);
    assert_eq!(dataset.std, CIFAR100_STD);
    let labels = dataset.labels_vec();
    assert!(labels.iter().enumerate().all(|(i, &l)| l == (i % 100) as i64), "fine labels in order");
    for row in [0, 1, 4321, 9999] {
        assert_eq!(image_bytes(&dataset, row), fixture_pixels(row as usize), "image {row}");
    }
    // Planar layout: byte 1024 of a record is the first green pixel.
    let green = dataset.images.int64_value(&[7, 1, 0, 0]);
    assert_eq!(green, i64::from(fixture_pixels(7)[1024]));
    Ok(())
}

#[test]
fn cifar10_binary_train_concatenates_batches() -> Result<()> {
    let dir = TempDir::new()?;
    let size = (10_000 * CIFAR10_RECORD) as u64;
    for k in 1..=5u8 {
        // Record 0 of batch k has label k and a distinct first pixel; the
        // rest are zero records (label 0).
        let mut record = vec![k];
        record.extend_from_slice(fixture_pixels(k as usize));
        sparse_file(&dir.path().join(format!("data_batch_{k}.bin")), size, &[(0, &record)])?;
    }
    let dataset = data::load(DatasetName::Cifar10, dir.path(), Split::Train)?;
    assert_eq!(dataset.len(), 50_000);
    assert_eq!(dataset.num_classes, 10);
    let labels = dataset.labels_vec();
    for k in 1..=5usize {
        let row = (k - 1) * 10_000;
        assert_eq!(labels[row], k as i64, "first label of batch {k}");
        assert_eq!(
            image_bytes(&dataset, row as i64),
            fixture_pixels(k),
            "first image of batch {k}"
        );
    }
    assert_eq!(labels.iter().filter(|&&l| l != 0).count(), 5);
    Ok(())
}

#[test]
fn cifar10_binary_extracted_folder() -> Result<()> {
    let dir = TempDir::new()?;
    write(
        &dir.path().join("cifar-10-batches-bin/test_batch.bin"),
        &binary_records(10_000, cifar10_labels),
    )?;
    for folder in [dir.path().to_path_buf(), dir.path().join("cifar-10-batches-bin")] {
        let dataset = data::load(DatasetName::Cifar10, &folder, Split::Test)?;
        assert_eq!(dataset.len(), 10_000);
        assert_eq!(dataset.class_counts(), vec![1000; 10]);
        assert_eq!(image_bytes(&dataset, 9998), fixture_pixels(9998));
    }
    Ok(())
}

#[test]
fn truncated_train_bin_is_partial_record() -> Result<()> {
    let dir = TempDir::new()?;
    let path = dir.path().join("train.bin");
    write(&path, &binary_records(3, cifar100_labels)[..2 * CIFAR100_RECORD + 100])?;
    write(&dir.path().join("test.bin"), &[])?;
    let err = data::load(DatasetName::Cifar100, dir.path(), Split::Train).unwrap_err();
    assert!(
        matches!(&err, DataError::PartialRecord { size, record_size: 3074, .. } if *size == 6248),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("download it again"), "{message}");
    Ok(())
}

#[test]
fn short_train_bin_is_wrong_count() -> Result<()> {
    let dir = TempDir::new()?;
    sparse_file(&dir.path().join("train.bin"), (49_999 * CIFAR100_RECORD) as u64, &[])?;
    let err = data::load(DatasetName::Cifar100, dir.path(), Split::Train).unwrap_err();
    assert!(matches!(err, DataError::RecordCount { found: 49_999, expected: 50_000, .. }), "{err}");
    assert!(err.to_string().contains("contains 49999 records, expected 50000"), "{err}");
    Ok(())
}

#[test]
fn oversized_train_bin_is_wrong_count() -> Result<()> {
    let dir = TempDir::new()?;
    sparse_file(&dir.path().join("train.bin"), (50_001 * CIFAR100_RECORD) as u64, &[])?;
    let err = data::load(DatasetName::Cifar100, dir.path(), Split::Train).unwrap_err();
    assert!(matches!(err, DataError::RecordCount { found: 50_001, expected: 50_000, .. }), "{err}");
    Ok(())
}

#[test]
fn label_byte_out_of_range() -> Result<()> {
    let dir = TempDir::new()?;
    let bad: &[u8] = &[3, 100];
    sparse_file(
        &dir.path().join("test.bin"),
        (10_000 * CIFAR100_RECORD) as u64,
        &[(1234 * CIFAR100_RECORD as u64, bad)],
    )?;
    let err = data::load(DatasetName::Cifar100, dir.path(), Split::Test).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange { record: 1234, label: 100, num_classes: 100, .. }
        ),
        "{err}"
    );

    let bad: &[u8] = &[10];
    sparse_file(
        &dir.path().join("c10/test_batch.bin"),
        (10_000 * CIFAR10_RECORD) as u64,
        &[(0, bad)],
    )?;
    let err = data::load(DatasetName::Cifar10, &dir.path().join("c10"), Split::Test).unwrap_err();
    assert!(
        matches!(err, DataError::LabelOutOfRange { record: 0, label: 10, num_classes: 10, .. }),
        "{err}"
    );
    Ok(())
}

#[test]
fn cifar100_coarse_label_is_ignored() -> Result<()> {
    // Coarse labels above 19 do not matter: only the fine label is used.
    let dir = TempDir::new()?;
    write(&dir.path().join("test.bin"), &binary_records(10_000, |i| vec![255, (i % 100) as u8]))?;
    let dataset = data::load(DatasetName::Cifar100, dir.path(), Split::Test)?;
    assert_eq!(dataset.class_counts(), vec![100; 100]);
    Ok(())
}

// ---------------------------------------------------------------------------
// CIFAR python
// ---------------------------------------------------------------------------

#[test]
fn cifar100_python_official_layout() -> Result<()> {
    let dir = TempDir::new()?;
    let n = 10_000;
    let pixels: Vec<u8> = (0..n).flat_map(|i| fixture_pixels(i).iter().copied()).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i * 7 % 100) as u8).collect();
    let batch = PythonBatch { pixels: &pixels, ..PythonBatch::new(n, "fine_labels", &labels) };
    write(&dir.path().join("cifar-100-python/test"), &python2_pickle(&batch))?;
    write(&dir.path().join("cifar-100-python/meta"), b"")?;

    let dataset = data::load(DatasetName::Cifar100, dir.path(), Split::Test)?;
    assert_eq!(dataset.images.size(), [10_000, 3, 32, 32]);
    let loaded = dataset.labels_vec();
    assert!(loaded.iter().zip(&labels).all(|(&a, &b)| a == i64::from(b)));
    for row in [0, 5000, 9999] {
        assert_eq!(image_bytes(&dataset, row), fixture_pixels(row as usize), "image {row}");
    }
    Ok(())
}

#[test]
fn cifar10_python_protocol5_layout() -> Result<()> {
    let dir = TempDir::new()?;
    let n = 10_000;
    let pixels: Vec<u8> = (0..n).flat_map(|i| fixture_pixels(i).iter().copied()).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let batch = PythonBatch { pixels: &pixels, ..PythonBatch::new(n, "labels", &labels) };
    write(&dir.path().join("cifar-10-batches-py/test_batch"), &protocol5_pickle(&batch))?;

    let dataset = data::load(DatasetName::Cifar10, dir.path(), Split::Test)?;
    assert_eq!(dataset.len(), 10_000);
    assert_eq!(dataset.class_counts(), vec![1000; 10]);
    assert_eq!(image_bytes(&dataset, 1234), fixture_pixels(1234));
    Ok(())
}

#[test]
fn binary_preferred_over_python() -> Result<()> {
    let dir = TempDir::new()?;
    write(
        &dir.path().join("cifar-10-batches-bin/test_batch.bin"),
        &binary_records(10_000, cifar10_labels),
    )?;
    write(&dir.path().join("cifar-10-batches-py/test_batch"), b"not a pickle")?;
    assert_eq!(data::load(DatasetName::Cifar10, dir.path(), Split::Test)?.len(), 10_000);
    Ok(())
}

/// Writes `bytes` as the CIFAR-100 python test file and loads it.
fn load_python_test(bytes: &[u8]) -> Result<DataError> {
    let dir = TempDir::new()?;
    write(&dir.path().join("test"), bytes)?;
    Ok(data::load(DatasetName::Cifar100, dir.path(), Split::Test).unwrap_err())
}

#[test]
fn pickle_of_a_list_is_not_a_batch() -> Result<()> {
    let err = load_python_test(b"\x80\x02]q\x00(K\x01K\x02e.")?;
    assert!(matches!(err, DataError::NotCifarBatch { .. }), "{err}");
    assert!(err.to_string().contains("stores a list, expected a dict"), "{err}");
    Ok(())
}

#[test]
fn pickle_without_fine_labels() -> Result<()> {
    let pixels = vec![0u8; 2 * IMAGE_BYTES];
    let batch = PythonBatch { pixels: &pixels, ..PythonBatch::new(2, "labels", &[1, 2]) };
    let err = load_python_test(&python2_pickle(&batch))?;
    let message = err.to_string();
    assert!(message.contains("key 'fine_labels' is missing"), "{message}");
    assert!(message.contains("\"labels\""), "{message}");
    Ok(())
}

#[test]
fn pickle_with_wrong_dtype() -> Result<()> {
    let pixels = vec![0u8; 2 * IMAGE_BYTES * 2];
    let batch =
        PythonBatch { pixels: &pixels, dtype: "u2", ..PythonBatch::new(2, "fine_labels", &[1, 2]) };
    let err = load_python_test(&python2_pickle(&batch))?;
    assert!(err.to_string().contains("'data' has dtype u2, expected uint8"), "{err}");
    Ok(())
}

#[test]
fn pickle_with_wrong_shape() -> Result<()> {
    let pixels = vec![0u8; 2 * 3073];
    let batch =
        PythonBatch { pixels: &pixels, cols: 3073, ..PythonBatch::new(2, "fine_labels", &[1, 2]) };
    let err = load_python_test(&protocol5_pickle(&batch))?;
    assert!(err.to_string().contains("'data' has shape [2, 3073], expected (N, 3072)"), "{err}");
    Ok(())
}

#[test]
fn pickle_with_fewer_labels_than_images() -> Result<()> {
    let pixels = vec![0u8; 2 * IMAGE_BYTES];
    let batch = PythonBatch { pixels: &pixels, ..PythonBatch::new(2, "fine_labels", &[1]) };
    let err = load_python_test(&python2_pickle(&batch))?;
    assert!(err.to_string().contains("'fine_labels' has 1 labels for 2 images"), "{err}");
    Ok(())
}

#[test]
fn pickle_with_too_few_records() -> Result<()> {
    let pixels = vec![0u8; 2 * IMAGE_BYTES];
    let batch = PythonBatch { pixels: &pixels, ..PythonBatch::new(2, "fine_labels", &[1, 2]) };
    let err = load_python_test(&python2_pickle(&batch))?;
    assert!(matches!(err, DataError::RecordCount { found: 2, expected: 10_000, .. }), "{err}");
    Ok(())
}

#[test]
fn text_file_is_not_a_pickle() -> Result<()> {
    let err = load_python_test(b"Images of 100 classes\n")?;
    assert!(matches!(err, DataError::Pickle { .. }), "{err}");
    assert!(err.to_string().contains("unsupported opcode 0x49 ('I') at byte 0"), "{err}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Missing data
// ---------------------------------------------------------------------------

#[test]
fn missing_cifar_dir_says_how_to_download() -> Result<()> {
    let dir = TempDir::new()?;
    let missing = dir.path().join("nowhere");
    for name in [DatasetName::Cifar100, DatasetName::Cifar10] {
        let err = data::load(name, &missing, Split::Train).unwrap_err();
        assert!(matches!(err, DataError::MissingDir { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("https://www.cs.toronto.edu/~kriz/cifar.html"), "{message}");
        assert!(message.contains("--data-dir"), "{message}");
        assert!(message.contains(&missing.display().to_string()), "{message}");
    }
    Ok(())
}

#[test]
fn empty_cifar_dir_lists_expected_files() -> Result<()> {
    let dir = TempDir::new()?;
    let err = data::load(DatasetName::Cifar10, dir.path(), Split::Train).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DataError::MissingFiles { .. }), "{message}");
    assert!(message.contains("data_batch_5.bin"), "{message}");
    assert!(message.contains("cifar-10-batches-py/"), "{message}");
    assert!(message.contains("cifar.html"), "{message}");

    write(&dir.path().join("cifar-10-binary.tar.gz"), b"")?;
    let message =
        data::load(DatasetName::Cifar10, dir.path(), Split::Train).unwrap_err().to_string();
    assert!(!message.contains("tar xzf"), "not the official archive name: {message}");
    write(&dir.path().join("cifar-10-batches-bin.tar.gz"), b"")?;
    let message =
        data::load(DatasetName::Cifar10, dir.path(), Split::Train).unwrap_err().to_string();
    assert!(message.contains("tar xzf cifar-10-batches-bin.tar.gz"), "{message}");
    Ok(())
}

#[test]
fn missing_fashion_mnist_dir_says_run_setup() -> Result<()> {
    let dir = TempDir::new()?;
    let err = data::load(DatasetName::FashionMnist, &dir.path().join("nowhere"), Split::Test)
        .unwrap_err();
    assert!(matches!(err, DataError::MissingDir { .. }), "{err}");
    assert!(err.to_string().contains("scripts/setup"), "{err}");

    let err = data::load(DatasetName::FashionMnist, dir.path(), Split::Test).unwrap_err();
    assert!(matches!(err, DataError::MissingFiles { .. }), "{err}");
    assert!(err.to_string().contains("t10k-images-idx3-ubyte"), "{err}");
    assert!(err.to_string().contains("scripts/setup"), "{err}");
    Ok(())
}

#[test]
fn default_data_dirs() {
    use std::path::PathBuf;
    assert_eq!(data::default_data_dir(DatasetName::Cifar100), PathBuf::from("data/cifar100"));
    assert_eq!(data::default_data_dir(DatasetName::Cifar10), PathBuf::from("data/cifar10"));
    assert_eq!(
        data::default_data_dir(DatasetName::FashionMnist),
        PathBuf::from("data/fashion-mnist")
    );
}

// ---------------------------------------------------------------------------
// Fashion-MNIST
// ---------------------------------------------------------------------------

fn check_fashion_mnist(dataset: &Dataset, pixels: &[u8]) {
    let n = pixels.len() / 784;
    assert_eq!(dataset.images.size(), [n as i64, 3, 32, 32]);
    assert_eq!(dataset.num_classes, 10);
    assert_eq!(dataset.mean, FASHION_MNIST_MEAN);
    assert_eq!(dataset.std, FASHION_MNIST_STD);
    assert_eq!(dataset.labels_vec(), (0..n).map(|i| (i * 3 % 10) as i64).collect::<Vec<_>>());
    let inner = dataset.images.narrow(2, 2, 28).narrow(3, 2, 28);
    for channel in 0..3 {
        let plane = Vec::<u8>::try_from(inner.select(1, channel).flatten(0, -1)).unwrap();
        assert_eq!(plane, pixels, "channel {channel}");
    }
    let total = dataset.images.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[]);
    let inner_total = inner.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[]);
    assert_eq!(total, inner_total, "the 2-pixel border is zero");
}

#[test]
fn fashion_mnist_gzip_and_plain() -> Result<()> {
    for compress in [true, false] {
        let dir = TempDir::new()?;
        let pixels = write_fashion_mnist(dir.path(), 6, compress)?;
        let dataset = data::load(DatasetName::FashionMnist, dir.path(), Split::Test)?;
        check_fashion_mnist(&dataset, &pixels);
    }
    Ok(())
}

#[test]
fn fashion_mnist_in_subfolder() -> Result<()> {
    let dir = TempDir::new()?;
    let pixels = write_fashion_mnist(&dir.path().join("fashion-mnist"), 3, true)?;
    let dataset = data::load(DatasetName::FashionMnist, dir.path(), Split::Test)?;
    check_fashion_mnist(&dataset, &pixels);
    Ok(())
}

/// Writes a Fashion-MNIST test split from raw files and loads it.
fn load_idx_pair(images: &[u8], labels: &[u8]) -> Result<DataError> {
    let dir = TempDir::new()?;
    write(&dir.path().join("t10k-images-idx3-ubyte"), images)?;
    write(&dir.path().join("t10k-labels-idx1-ubyte.gz"), &gzip(labels))?;
    Ok(data::load(DatasetName::FashionMnist, dir.path(), Split::Test).unwrap_err())
}

#[test]
fn idx_wrong_magic() -> Result<()> {
    let labels = idx(0x801, &[2], &[0, 1]);
    let err = load_idx_pair(&idx(0x801, &[2, 28, 28], &[0; 2 * 784]), &labels)?;
    assert!(matches!(err, DataError::IdxMagic { found: 0x801, expected: 0x803, .. }), "{err}");
    assert!(
        err.to_string().contains("magic number 0x00000801 is invalid, expected 0x00000803"),
        "{err}"
    );

    let images = idx(0x803, &[2, 28, 28], &[0; 2 * 784]);
    let err = load_idx_pair(&images, &idx(0x803, &[2, 1, 1], &[0, 1]))?;
    assert!(matches!(err, DataError::IdxMagic { found: 0x803, expected: 0x801, .. }), "{err}");
    Ok(())
}

#[test]
fn idx_wrong_dimensions() -> Result<()> {
    let err =
        load_idx_pair(&idx(0x803, &[2, 32, 28], &[0; 2 * 32 * 28]), &idx(0x801, &[2], &[0, 1]))?;
    assert!(matches!(err, DataError::IdxDims { rows: 32, cols: 28, .. }), "{err}");
    assert!(err.to_string().contains("images are 32x28 pixels, expected 28x28"), "{err}");
    Ok(())
}

#[test]
fn idx_count_mismatch() -> Result<()> {
    let err = load_idx_pair(&idx(0x803, &[3, 28, 28], &[0; 3 * 784]), &idx(0x801, &[2], &[0, 1]))?;
    assert!(matches!(err, DataError::CountMismatch { images: 3, labels: 2, .. }), "{err}");
    Ok(())
}

#[test]
fn idx_truncated_payload() -> Result<()> {
    let err =
        load_idx_pair(&idx(0x803, &[3, 28, 28], &[0; 2 * 784]), &idx(0x801, &[3], &[0, 1, 2]))?;
    assert!(
        matches!(err, DataError::IdxLength { count: 3, expected: 2352, found: 1568, .. }),
        "{err}"
    );
    let err = load_idx_pair(&[0, 0, 8], &idx(0x801, &[3], &[0, 1, 2]))?;
    assert!(matches!(err, DataError::IdxHeader { found: 3, expected: 16, .. }), "{err}");
    Ok(())
}

#[test]
fn idx_label_out_of_range() -> Result<()> {
    let err = load_idx_pair(&idx(0x803, &[2, 28, 28], &[0; 2 * 784]), &idx(0x801, &[2], &[9, 10]))?;
    assert!(matches!(err, DataError::LabelOutOfRange { record: 1, label: 10, .. }), "{err}");
    Ok(())
}

#[test]
fn real_fashion_mnist_test_set() -> Result<()> {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    if !dir.join("t10k-images-idx3-ubyte.gz").is_file() {
        println!("skipped: the Fashion-MNIST test set is not in {}", dir.display());
        return Ok(());
    }
    let dataset = data::load(DatasetName::FashionMnist, dir, Split::Test)?;
    assert_eq!(dataset.images.size(), [10_000, 3, 32, 32]);
    assert_eq!(dataset.class_counts(), vec![1000; 10]);
    // The normalisation constants describe the unpadded images; the test set
    // is close to the training set.
    let inner = dataset.images.narrow(2, 2, 28).narrow(3, 2, 28).to_kind(Kind::Double) / 255.0;
    let mean = inner.mean(Kind::Double).double_value(&[]);
    let std = inner.std(true).double_value(&[]);
    assert!((mean - FASHION_MNIST_MEAN[0]).abs() < 0.005, "mean {mean}");
    assert!((std - FASHION_MNIST_STD[0]).abs() < 0.005, "std {std}");
    let border =
        dataset.images.narrow(3, 0, 2).to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[]);
    assert_eq!(border, 0);
    Ok(())
}

// ---------------------------------------------------------------------------
// Synthetic
// ---------------------------------------------------------------------------

#[test]
fn synthetic_splits_have_fixed_sizes() -> Result<()> {
    let train = data::load(DatasetName::Synthetic, Path::new("ignored"), Split::Train)?;
    let test = data::load(DatasetName::Synthetic, Path::new("ignored"), Split::Test)?;
    assert_eq!(train.images.size(), [synthetic::TRAIN_SIZE as i64, 3, 32, 32]);
    assert_eq!(test.images.size(), [synthetic::TEST_SIZE as i64, 3, 32, 32]);
    assert_eq!(train.num_classes, 10);
    assert_eq!(train.class_counts(), vec![200; 10]);
    assert_eq!(test.class_counts(), vec![50; 10]);
    assert!(!train.images.narrow(0, 0, 500).equal(&test.images), "different seeds per split");
    Ok(())
}

#[test]
fn synthetic_is_seeded() {
    let a = synthetic::generate(4, 50, 9);
    let b = synthetic::generate(4, 50, 9);
    let c = synthetic::generate(4, 50, 10);
    assert!(a.images.equal(&b.images));
    assert!(a.labels.equal(&b.labels));
    assert!(!a.images.equal(&c.images));
}

#[test]
fn synthetic_classes_are_learnable() {
    // A nearest-class-mean classifier fitted on the training split must
    // classify most of the test split correctly.
    let train = synthetic::load(Split::Train);
    let test = synthetic::load(Split::Test);
    let features = |d: &Dataset| d.images.to_kind(Kind::Float).view([d.len(), -1]) / 255.0;
    let train_x = features(&train);
    let centroids = Tensor::stack(
        &(0..10)
            .map(|c| {
                train_x.index_select(0, &train.labels.eq(c).nonzero().squeeze_dim(1)).mean_dim(
                    0,
                    false,
                    Kind::Float,
                )
            })
            .collect::<Vec<_>>(),
        0,
    );
    let predicted = Tensor::cdist(&features(&test), &centroids, 2.0, None).argmin(1, false);
    let accuracy = predicted
        .eq_tensor(&test.labels)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!(accuracy > 0.9, "nearest-mean accuracy {accuracy}");
}

// ---------------------------------------------------------------------------
// Batches and augmentation
// ---------------------------------------------------------------------------

/// Crops and flips row `row` of `dataset` by hand, pixel by pixel, and
/// normalises it: the reference for the batched gather.
fn reference_augment(dataset: &Dataset, row: i64, dx: i64, dy: i64, flip: bool) -> Vec<f32> {
    let raw = image_bytes(dataset, row);
    let mut out = Vec::with_capacity(IMAGE_BYTES);
    for c in 0..3 {
        for y in 0..32i64 {
            for x in 0..32i64 {
                let column = if flip { 31 - x } else { x };
                // Position in the unpadded image; outside it the padding is zero.
                let (sy, sx) = (dy + y - 4, dx + column - 4);
                let pixel = if (0..32).contains(&sy) && (0..32).contains(&sx) {
                    raw[(c * 1024 + sy * 32 + sx) as usize]
                } else {
                    0
                };
                let scaled = pixel as f32 / 255.0;
                out.push(
                    (scaled - dataset.mean[c as usize] as f32) / dataset.std[c as usize] as f32,
                );
            }
        }
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn augmentation_matches_per_image_crop_and_flip() {
    let dataset = synthetic::generate(10, 70, 5);
    let (seed, epoch) = (11, 3);
    let mut checked_flips = [0; 2];
    for (number, batch) in dataset.train_batches(32, seed, epoch).enumerate() {
        let indices = tensor_i64(&batch.indices);
        let params = crop_flip_params(seed, epoch, number as i64, indices.len());
        for (i, (&row, p)) in indices.iter().zip(&params).enumerate() {
            let expected = reference_augment(&dataset, row, p.dx, p.dy, p.flip);
            let got = tensor_f32(&batch.images.get(i as i64));
            let diff = max_abs_diff(&got, &expected);
            assert!(diff < 1e-5, "batch {number} image {i} ({p:?}): max difference {diff}");
            checked_flips[usize::from(p.flip)] += 1;
        }
    }
    assert!(
        checked_flips[0] > 0 && checked_flips[1] > 0,
        "both flip cases checked: {checked_flips:?}"
    );
}

#[test]
fn train_batches_cover_each_row_once() {
    let dataset = synthetic::generate(10, 70, 5);
    let batches = dataset.train_batches(32, 1, 0);
    assert_eq!(batches.len(), 3);
    let batches: Vec<Batch> = batches.collect();
    let sizes: Vec<i64> = batches.iter().map(|b| b.images.size()[0]).collect();
    assert_eq!(sizes, [32, 32, 6], "the last partial batch is kept");
    let labels = dataset.labels_vec();
    let mut rows = Vec::new();
    for batch in &batches {
        assert_eq!(batch.images.kind(), Kind::Float);
        assert_eq!(batch.images.size()[1..], [3, 32, 32]);
        let indices = tensor_i64(&batch.indices);
        let batch_labels = tensor_i64(&batch.labels);
        for (row, label) in indices.iter().zip(&batch_labels) {
            assert_eq!(*label, labels[*row as usize], "label of row {row}");
        }
        rows.extend(indices);
    }
    assert_ne!(rows, (0..70).collect::<Vec<_>>(), "rows are shuffled");
    rows.sort_unstable();
    assert_eq!(rows, (0..70).collect::<Vec<_>>());
}

#[test]
fn train_batches_len_counts_down() {
    let dataset = synthetic::generate(10, 65, 5);
    let mut batches = dataset.train_batches(64, 1, 0);
    assert_eq!(batches.len(), 2);
    batches.next();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches.next().map(|b| b.labels.size()[0]), Some(1));
    assert_eq!(batches.len(), 0);
    assert!(batches.next().is_none());
}

fn epoch_tensors(dataset: &Dataset, seed: u64, epoch: i64) -> Vec<(Tensor, Tensor)> {
    dataset.train_batches(16, seed, epoch).map(|b| (b.images, b.indices)).collect()
}

#[test]
fn train_batches_replay_for_equal_seed_and_epoch() {
    let dataset = synthetic::generate(10, 40, 5);
    let first = epoch_tensors(&dataset, 4, 7);
    let again = epoch_tensors(&dataset, 4, 7);
    for ((images, indices), (images2, indices2)) in first.iter().zip(&again) {
        assert!(indices.equal(indices2));
        assert!(images.equal(images2));
    }
}

#[test]
fn train_batches_differ_across_epochs_and_seeds() {
    let dataset = synthetic::generate(10, 40, 5);
    let base = epoch_tensors(&dataset, 4, 7);
    for (seed, epoch) in [(4, 8), (5, 7)] {
        let other = epoch_tensors(&dataset, seed, epoch);
        assert!(!base[0].1.equal(&other[0].1), "seed {seed} epoch {epoch}: same permutation");
        assert!(!base[0].0.equal(&other[0].0), "seed {seed} epoch {epoch}: same images");
    }
}

#[test]
fn test_batches_are_ordered_and_normalised() {
    let dataset = synthetic::generate(3, 21, 8);
    let batches: Vec<Batch> = dataset.test_batches(8).collect();
    assert_eq!(batches.len(), 3);
    let mut row = 0;
    for batch in &batches {
        for (i, &index) in tensor_i64(&batch.indices).iter().enumerate() {
            assert_eq!(index, row);
            let expected = reference_augment(&dataset, row, 4, 4, false);
            let diff = max_abs_diff(&tensor_f32(&batch.images.get(i as i64)), &expected);
            assert!(diff < 1e-5, "row {row}: max difference {diff}");
            row += 1;
        }
        assert!(batch.labels.equal(&dataset.labels.index_select(0, &batch.indices)));
    }
    assert_eq!(row, 21);
}

#[test]
fn batches_follow_the_device() {
    let dataset = synthetic::generate(3, 10, 8).to_device(Device::Cpu);
    let batch = dataset.train_batches(4, 0, 0).next().unwrap();
    assert_eq!(batch.images.device(), Device::Cpu);
    assert_eq!(batch.indices.device(), Device::Cpu);
    assert_eq!(batch.labels.device(), Device::Cpu);
}

// ---------------------------------------------------------------------------
// Subsets
// ---------------------------------------------------------------------------

#[test]
fn subset_is_class_balanced() -> Result<()> {
    let dataset = synthetic::load(Split::Train);
    for n in [10, 95, 1000] {
        let subset = dataset.subset(n, 3)?;
        assert_eq!(subset.len(), n as i64);
        let counts = subset.class_counts();
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "n = {n}: class counts {counts:?}");
    }
    Ok(())
}

#[test]
fn subset_rows_match_the_source() -> Result<()> {
    let dataset = synthetic::load(Split::Train);
    let rows = dataset.subset_rows(57, 3)?;
    let subset = dataset.subset(57, 3)?;
    assert!(rows.windows(2).all(|w| w[0] < w[1]), "rows in increasing order");
    let rows_tensor = Tensor::from_slice(&rows);
    assert!(subset.images.equal(&dataset.images.index_select(0, &rows_tensor)));
    assert!(subset.labels.equal(&dataset.labels.index_select(0, &rows_tensor)));
    assert_eq!(subset.mean, dataset.mean);
    // Batches index the subset's own rows.
    let indices: Vec<i64> = subset.test_batches(100).flat_map(|b| tensor_i64(&b.indices)).collect();
    assert_eq!(indices, (0..57).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn subset_is_seeded() -> Result<()> {
    let dataset = synthetic::load(Split::Train);
    assert_eq!(dataset.subset_rows(100, 1)?, dataset.subset_rows(100, 1)?);
    assert_ne!(dataset.subset_rows(100, 1)?, dataset.subset_rows(100, 2)?);
    Ok(())
}

#[test]
fn subset_rejects_invalid_sizes() {
    let dataset = synthetic::generate(2, 10, 1);
    let err = dataset.subset(0, 1).unwrap_err();
    assert!(matches!(err, DataError::InvalidSubset { requested: 0, available: 10, .. }), "{err}");
    let err = dataset.subset(11, 1).unwrap_err();
    assert!(err.to_string().contains("invalid subset size 11 for a dataset of 10 images"), "{err}");
    assert_eq!(dataset.subset(10, 1).unwrap().len(), 10);
}
