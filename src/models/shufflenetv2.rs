//! ShuffleNet V2 (Ma et al., "ShuffleNet V2: Practical Guidelines for
//! Efficient CNN Architecture Design", arXiv:1807.11164) as RepDistiller's
//! `ShuffleNetv2.py` defines it for 32×32 inputs. Its zoo entry `ShuffleV2`
//! is the 1× network: stage widths 116-232-464, 3, 7 and 3 basic units
//! after each down-sampling unit, and a 1024-wide last convolution. Every
//! layer keeps PyTorch's default initialisation.

use tch::nn;
use tch::Tensor;

use super::layers::{channel_shuffle, conv2d, BatchNorm2d, Linear, LinearInit, TORCH_DEFAULT};
use super::{ModelOutput, Network};

/// Width of the 1×1 stem.
const STEM_WIDTH: i64 = 24;

/// Convolution without bias followed by BatchNorm, under `conv{index}` and
/// `bn{index}`.
#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    bn: BatchNorm2d,
}

impl ConvBn {
    fn new(
        p: &nn::Path,
        index: u8,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        groups: i64,
    ) -> ConvBn {
        ConvBn {
            conv: conv2d(p / format!("conv{index}"), c_in, c_out, k, stride, groups, TORCH_DEFAULT),
            bn: BatchNorm2d::new(p / format!("bn{index}"), c_out),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train)
    }
}

/// Basic unit: the first half of the channels passes through unchanged and
/// the second goes through 1×1, 3×3 depthwise and 1×1 convolutions. The
/// halves are then concatenated and shuffled in two groups.
#[derive(Debug)]
struct BasicUnit {
    branch: [ConvBn; 3],
}

impl BasicUnit {
    fn new(p: nn::Path, channels: i64) -> BasicUnit {
        let half = channels / 2;
        BasicUnit {
            branch: [
                ConvBn::new(&p, 1, half, half, 1, 1, 1),
                ConvBn::new(&p, 2, half, half, 3, 1, half),
                ConvBn::new(&p, 3, half, half, 1, 1, 1),
            ],
        }
    }

    /// Returns the unit output and the concatenation before the branch's
    /// last ReLU, unshuffled as RepDistiller returns it.
    fn forward_t(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        let half = xs.size()[1] / 2;
        let passed = xs.narrow(1, 0, half);
        let branch_in = xs.narrow(1, half, xs.size()[1] - half);
        let ys = self.branch[0].forward_t(&branch_in, train).relu();
        let ys = self.branch[1].forward_t(&ys, train);
        let pre = self.branch[2].forward_t(&ys, train);
        let out = Tensor::cat(&[&passed, &pre.relu()], 1);
        let preact = Tensor::cat(&[&passed, &pre], 1);
        (channel_shuffle(&out, 2), preact)
    }
}

/// Down-sampling unit: two stride-2 branches on the whole input, each
/// `c_out / 2` wide, concatenated and shuffled in two groups. The left branch
/// is a 3×3 depthwise then a 1×1 convolution (`conv1`, `conv2`), the right
/// one 1×1, 3×3 depthwise, 1×1 (`conv3` to `conv5`).
#[derive(Debug)]
struct DownUnit {
    left: [ConvBn; 2],
    right: [ConvBn; 3],
}

impl DownUnit {
    fn new(p: nn::Path, c_in: i64, c_out: i64) -> DownUnit {
        let mid = c_out / 2;
        DownUnit {
            left: [
                ConvBn::new(&p, 1, c_in, c_in, 3, 2, c_in),
                ConvBn::new(&p, 2, c_in, mid, 1, 1, 1),
            ],
            right: [
                ConvBn::new(&p, 3, c_in, mid, 1, 1, 1),
                ConvBn::new(&p, 4, mid, mid, 3, 2, mid),
                ConvBn::new(&p, 5, mid, mid, 1, 1, 1),
            ],
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let left = self.left[0].forward_t(xs, train);
        let left = self.left[1].forward_t(&left, train).relu();
        let right = self.right[0].forward_t(xs, train).relu();
        let right = self.right[1].forward_t(&right, train);
        let right = self.right[2].forward_t(&right, train).relu();
        channel_shuffle(&Tensor::cat(&[left, right], 1), 2)
    }
}

/// One stage: a down-sampling unit (`layerN.0`) then basic units
/// (`layerN.1` onwards).
#[derive(Debug)]
struct Stage {
    down: DownUnit,
    units: Vec<BasicUnit>,
}

impl Stage {
    /// Returns the stage output and the pre-activation of its last unit.
    fn forward_t(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        let mut ys = self.down.forward_t(xs, train);
        let mut preact = None;
        for unit in &self.units {
            let (out, pre) = unit.forward_t(&ys, train);
            ys = out;
            preact = Some(pre);
        }
        (ys, preact.expect("every stage has a basic unit"))
    }
}

/// ShuffleNet V2 for 32×32 inputs: a 1×1 stem, three stages, a 1×1
/// convolution (`conv2`), 4×4 average pooling and `linear`.
#[derive(Debug)]
pub struct ShuffleNetV2 {
    stem: ConvBn,
    layers: [Stage; 3],
    last: ConvBn,
    linear: Linear,
}

impl ShuffleNetV2 {
    /// Creates the network with stage widths `out_channels[..3]`, last
    /// convolution width `out_channels[3]` and `num_blocks[i]` basic units
    /// after the down-sampling unit of stage i + 1.
    ///
    /// # Panics
    ///
    /// If a stage has no basic unit.
    pub fn new(
        p: &nn::Path,
        out_channels: [i64; 4],
        num_blocks: [i64; 3],
        num_classes: i64,
    ) -> ShuffleNetV2 {
        assert!(
            num_blocks.iter().all(|&n| n > 0),
            "every stage needs a basic unit, got {num_blocks:?}"
        );
        let mut c_in = STEM_WIDTH;
        let layers = std::array::from_fn(|stage| {
            let p = p / format!("layer{}", stage + 1);
            let width = out_channels[stage];
            let down = DownUnit::new(&p / 0, c_in, width);
            c_in = width;
            let units = (1..=num_blocks[stage]).map(|i| BasicUnit::new(&p / i, width)).collect();
            Stage { down, units }
        });
        ShuffleNetV2 {
            stem: ConvBn::new(p, 1, 3, STEM_WIDTH, 1, 1, 1),
            layers,
            last: ConvBn::new(p, 2, out_channels[2], out_channels[3], 1, 1, 1),
            linear: Linear::new(
                p / "linear",
                out_channels[3],
                num_classes,
                LinearInit::TorchDefault,
            ),
        }
    }
}

impl Network for ShuffleNetV2 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> ModelOutput {
        let f0 = self.stem.forward_t(xs, train).relu(); // 32x32
        let (f1, f1_pre) = self.layers[0].forward_t(&f0, train); // 16x16
        let (f2, f2_pre) = self.layers[1].forward_t(&f1, train); // 8x8
        let (f3, f3_pre) = self.layers[2].forward_t(&f2, train); // 4x4
        let f4 = self
            .last
            .forward_t(&f3, train)
            .relu()
            .avg_pool2d([4, 4], [4, 4], [0, 0], false, true, None)
            .flatten(1, -1);
        let logits = f4.apply(&self.linear);
        ModelOutput {
            logits,
            preact_feats: vec![f0.shallow_clone(), f1_pre, f2_pre, f3_pre, f4.shallow_clone()],
            feats: vec![f0, f1, f2, f3, f4],
        }
    }

    fn classifier(&self) -> (&Tensor, &Tensor) {
        (&self.linear.weight, &self.linear.bias)
    }

    fn feat_dim(&self) -> i64 {
        self.linear.weight.size()[1]
    }
}
