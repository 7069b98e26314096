//! Facts about zoo models and datasets that the planner needs before any
//! network is built or any file is read: feature widths, a rough compute cost
//! per model, and dataset sizes and file locations.

use std::path::Path;

use crate::data::DatasetName;
use crate::models::Arch;

/// Returns the width of `arch`'s pooled penultimate feature, as listed for the
/// RepDistiller definitions with 100 classes.
pub fn pooled_width(arch: Arch) -> i64 {
    match arch {
        Arch::Resnet8
        | Arch::Resnet14
        | Arch::Resnet20
        | Arch::Resnet32
        | Arch::Resnet44
        | Arch::Resnet56
        | Arch::Resnet110
        | Arch::Wrn16_1
        | Arch::Wrn40_1 => 64,
        Arch::Wrn16_2 | Arch::Wrn40_2 => 128,
        Arch::Resnet8x4 | Arch::Resnet32x4 => 256,
        Arch::Vgg8 | Arch::Vgg11 | Arch::Vgg13 | Arch::Vgg16 | Arch::Vgg19 => 512,
        Arch::ResNet18 | Arch::ResNet34 => 512,
        Arch::ResNet50 => 2048,
        Arch::MobileNetV2 => 1280,
        Arch::ShuffleV1 => 960,
        Arch::ShuffleV2 => 1024,
    }
}

/// Returns an estimate of the multiply-accumulates (millions) of one forward
/// pass of one 32×32 image through `arch`.
///
/// The numbers are hand counts of the convolutions of the RepDistiller
/// definitions (e.g. resnet20 41, resnet8x4 177, vgg13 228); they are rough for
/// the depthwise networks, which also run slower per multiply on a CPU. They
/// only scale the dry-run's time estimate.
pub fn forward_mmacs(arch: Arch) -> f64 {
    match arch {
        Arch::Resnet8 => 12.0,
        Arch::Resnet14 => 26.0,
        Arch::Resnet20 => 41.0,
        Arch::Resnet32 => 70.0,
        Arch::Resnet44 => 98.0,
        Arch::Resnet56 => 126.0,
        Arch::Resnet110 => 254.0,
        Arch::Resnet8x4 => 177.0,
        Arch::Resnet32x4 => 1083.0,
        Arch::Wrn16_1 => 27.0,
        Arch::Wrn16_2 => 101.0,
        Arch::Wrn40_1 => 83.0,
        Arch::Wrn40_2 => 327.0,
        Arch::Vgg8 => 68.0,
        Arch::Vgg11 => 153.0,
        Arch::Vgg13 => 228.0,
        Arch::Vgg16 => 313.0,
        Arch::Vgg19 => 398.0,
        Arch::ResNet18 => 557.0,
        Arch::ResNet34 => 1160.0,
        Arch::ResNet50 => 1300.0,
        Arch::MobileNetV2 => 7.0,
        Arch::ShuffleV1 => 40.0,
        Arch::ShuffleV2 => 46.0,
    }
}

/// Sizes of a dataset's splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatasetSize {
    pub train: usize,
    pub test: usize,
    pub classes: usize,
}

/// Returns the split sizes of `dataset`.
pub fn dataset_size(dataset: DatasetName) -> DatasetSize {
    match dataset {
        DatasetName::Cifar100 => DatasetSize { train: 50_000, test: 10_000, classes: 100 },
        DatasetName::Cifar10 => DatasetSize { train: 50_000, test: 10_000, classes: 10 },
        DatasetName::FashionMnist => DatasetSize { train: 60_000, test: 10_000, classes: 10 },
        // NOTE: these sizes are the planner's assumption about the synthetic
        // generator and must follow it. Profiles that use it set `subset`,
        // which replaces `train`.
        DatasetName::Synthetic => DatasetSize { train: 1_024, test: 256, classes: 10 },
    }
}

/// Returns the number of negatives that exact sampling can draw from a
/// training set of `train` class-balanced images: the images of other classes.
pub fn negatives_pool(train: usize, classes: usize) -> usize {
    train - train / classes.max(1)
}

/// Returns why `dataset` cannot be read from its folder `data_dir`, with how
/// to get it, or `None` when its files are there.
pub fn missing_dataset(dataset: DatasetName, data_dir: &Path) -> Option<String> {
    // Reading the test split runs the loader's own detection and checks, and
    // costs well under a second for every supported dataset.
    crate::data::load(dataset, data_dir, crate::data::Split::Test).err().map(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negatives_pool_leaves_out_own_class() {
        assert_eq!(negatives_pool(2_000, 10), 1_800);
        assert_eq!(negatives_pool(50_000, 100), 49_500);
    }

    #[test]
    fn missing_dataset_names_fix() {
        let dir = tempfile::tempdir().unwrap();
        let fashion = missing_dataset(DatasetName::FashionMnist, dir.path()).unwrap();
        assert!(fashion.contains("scripts/setup"), "{fashion}");
        let cifar = missing_dataset(DatasetName::Cifar100, dir.path()).unwrap();
        assert!(cifar.contains("--data-dir"), "{cifar}");
        assert!(cifar.contains("cifar.html"), "{cifar}");
        assert_eq!(missing_dataset(DatasetName::Synthetic, dir.path()), None);
    }

    #[test]
    fn synthetic_data_needs_no_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(missing_dataset(DatasetName::Synthetic, dir.path()), None);
    }
}
