//! ShuffleNet (Zhang et al., "ShuffleNet: An Extremely Efficient
//! Convolutional Neural Network for Mobile Devices", arXiv:1707.01083) as
//! RepDistiller's `ShuffleNetv1.py` defines it for 32×32 inputs. Its zoo
//! entry `ShuffleV1` has 3 groups, stage widths 240-480-960 and 4, 8 and 4
//! units. Every layer keeps PyTorch's default initialisation.

use tch::nn;
use tch::Tensor;

use super::layers::{channel_shuffle, conv2d, BatchNorm2d, Linear, LinearInit, TORCH_DEFAULT};
use super::{ModelOutput, Network};

/// Width of the 1×1 stem. RepDistiller recognises a stage's first unit by
/// this input width and gives its first convolution a single group.
const STEM_WIDTH: i64 = 24;

/// ShuffleNet unit: grouped 1×1 convolution, channel shuffle, 3×3 depthwise
/// convolution, grouped 1×1 convolution. A stride-2 unit concatenates a 3×3
/// average pooling of its input, a stride-1 unit adds the input.
#[derive(Debug)]
struct ShuffleUnit {
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    conv2: nn::Conv2D,
    bn2: BatchNorm2d,
    conv3: nn::Conv2D,
    bn3: BatchNorm2d,
    /// Groups of `conv1`, which is also the shuffle's group count.
    conv1_groups: i64,
    stride: i64,
}

impl ShuffleUnit {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64, groups: i64) -> ShuffleUnit {
        let mid = c_out / 4;
        let conv1_groups = if c_in == STEM_WIDTH { 1 } else { groups };
        ShuffleUnit {
            conv1: conv2d(&p / "conv1", c_in, mid, 1, 1, conv1_groups, TORCH_DEFAULT),
            bn1: BatchNorm2d::new(&p / "bn1", mid),
            conv2: conv2d(&p / "conv2", mid, mid, 3, stride, mid, TORCH_DEFAULT),
            bn2: BatchNorm2d::new(&p / "bn2", mid),
            conv3: conv2d(&p / "conv3", mid, c_out, 1, 1, groups, TORCH_DEFAULT),
            bn3: BatchNorm2d::new(&p / "bn3", c_out),
            conv1_groups,
            stride,
        }
    }

    /// Returns the unit output and the sum or concatenation before its
    /// final ReLU.
    fn forward_t(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        let ys = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        let ys = channel_shuffle(&ys, self.conv1_groups)
            .apply(&self.conv2)
            .apply_t(&self.bn2, train)
            .relu()
            .apply(&self.conv3)
            .apply_t(&self.bn3, train);
        let preact = if self.stride == 2 {
            let pooled = xs.avg_pool2d([3, 3], [2, 2], [1, 1], false, true, None);
            Tensor::cat(&[ys, pooled], 1)
        } else {
            ys + xs
        };
        (preact.relu(), preact)
    }
}

/// ShuffleNet for 32×32 inputs: a 1×1 stem, three stages that each start
/// with a stride-2 unit, 4×4 average pooling and `linear`.
#[derive(Debug)]
pub struct ShuffleNetV1 {
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    layers: [Vec<ShuffleUnit>; 3],
    linear: Linear,
}

impl ShuffleNetV1 {
    /// Creates the network with `num_blocks[i]` units of output width
    /// `out_planes[i]` in stage i + 1 and `groups` groups in the 1×1
    /// convolutions.
    ///
    /// # Panics
    ///
    /// If a stage has no unit.
    pub fn new(
        p: &nn::Path,
        out_planes: [i64; 3],
        num_blocks: [i64; 3],
        groups: i64,
        num_classes: i64,
    ) -> ShuffleNetV1 {
        assert!(num_blocks.iter().all(|&n| n > 0), "every stage needs a unit, got {num_blocks:?}");
        let mut c_in = STEM_WIDTH;
        let layers = std::array::from_fn(|stage| {
            let p = p / format!("layer{}", stage + 1);
            let width = out_planes[stage];
            (0..num_blocks[stage])
                .map(|i| {
                    // The first unit halves the spatial size and concatenates
                    // its pooled input, so its branch adds only the missing
                    // channels.
                    let unit = if i == 0 {
                        ShuffleUnit::new(&p / i, c_in, width - c_in, 2, groups)
                    } else {
                        ShuffleUnit::new(&p / i, width, width, 1, groups)
                    };
                    c_in = width;
                    unit
                })
                .collect()
        });
        ShuffleNetV1 {
            conv1: conv2d(p / "conv1", 3, STEM_WIDTH, 1, 1, 1, TORCH_DEFAULT),
            bn1: BatchNorm2d::new(p / "bn1", STEM_WIDTH),
            layers,
            linear: Linear::new(p / "linear", out_planes[2], num_classes, LinearInit::TorchDefault),
        }
    }

    fn stage_forward(&self, stage: usize, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        let units = &self.layers[stage];
        let (mut ys, mut preact) = units[0].forward_t(xs, train);
        for unit in &units[1..] {
            (ys, preact) = unit.forward_t(&ys, train);
        }
        (ys, preact)
    }
}

impl Network for ShuffleNetV1 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> ModelOutput {
        let f0 = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu(); // 32x32
        let (f1, f1_pre) = self.stage_forward(0, &f0, train); // 16x16
        let (f2, f2_pre) = self.stage_forward(1, &f1, train); // 8x8
        let (f3, f3_pre) = self.stage_forward(2, &f2, train); // 4x4
        let f4 = f3.avg_pool2d([4, 4], [4, 4], [0, 0], false, true, None).flatten(1, -1);
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
