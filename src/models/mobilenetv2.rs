//! MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
//! Bottlenecks", arXiv:1801.04381) as RepDistiller's `mobilenetv2.py`
//! defines it for 32×32 inputs. Its zoo entry `MobileNetV2` is
//! `mobile_half`: expansion ratio 6 and width multiplier 0.5.

use tch::nn;
use tch::Tensor;

use super::layers::{conv2d, BatchNorm2d, Linear, LinearInit, KAIMING_NORMAL_FAN_OUT};
use super::{ModelOutput, Network};

/// Output width, number of blocks and first stride of the seven stages. The
/// expansion ratio is 1 in the first stage and the network's ratio elsewhere.
const STAGES: [(i64, i64, i64); 7] =
    [(16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)];

/// Convolution without bias followed by BatchNorm, stored as the
/// `nn.Sequential` entries `conv_index` and `conv_index + 1`.
#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    bn: BatchNorm2d,
}

impl ConvBn {
    fn new(
        p: &nn::Path,
        conv_index: usize,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        groups: i64,
    ) -> ConvBn {
        ConvBn {
            conv: conv2d(p / conv_index, c_in, c_out, k, stride, groups, KAIMING_NORMAL_FAN_OUT),
            bn: BatchNorm2d::new(p / (conv_index + 1), c_out),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train)
    }
}

/// Inverted residual: 1×1 expansion, 3×3 depthwise convolution, linear 1×1
/// projection (`conv.0` to `conv.7`, ReLUs at 2 and 5), with an identity
/// shortcut when the stride is 1 and the width is unchanged. The expansion
/// convolution is present even at ratio 1, unlike torchvision's version.
#[derive(Debug)]
struct InvertedResidual {
    expand: ConvBn,
    depthwise: ConvBn,
    project: ConvBn,
    use_shortcut: bool,
}

impl InvertedResidual {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64, expand_ratio: i64) -> InvertedResidual {
        let p = &p / "conv";
        let hidden = c_in * expand_ratio;
        InvertedResidual {
            expand: ConvBn::new(&p, 0, c_in, hidden, 1, 1, 1),
            depthwise: ConvBn::new(&p, 3, hidden, hidden, 3, stride, hidden),
            project: ConvBn::new(&p, 6, hidden, c_out, 1, 1, 1),
            use_shortcut: stride == 1 && c_in == c_out,
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = self.expand.forward_t(xs, train).relu();
        let ys = self.depthwise.forward_t(&ys, train).relu();
        let ys = self.project.forward_t(&ys, train);
        if self.use_shortcut {
            xs + ys
        } else {
            ys
        }
    }
}

/// MobileNetV2 for 32×32 inputs: a stride-2 3×3 stem, seven stages of
/// inverted residuals (`blocks.0` to `blocks.6`), a 1×1 convolution to 1280
/// channels, 2×2 average pooling and `classifier.0`.
#[derive(Debug)]
pub struct MobileNetV2 {
    conv1: ConvBn,
    blocks: Vec<Vec<InvertedResidual>>,
    conv2: ConvBn,
    classifier: Linear,
}

impl MobileNetV2 {
    /// Creates the network with expansion ratio `expand_ratio` and every
    /// width but the last multiplied by `width_mult` (rounded down); the
    /// last width is 1280, or `1280 * width_mult` when `width_mult` > 1.
    ///
    /// Convolutions are normal with std `sqrt(2 / (k * k * c_out))`, the
    /// classifier normal with std 0.01 and zero bias, as in RepDistiller.
    pub fn new(p: &nn::Path, expand_ratio: i64, width_mult: f64, num_classes: i64) -> MobileNetV2 {
        let scale = |c: i64| (c as f64 * width_mult) as i64;
        let mut c_in = scale(32);
        let conv1 = ConvBn::new(&(p / "conv1"), 0, 3, c_in, 3, 2, 1);
        let blocks = STAGES
            .iter()
            .enumerate()
            .map(|(stage, &(c, n, first_stride))| {
                let p = p / "blocks" / stage;
                let ratio = if stage == 0 { 1 } else { expand_ratio };
                (0..n)
                    .map(|i| {
                        let stride = if i == 0 { first_stride } else { 1 };
                        let block = InvertedResidual::new(&p / i, c_in, scale(c), stride, ratio);
                        c_in = scale(c);
                        block
                    })
                    .collect()
            })
            .collect();
        let last_channel = if width_mult > 1.0 { scale(1280) } else { 1280 };
        MobileNetV2 {
            conv1,
            blocks,
            conv2: ConvBn::new(&(p / "conv2"), 0, c_in, last_channel, 1, 1, 1),
            classifier: Linear::new(
                p / "classifier" / 0,
                last_channel,
                num_classes,
                LinearInit::Normal001,
            ),
        }
    }

    fn stage_forward(&self, stage: usize, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.shallow_clone();
        for block in &self.blocks[stage] {
            ys = block.forward_t(&ys, train);
        }
        ys
    }
}

impl Network for MobileNetV2 {
    /// RepDistiller's MobileNetV2 ignores `preact=True`: every stage ends in
    /// a linear projection, so `preact_feats` equals `feats`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> ModelOutput {
        let f0 = self.conv1.forward_t(xs, train).relu(); // 16x16
        let ys = self.stage_forward(0, &f0, train);
        let f1 = self.stage_forward(1, &ys, train); // 16x16
        let f2 = self.stage_forward(2, &f1, train); // 8x8
        let ys = self.stage_forward(3, &f2, train);
        let f3 = self.stage_forward(4, &ys, train); // 4x4
        let ys = self.stage_forward(5, &f3, train);
        let f4 = self.stage_forward(6, &ys, train); // 2x2
                                                    // RepDistiller's pooling is fixed at construction for 32×32 inputs: a
                                                    // 2×2 window with ceil mode, which covers the whole 2×2 map.
        let f5 = self
            .conv2
            .forward_t(&f4, train)
            .relu()
            .avg_pool2d([2, 2], [2, 2], [0, 0], true, true, None)
            .flatten(1, -1);
        let logits = f5.apply(&self.classifier);
        let feats = vec![f0, f1, f2, f3, f4, f5];
        ModelOutput {
            logits,
            preact_feats: feats.iter().map(Tensor::shallow_clone).collect(),
            feats,
        }
    }

    fn classifier(&self) -> (&Tensor, &Tensor) {
        (&self.classifier.weight, &self.classifier.bias)
    }

    fn feat_dim(&self) -> i64 {
        self.classifier.weight.size()[1]
    }
}
