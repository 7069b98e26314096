//! CIFAR-100 and CIFAR-10 in both official formats.
//!
//! Binary version: fixed-size records of label bytes (CIFAR-100: coarse then
//! fine; CIFAR-10: one) followed by 3072 pixel bytes, the red, green and
//! blue 32x32 planes in row-major order. Python version: pickled dicts with
//! a `uint8` numpy array `data` of shape `(N, 3072)`, in the same pixel
//! order, and a list `fine_labels` (CIFAR-100) or `labels` (CIFAR-10).
//! Both are described on <https://www.cs.toronto.edu/~kriz/cifar.html>.

use std::fs;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::pickle::{self, Value};
use super::{DataError, Dataset, DatasetName, Split};

/// Pixel bytes of one image: 3 planes of 32x32.
const IMAGE_BYTES: usize = 3 * 32 * 32;

/// Per-channel mean and standard deviation of the CIFAR-100 training set,
/// the normalisation of RepDistiller's CIFAR-100 loaders.
pub const CIFAR100_MEAN: [f64; 3] = [0.5071, 0.4867, 0.4408];
pub const CIFAR100_STD: [f64; 3] = [0.2675, 0.2565, 0.2761];

/// The properties in which CIFAR-100 and CIFAR-10 differ.
struct Spec {
    dataset: DatasetName,
    num_classes: i64,
    /// Label bytes at the start of each binary record.
    label_bytes: usize,
    /// Position of the label used among those bytes (CIFAR-100: 1, the fine
    /// label).
    label_index: usize,
    /// Key of the label list in the python version.
    label_key: &'static str,
    /// Folders that the two official archives extract to.
    binary_folder: &'static str,
    python_folder: &'static str,
    train_stems: &'static [&'static str],
    test_stems: &'static [&'static str],
    /// Images in each file of the training split.
    train_records_per_file: usize,
}

const CIFAR100: Spec = Spec {
    dataset: DatasetName::Cifar100,
    num_classes: 100,
    label_bytes: 2,
    label_index: 1,
    label_key: "fine_labels",
    binary_folder: "cifar-100-binary",
    python_folder: "cifar-100-python",
    train_stems: &["train"],
    test_stems: &["test"],
    train_records_per_file: 50_000,
};

const CIFAR10: Spec = Spec {
    dataset: DatasetName::Cifar10,
    num_classes: 10,
    label_bytes: 1,
    label_index: 0,
    label_key: "labels",
    binary_folder: "cifar-10-batches-bin",
    python_folder: "cifar-10-batches-py",
    train_stems: &["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
    test_stems: &["test_batch"],
    train_records_per_file: 10_000,
};

/// Images in the test split of both datasets (one file).
const TEST_RECORDS: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Binary,
    Python,
}

impl Spec {
    fn record_bytes(&self) -> usize {
        self.label_bytes + IMAGE_BYTES
    }

    /// File names of `split` in `format`: the stem, plus `.bin` for binary.
    fn files(&self, format: Format, split: Split) -> Vec<String> {
        let stems = match split {
            Split::Train => self.train_stems,
            Split::Test => self.test_stems,
        };
        let suffix = match format {
            Format::Binary => ".bin",
            Format::Python => "",
        };
        stems.iter().map(|stem| format!("{stem}{suffix}")).collect()
    }

    fn records_per_file(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train_records_per_file,
            Split::Test => TEST_RECORDS,
        }
    }

    fn hint(&self, dir: &Path) -> String {
        let archive = [self.binary_folder, self.python_folder]
            .iter()
            .map(|folder| format!("{folder}.tar.gz"))
            .find(|name| dir.join(name).is_file());
        match archive {
            Some(name) => format!("extract {name} there first (tar xzf {name})"),
            None => format!(
                "download the binary or python version from https://www.cs.toronto.edu/~kriz/cifar.html, \
                 extract it, and pass its folder with --data-dir (default {})",
                super::default_data_dir(self.dataset).display()
            ),
        }
    }

    /// Finds the folder and format that hold `split`: `dir` itself or the
    /// folder an official archive extracts to inside it.
    fn locate(&self, dir: &Path, split: Split) -> Result<(PathBuf, Format), DataError> {
        if !dir.is_dir() {
            return Err(DataError::MissingDir {
                dataset: self.dataset,
                dir: dir.to_path_buf(),
                hint: self.hint(dir),
            });
        }
        let folders =
            [dir.to_path_buf(), dir.join(self.binary_folder), dir.join(self.python_folder)];
        for folder in &folders {
            for format in [Format::Binary, Format::Python] {
                if self.files(format, split).iter().all(|f| folder.join(f).is_file()) {
                    return Ok((folder.clone(), format));
                }
            }
        }
        let names = |format| self.files(format, split).join(", ");
        Err(DataError::MissingFiles {
            dataset: self.dataset,
            split,
            dir: dir.to_path_buf(),
            expected: format!(
                "{} (binary version) or {} (python version), in the folder itself or in {}/ or {}/",
                names(Format::Binary),
                names(Format::Python),
                self.binary_folder,
                self.python_folder
            ),
            hint: self.hint(dir),
        })
    }

    fn check_label(&self, path: &Path, record: usize, label: i64) -> Result<(), DataError> {
        if (0..self.num_classes).contains(&label) {
            return Ok(());
        }
        Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            record,
            label,
            num_classes: self.num_classes,
        })
    }

    /// Appends the images and labels of one binary file.
    fn read_binary(
        &self,
        path: &Path,
        split: Split,
        pixels: &mut Vec<u8>,
        labels: &mut Vec<i64>,
    ) -> Result<(), DataError> {
        let io_error = |source| DataError::Io { path: path.to_path_buf(), source };
        // Check the size before reading, so a wrong file fails fast.
        let size = fs::metadata(path).map_err(io_error)?.len();
        let record_bytes = self.record_bytes();
        if size % record_bytes as u64 != 0 {
            return Err(DataError::PartialRecord {
                path: path.to_path_buf(),
                dataset: self.dataset,
                size,
                record_size: record_bytes,
            });
        }
        let expected = self.records_per_file(split);
        let found = (size / record_bytes as u64) as usize;
        if found != expected {
            return Err(self.record_count_error(path, split, found));
        }
        let bytes = fs::read(path).map_err(io_error)?;
        if bytes.len() != expected * record_bytes {
            return Err(self.record_count_error(path, split, bytes.len() / record_bytes));
        }
        pixels.reserve(expected * IMAGE_BYTES);
        for (record, chunk) in bytes.chunks_exact(record_bytes).enumerate() {
            let label = i64::from(chunk[self.label_index]);
            self.check_label(path, record, label)?;
            labels.push(label);
            pixels.extend_from_slice(&chunk[self.label_bytes..]);
        }
        Ok(())
    }

    fn record_count_error(&self, path: &Path, split: Split, found: usize) -> DataError {
        DataError::RecordCount {
            path: path.to_path_buf(),
            dataset: self.dataset,
            split,
            found,
            expected: self.records_per_file(split),
        }
    }

    /// Appends the images and labels of one python (pickle) file.
    fn read_python(
        &self,
        path: &Path,
        split: Split,
        pixels: &mut Vec<u8>,
        labels: &mut Vec<i64>,
    ) -> Result<(), DataError> {
        let bytes =
            fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        let root = pickle::parse(&bytes)
            .map_err(|source| DataError::Pickle { path: path.to_path_buf(), source })?;
        let not_batch = |reason: String| DataError::NotCifarBatch {
            path: path.to_path_buf(),
            dataset: self.dataset,
            reason,
        };

        let key = self.label_key;
        if !matches!(root, Value::Dict(_)) {
            return Err(not_batch(format!(
                "it stores a {}, expected a dict with keys 'data' and '{key}'",
                root.type_name()
            )));
        }
        let missing = |name: &str| {
            not_batch(format!("key '{name}' is missing; keys found: {:?}", root.text_keys()))
        };

        let data = root.get("data").ok_or_else(|| missing("data"))?;
        let Value::Array(array) = data else {
            return Err(not_batch(format!(
                "'data' is a {}, expected a numpy uint8 array",
                data.type_name()
            )));
        };
        let array = array.borrow();
        if array.dtype.descr != "u1" {
            return Err(not_batch(format!(
                "'data' has dtype {}, expected uint8 (u1)",
                array.dtype.descr
            )));
        }
        let [count, IMAGE_BYTES] = array.shape[..] else {
            return Err(not_batch(format!(
                "'data' has shape {:?}, expected (N, {IMAGE_BYTES})",
                array.shape
            )));
        };

        let file_labels = label_list(&root.get(key).ok_or_else(|| missing(key))?)
            .ok_or_else(|| not_batch(format!("'{key}' is not a list of integers")))?;
        if file_labels.len() != count {
            return Err(not_batch(format!(
                "'{key}' has {} labels for {count} images",
                file_labels.len()
            )));
        }
        if count != self.records_per_file(split) {
            return Err(self.record_count_error(path, split, count));
        }
        for (record, &label) in file_labels.iter().enumerate() {
            self.check_label(path, record, label)?;
        }

        labels.extend_from_slice(&file_labels);
        pixels.extend_from_slice(&array.c_order_bytes().expect("u1 has an item size"));
        Ok(())
    }
}

/// Reads a list of ints or a 1-D integer numpy array.
fn label_list(value: &Value) -> Option<Vec<i64>> {
    match value {
        Value::List(items) => items
            .borrow()
            .iter()
            .map(|item| match item {
                Value::Int(v) => Some(*v),
                _ => None,
            })
            .collect(),
        Value::Array(array) => {
            let array = array.borrow();
            if array.shape.len() != 1 {
                return None;
            }
            array.to_i64_vec()
        }
        _ => None,
    }
}

/// Loads `split` of CIFAR-100 or CIFAR-10 (`name`) from `dir`.
pub(super) fn load(name: DatasetName, dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let spec = match name {
        DatasetName::Cifar100 => &CIFAR100,
        DatasetName::Cifar10 => &CIFAR10,
        other => unreachable!("{other} is not a CIFAR dataset"),
    };
    let (folder, format) = spec.locate(dir, split)?;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for file in spec.files(format, split) {
        let path = folder.join(file);
        match format {
            Format::Binary => spec.read_binary(&path, split, &mut pixels, &mut labels)?,
            Format::Python => spec.read_python(&path, split, &mut pixels, &mut labels)?,
        }
    }
    let count = labels.len() as i64;
    Ok(Dataset {
        name,
        images: Tensor::from_data_size(&pixels, &[count, 3, 32, 32], Kind::Uint8),
        labels: Tensor::from_slice(&labels),
        num_classes: spec.num_classes,
        // NOTE: CIFAR-10 uses the CIFAR-100 statistics; its own training-set
        // statistics were not measured here.
        mean: CIFAR100_MEAN,
        std: CIFAR100_STD,
    })
}
