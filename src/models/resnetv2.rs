//! The ImageNet ResNets (He et al., "Deep Residual Learning for Image
//! Recognition", arXiv:1512.03385) adapted to 32×32 inputs as in
//! RepDistiller's `resnetv2.py`: a 3×3 stride-1 stem without max pooling,
//! four stages of widths 64-128-256-512 (times 4 for bottlenecks), global
//! average pooling and `linear`.

use tch::nn;
use tch::Tensor;

use super::layers::{conv2d, BatchNorm2d, Linear, LinearInit, Projection, KAIMING_NORMAL_FAN_OUT};
use super::{ModelOutput, Network};

/// Residual block type of a [`ResNetV2`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// Two 3×3 convolutions (ResNet18, ResNet34).
    Basic,
    /// 1×1, 3×3, 1×1 convolutions with 4× wider output (ResNet50).
    Bottleneck,
}

impl Block {
    /// Ratio of a block's output width to its inner width.
    pub fn expansion(self) -> i64 {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }
}

/// One residual block of either type. The bottleneck's `conv3`/`bn3` are
/// absent in a basic block.
#[derive(Debug)]
struct ResidualBlock {
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    conv2: nn::Conv2D,
    bn2: BatchNorm2d,
    conv3_bn3: Option<(nn::Conv2D, BatchNorm2d)>,
    shortcut: Option<Projection>,
}

impl ResidualBlock {
    fn new(p: nn::Path, block: Block, c_in: i64, width: i64, stride: i64) -> ResidualBlock {
        let c_out = width * block.expansion();
        let shortcut = (stride != 1 || c_in != c_out)
            .then(|| Projection::new(&p / "shortcut", c_in, c_out, stride));
        let init = KAIMING_NORMAL_FAN_OUT;
        match block {
            Block::Basic => ResidualBlock {
                conv1: conv2d(&p / "conv1", c_in, width, 3, stride, 1, init),
                bn1: BatchNorm2d::new(&p / "bn1", width),
                conv2: conv2d(&p / "conv2", width, width, 3, 1, 1, init),
                bn2: BatchNorm2d::new(&p / "bn2", width),
                conv3_bn3: None,
                shortcut,
            },
            Block::Bottleneck => ResidualBlock {
                conv1: conv2d(&p / "conv1", c_in, width, 1, 1, 1, init),
                bn1: BatchNorm2d::new(&p / "bn1", width),
                conv2: conv2d(&p / "conv2", width, width, 3, stride, 1, init),
                bn2: BatchNorm2d::new(&p / "bn2", width),
                conv3_bn3: Some((
                    conv2d(&p / "conv3", width, c_out, 1, 1, 1, init),
                    BatchNorm2d::new(&p / "bn3", c_out),
                )),
                shortcut,
            },
        }
    }

    /// Returns the block output and the residual sum before its final ReLU.
    fn forward_t(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        let mut ys = xs
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.conv2)
            .apply_t(&self.bn2, train);
        if let Some((conv3, bn3)) = &self.conv3_bn3 {
            ys = ys.relu().apply(conv3).apply_t(bn3, train);
        }
        let shortcut = match &self.shortcut {
            Some(projection) => xs.apply_t(projection, train),
            None => xs.shallow_clone(),
        };
        let preact = ys + shortcut;
        (preact.relu(), preact)
    }
}

/// Runs a stage and returns its output and the pre-activation of its last
/// block.
fn stage_forward(blocks: &[ResidualBlock], xs: &Tensor, train: bool) -> (Tensor, Tensor) {
    let (mut ys, mut preact) = blocks[0].forward_t(xs, train);
    for block in &blocks[1..] {
        (ys, preact) = block.forward_t(&ys, train);
    }
    (ys, preact)
}

/// ResNet18/34/50 for 32×32 inputs.
#[derive(Debug)]
pub struct ResNetV2 {
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    layers: [Vec<ResidualBlock>; 4],
    linear: Linear,
}

impl ResNetV2 {
    /// Creates the network with `blocks[i]` blocks in stage i + 1, e.g.
    /// `[2, 2, 2, 2]` basic blocks for ResNet18 or `[3, 4, 6, 3]`
    /// bottlenecks for ResNet50.
    ///
    /// Convolutions are kaiming normal (fan-out), `linear` keeps PyTorch's
    /// default initialisation. RepDistiller's optional zero init of the
    /// last BatchNorm of each block is off in its zoo and absent here.
    ///
    /// # Panics
    ///
    /// If a stage has no block.
    pub fn new(p: &nn::Path, block: Block, blocks: [i64; 4], num_classes: i64) -> ResNetV2 {
        assert!(blocks.iter().all(|&n| n > 0), "every stage needs a block, got {blocks:?}");
        let widths = [64, 128, 256, 512];
        let mut c_in = 64;
        let layers = std::array::from_fn(|stage| {
            let p = p / format!("layer{}", stage + 1);
            let first_stride = if stage == 0 { 1 } else { 2 };
            (0..blocks[stage])
                .map(|i| {
                    let stride = if i == 0 { first_stride } else { 1 };
                    let residual = ResidualBlock::new(&p / i, block, c_in, widths[stage], stride);
                    c_in = widths[stage] * block.expansion();
                    residual
                })
                .collect()
        });
        ResNetV2 {
            conv1: conv2d(p / "conv1", 3, 64, 3, 1, 1, KAIMING_NORMAL_FAN_OUT),
            bn1: BatchNorm2d::new(p / "bn1", 64),
            layers,
            linear: Linear::new(p / "linear", c_in, num_classes, LinearInit::TorchDefault),
        }
    }
}

impl Network for ResNetV2 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> ModelOutput {
        let f0 = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu(); // 32x32
        let (f1, f1_pre) = stage_forward(&self.layers[0], &f0, train); // 32x32
        let (f2, f2_pre) = stage_forward(&self.layers[1], &f1, train); // 16x16
        let (f3, f3_pre) = stage_forward(&self.layers[2], &f2, train); // 8x8
        let (f4, f4_pre) = stage_forward(&self.layers[3], &f3, train); // 4x4
        let f5 = f4.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let logits = f5.apply(&self.linear);
        ModelOutput {
            logits,
            preact_feats: vec![
                f0.shallow_clone(),
                f1_pre,
                f2_pre,
                f3_pre,
                f4_pre,
                f5.shallow_clone(),
            ],
            feats: vec![f0, f1, f2, f3, f4, f5],
        }
    }

    fn classifier(&self) -> (&Tensor, &Tensor) {
        (&self.linear.weight, &self.linear.bias)
    }

    fn feat_dim(&self) -> i64 {
        self.linear.weight.size()[1]
    }
}
