//! The CIFAR model zoo of RepDistiller (github.com/HobbitLong/RepDistiller),
//! with variable names equal to its PyTorch `state_dict` keys.

pub mod layers;
pub mod mobilenetv2;
pub mod resnet;
pub mod resnetv2;
pub mod shufflenetv1;
pub mod shufflenetv2;
pub mod vgg;
pub mod wrn;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// Output of one forward pass.
#[derive(Debug)]
pub struct ModelOutput {
    /// Raw logits, (B, num_classes).
    pub logits: Tensor,
    /// Per-stage features as RepDistiller returns them with `is_feat=True`;
    /// the last one is the pooled penultimate feature (B, d) that feeds the
    /// linear classifier.
    pub feats: Vec<Tensor>,
    /// The same stages taken before their last ReLU (`preact=True`); the last
    /// entry equals the last entry of `feats`.
    pub preact_feats: Vec<Tensor>,
}

impl ModelOutput {
    /// Returns the pooled penultimate feature, (B, d).
    pub fn pooled(&self) -> &Tensor {
        self.feats.last().expect("every zoo model returns at least one feature")
    }
}

/// A zoo network.
pub trait Network: fmt::Debug + Send {
    /// Runs the network on (B, 3, 32, 32) normalised images. `train` selects
    /// batch statistics (and updates the running ones) in BatchNorm.
    fn forward_t(&self, xs: &Tensor, train: bool) -> ModelOutput;

    /// Returns the final linear classifier's weight (num_classes, d) and bias
    /// (num_classes,).
    fn classifier(&self) -> (&Tensor, &Tensor);

    /// Returns the width d of the pooled penultimate feature.
    fn feat_dim(&self) -> i64;
}

/// Architecture name, spelled as RepDistiller's `model_dict` keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "resnet8")]
    Resnet8,
    #[serde(rename = "resnet14")]
    Resnet14,
    #[serde(rename = "resnet20")]
    Resnet20,
    #[serde(rename = "resnet32")]
    Resnet32,
    #[serde(rename = "resnet44")]
    Resnet44,
    #[serde(rename = "resnet56")]
    Resnet56,
    #[serde(rename = "resnet110")]
    Resnet110,
    #[serde(rename = "resnet8x4")]
    Resnet8x4,
    #[serde(rename = "resnet32x4")]
    Resnet32x4,
    #[serde(rename = "wrn_16_1")]
    Wrn16_1,
    #[serde(rename = "wrn_16_2")]
    Wrn16_2,
    #[serde(rename = "wrn_40_1")]
    Wrn40_1,
    #[serde(rename = "wrn_40_2")]
    Wrn40_2,
    #[serde(rename = "vgg8")]
    Vgg8,
    #[serde(rename = "vgg11")]
    Vgg11,
    #[serde(rename = "vgg13")]
    Vgg13,
    #[serde(rename = "vgg16")]
    Vgg16,
    #[serde(rename = "vgg19")]
    Vgg19,
    ResNet18,
    ResNet34,
    ResNet50,
    MobileNetV2,
    ShuffleV1,
    ShuffleV2,
}

impl Arch {
    /// Every architecture, in the order of the zoo listing.
    pub const ALL: [Arch; 24] = [
        Arch::Resnet8,
        Arch::Resnet14,
        Arch::Resnet20,
        Arch::Resnet32,
        Arch::Resnet44,
        Arch::Resnet56,
        Arch::Resnet110,
        Arch::Resnet8x4,
        Arch::Resnet32x4,
        Arch::Wrn16_1,
        Arch::Wrn16_2,
        Arch::Wrn40_1,
        Arch::Wrn40_2,
        Arch::Vgg8,
        Arch::Vgg11,
        Arch::Vgg13,
        Arch::Vgg16,
        Arch::Vgg19,
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
        Arch::MobileNetV2,
        Arch::ShuffleV1,
        Arch::ShuffleV2,
    ];

    /// Returns the RepDistiller name, e.g. `wrn_40_2` or `MobileNetV2`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet8 => "resnet8",
            Arch::Resnet14 => "resnet14",
            Arch::Resnet20 => "resnet20",
            Arch::Resnet32 => "resnet32",
            Arch::Resnet44 => "resnet44",
            Arch::Resnet56 => "resnet56",
            Arch::Resnet110 => "resnet110",
            Arch::Resnet8x4 => "resnet8x4",
            Arch::Resnet32x4 => "resnet32x4",
            Arch::Wrn16_1 => "wrn_16_1",
            Arch::Wrn16_2 => "wrn_16_2",
            Arch::Wrn40_1 => "wrn_40_1",
            Arch::Wrn40_2 => "wrn_40_2",
            Arch::Vgg8 => "vgg8",
            Arch::Vgg11 => "vgg11",
            Arch::Vgg13 => "vgg13",
            Arch::Vgg16 => "vgg16",
            Arch::Vgg19 => "vgg19",
            Arch::ResNet18 => "ResNet18",
            Arch::ResNet34 => "ResNet34",
            Arch::ResNet50 => "ResNet50",
            Arch::MobileNetV2 => "MobileNetV2",
            Arch::ShuffleV1 => "ShuffleV1",
            Arch::ShuffleV2 => "ShuffleV2",
        }
    }

    /// Returns the protocol's initial learning rate: 0.01 for MobileNetV2,
    /// ShuffleV1 and ShuffleV2, 0.05 for the rest.
    pub fn default_lr(self) -> f64 {
        match self {
            Arch::MobileNetV2 | Arch::ShuffleV1 | Arch::ShuffleV2 => 0.01,
            _ => 0.05,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An architecture name that is not in the zoo.
#[derive(Debug, thiserror::Error)]
#[error("unknown model '{0}': expected one of {names}", names = Arch::ALL.map(Arch::name).join(", "))]
pub struct UnknownArch(pub String);

impl FromStr for Arch {
    type Err = UnknownArch;

    fn from_str(s: &str) -> Result<Arch, UnknownArch> {
        Arch::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| UnknownArch(s.to_owned()))
    }
}

/// Builds `arch` with its variables under `p`, named as the PyTorch keys.
///
/// Each model is initialised as its PyTorch definition does it (see the
/// constructor of its family), from the global RNG, so the result depends
/// only on the seed set with `tch::manual_seed`.
pub fn build(arch: Arch, p: &nn::Path, num_classes: i64) -> Box<dyn Network> {
    use resnetv2::Block;

    // Stem and stage widths of the CIFAR ResNets.
    const CIFAR: [i64; 4] = [16, 16, 32, 64];
    const CIFAR_X4: [i64; 4] = [32, 64, 128, 256];
    match arch {
        Arch::Resnet8 => Box::new(resnet::ResNet::new(p, 8, CIFAR, num_classes)),
        Arch::Resnet14 => Box::new(resnet::ResNet::new(p, 14, CIFAR, num_classes)),
        Arch::Resnet20 => Box::new(resnet::ResNet::new(p, 20, CIFAR, num_classes)),
        Arch::Resnet32 => Box::new(resnet::ResNet::new(p, 32, CIFAR, num_classes)),
        Arch::Resnet44 => Box::new(resnet::ResNet::new(p, 44, CIFAR, num_classes)),
        Arch::Resnet56 => Box::new(resnet::ResNet::new(p, 56, CIFAR, num_classes)),
        Arch::Resnet110 => Box::new(resnet::ResNet::new(p, 110, CIFAR, num_classes)),
        Arch::Resnet8x4 => Box::new(resnet::ResNet::new(p, 8, CIFAR_X4, num_classes)),
        Arch::Resnet32x4 => Box::new(resnet::ResNet::new(p, 32, CIFAR_X4, num_classes)),
        Arch::Wrn16_1 => Box::new(wrn::WideResNet::new(p, 16, 1, num_classes)),
        Arch::Wrn16_2 => Box::new(wrn::WideResNet::new(p, 16, 2, num_classes)),
        Arch::Wrn40_1 => Box::new(wrn::WideResNet::new(p, 40, 1, num_classes)),
        Arch::Wrn40_2 => Box::new(wrn::WideResNet::new(p, 40, 2, num_classes)),
        Arch::Vgg8 => Box::new(vgg::Vgg::new(p, 8, num_classes)),
        Arch::Vgg11 => Box::new(vgg::Vgg::new(p, 11, num_classes)),
        Arch::Vgg13 => Box::new(vgg::Vgg::new(p, 13, num_classes)),
        Arch::Vgg16 => Box::new(vgg::Vgg::new(p, 16, num_classes)),
        Arch::Vgg19 => Box::new(vgg::Vgg::new(p, 19, num_classes)),
        Arch::ResNet18 => {
            Box::new(resnetv2::ResNetV2::new(p, Block::Basic, [2, 2, 2, 2], num_classes))
        }
        Arch::ResNet34 => {
            Box::new(resnetv2::ResNetV2::new(p, Block::Basic, [3, 4, 6, 3], num_classes))
        }
        Arch::ResNet50 => {
            Box::new(resnetv2::ResNetV2::new(p, Block::Bottleneck, [3, 4, 6, 3], num_classes))
        }
        Arch::MobileNetV2 => Box::new(mobilenetv2::MobileNetV2::new(p, 6, 0.5, num_classes)),
        Arch::ShuffleV1 => {
            Box::new(shufflenetv1::ShuffleNetV1::new(p, [240, 480, 960], [4, 8, 4], 3, num_classes))
        }
        Arch::ShuffleV2 => Box::new(shufflenetv2::ShuffleNetV2::new(
            p,
            [116, 232, 464, 1024],
            [3, 7, 3],
            num_classes,
        )),
    }
}
