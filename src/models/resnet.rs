//! ResNets for 32×32 inputs with three stages of basic blocks (He et al.,
//! "Deep Residual Learning for Image Recognition", arXiv:1512.03385), as
//! RepDistiller's `resnet.py` defines them: resnet8 to resnet110 with widths
//! 16-16-32-64, and resnet8x4 and resnet32x4 with widths 32-64-128-256.

use tch::nn;
use tch::Tensor;

use super::layers::{conv2d, BatchNorm2d, Linear, LinearInit, Projection, KAIMING_NORMAL_FAN_OUT};
use super::{ModelOutput, Network};

/// Two 3×3 convolutions with an identity or projection shortcut.
#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    conv2: nn::Conv2D,
    bn2: BatchNorm2d,
    downsample: Option<Projection>,
}

impl BasicBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64) -> BasicBlock {
        let downsample = (stride != 1 || c_in != c_out)
            .then(|| Projection::new(&p / "downsample", c_in, c_out, stride));
        BasicBlock {
            conv1: conv2d(&p / "conv1", c_in, c_out, 3, stride, 1, KAIMING_NORMAL_FAN_OUT),
            bn1: BatchNorm2d::new(&p / "bn1", c_out),
            conv2: conv2d(&p / "conv2", c_out, c_out, 3, 1, 1, KAIMING_NORMAL_FAN_OUT),
            bn2: BatchNorm2d::new(&p / "bn2", c_out),
            downsample,
        }
    }

    /// Returns the block output and the residual sum before its final ReLU.
    fn forward_t(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        let ys = xs
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.conv2)
            .apply_t(&self.bn2, train);
        let shortcut = match &self.downsample {
            Some(projection) => xs.apply_t(projection, train),
            None => xs.shallow_clone(),
        };
        let preact = ys + shortcut;
        (preact.relu(), preact)
    }
}

/// Runs a stage and returns its output and the pre-activation of its last
/// block.
fn stage_forward(blocks: &[BasicBlock], xs: &Tensor, train: bool) -> (Tensor, Tensor) {
    let (mut ys, mut preact) = blocks[0].forward_t(xs, train);
    for block in &blocks[1..] {
        (ys, preact) = block.forward_t(&ys, train);
    }
    (ys, preact)
}

/// CIFAR ResNet: a 3×3 stem, three stages of `(depth - 2) / 6` basic blocks
/// (the second and third halve the spatial size), 8×8 average pooling and
/// `fc`.
#[derive(Debug)]
pub struct ResNet {
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    layers: [Vec<BasicBlock>; 3],
    fc: Linear,
}

impl ResNet {
    /// Creates the network of `depth` layers with stem width `widths[0]` and
    /// stage widths `widths[1..]`.
    ///
    /// Convolutions are kaiming normal (fan-out), `fc` keeps PyTorch's
    /// default initialisation.
    ///
    /// # Panics
    ///
    /// If `depth` is not of the form 6n + 2 with n ≥ 1.
    pub fn new(p: &nn::Path, depth: i64, widths: [i64; 4], num_classes: i64) -> ResNet {
        assert!(
            depth >= 8 && (depth - 2) % 6 == 0,
            "invalid CIFAR ResNet depth {depth}: expected 6n + 2, e.g. 8, 20, 56 or 110"
        );
        let blocks = (depth - 2) / 6;
        let stage = |index: usize, stride: i64| {
            let p = p / format!("layer{}", index + 1);
            let (c_in, c_out) = (widths[index], widths[index + 1]);
            (0..blocks)
                .map(|i| {
                    let (c_in, stride) = if i == 0 { (c_in, stride) } else { (c_out, 1) };
                    BasicBlock::new(&p / i, c_in, c_out, stride)
                })
                .collect::<Vec<_>>()
        };
        ResNet {
            conv1: conv2d(p / "conv1", 3, widths[0], 3, 1, 1, KAIMING_NORMAL_FAN_OUT),
            bn1: BatchNorm2d::new(p / "bn1", widths[0]),
            layers: [stage(0, 1), stage(1, 2), stage(2, 2)],
            fc: Linear::new(p / "fc", widths[3], num_classes, LinearInit::TorchDefault),
        }
    }
}

impl Network for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> ModelOutput {
        let f0 = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu(); // 32x32
        let (f1, f1_pre) = stage_forward(&self.layers[0], &f0, train); // 32x32
        let (f2, f2_pre) = stage_forward(&self.layers[1], &f1, train); // 16x16
        let (f3, f3_pre) = stage_forward(&self.layers[2], &f2, train); // 8x8
        let f4 = f3.avg_pool2d([8, 8], [8, 8], [0, 0], false, true, None).flatten(1, -1);
        let logits = f4.apply(&self.fc);
        ModelOutput {
            logits,
            preact_feats: vec![f0.shallow_clone(), f1_pre, f2_pre, f3_pre, f4.shallow_clone()],
            feats: vec![f0, f1, f2, f3, f4],
        }
    }

    fn classifier(&self) -> (&Tensor, &Tensor) {
        (&self.fc.weight, &self.fc.bias)
    }

    fn feat_dim(&self) -> i64 {
        self.fc.weight.size()[1]
    }
}
