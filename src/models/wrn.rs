//! Wide residual networks (Zagoruyko and Komodakis, "Wide Residual Networks",
//! arXiv:1605.07146) as RepDistiller's `wrn.py` defines them: pre-activation
//! blocks, three stages of widths 16k-32k-64k, no dropout.

use tch::nn;
use tch::Tensor;

use super::layers::{conv2d, BatchNorm2d, Linear, LinearInit, KAIMING_NORMAL_FAN_OUT};
use super::{ModelOutput, Network};

/// Pre-activation block: BN, ReLU, 3×3 convolution, BN, ReLU, 3×3
/// convolution, plus the input or, when the width or stride changes, a 1×1
/// projection of the activated input (`convShortcut`).
#[derive(Debug)]
struct WideBlock {
    bn1: BatchNorm2d,
    conv1: nn::Conv2D,
    bn2: BatchNorm2d,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
}

impl WideBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64) -> WideBlock {
        let init = KAIMING_NORMAL_FAN_OUT;
        // RepDistiller projects exactly when the widths differ.
        let conv_shortcut =
            (c_in != c_out).then(|| conv2d(&p / "convShortcut", c_in, c_out, 1, stride, 1, init));
        WideBlock {
            bn1: BatchNorm2d::new(&p / "bn1", c_in),
            conv1: conv2d(&p / "conv1", c_in, c_out, 3, stride, 1, init),
            bn2: BatchNorm2d::new(&p / "bn2", c_out),
            conv2: conv2d(&p / "conv2", c_out, c_out, 3, 1, 1, init),
            conv_shortcut,
        }
    }

    /// Returns the block output and `bn1` of the input (its pre-activation).
    fn forward_t(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        let pre = xs.apply_t(&self.bn1, train);
        let activated = pre.relu();
        let ys = activated.apply(&self.conv1).apply_t(&self.bn2, train).relu().apply(&self.conv2);
        let shortcut = match &self.conv_shortcut {
            Some(conv) => activated.apply(conv),
            None => xs.shallow_clone(),
        };
        (shortcut + ys, pre)
    }
}

/// Runs a stage and returns its output and the `bn1` output of its first
/// block.
fn stage_forward(blocks: &[WideBlock], xs: &Tensor, train: bool) -> (Tensor, Tensor) {
    let (mut ys, first_pre) = blocks[0].forward_t(xs, train);
    for block in &blocks[1..] {
        ys = block.forward_t(&ys, train).0;
    }
    (ys, first_pre)
}

/// WRN-depth-k: a 3×3 stem of width 16, three stages of `(depth - 4) / 6`
/// blocks (`block1.layer`, `block2.layer`, `block3.layer`), BN, ReLU, 8×8
/// average pooling and `fc`.
#[derive(Debug)]
pub struct WideResNet {
    conv1: nn::Conv2D,
    stages: [Vec<WideBlock>; 3],
    bn1: BatchNorm2d,
    fc: Linear,
}

impl WideResNet {
    /// Creates WRN-`depth`-`widen_factor`.
    ///
    /// Convolutions are normal with std `sqrt(2 / (k * k * c_out))`; `fc`
    /// has PyTorch's default weight and a zero bias, as in RepDistiller.
    ///
    /// # Panics
    ///
    /// If `depth` is not of the form 6n + 4 with n ≥ 1.
    pub fn new(p: &nn::Path, depth: i64, widen_factor: i64, num_classes: i64) -> WideResNet {
        assert!(
            depth >= 10 && (depth - 4) % 6 == 0,
            "invalid WRN depth {depth}: expected 6n + 4, e.g. 16 or 40"
        );
        let blocks = (depth - 4) / 6;
        let widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor];
        let stage = |index: usize, stride: i64| {
            let p = p / format!("block{}", index + 1) / "layer";
            (0..blocks)
                .map(|i| {
                    let (c_in, stride) =
                        if i == 0 { (widths[index], stride) } else { (widths[index + 1], 1) };
                    WideBlock::new(&p / i, c_in, widths[index + 1], stride)
                })
                .collect::<Vec<_>>()
        };
        WideResNet {
            conv1: conv2d(p / "conv1", 3, widths[0], 3, 1, 1, KAIMING_NORMAL_FAN_OUT),
            stages: [stage(0, 1), stage(1, 2), stage(2, 2)],
            bn1: BatchNorm2d::new(p / "bn1", widths[3]),
            fc: Linear::new(p / "fc", widths[3], num_classes, LinearInit::ZeroBias),
        }
    }
}

impl Network for WideResNet {
    /// The pre-activation features are those RepDistiller computes with
    /// `preact=True`: the stem output, then the `bn1` outputs that the next
    /// stage's first block (or the final `bn1`) computes from f1, f2 and f3.
    /// RepDistiller applies those BatchNorms a second time to get them, so in
    /// training mode it updates their running statistics twice. Here they
    /// come from the forward pass, with the same values.
    fn forward_t(&self, xs: &Tensor, train: bool) -> ModelOutput {
        let f0 = xs.apply(&self.conv1); // 32x32
        let (f1, _) = stage_forward(&self.stages[0], &f0, train); // 32x32
        let (f2, f1_pre) = stage_forward(&self.stages[1], &f1, train); // 16x16
        let (f3, f2_pre) = stage_forward(&self.stages[2], &f2, train); // 8x8
        let f3_pre = f3.apply_t(&self.bn1, train);
        let f4 = f3_pre.relu().avg_pool2d([8, 8], [8, 8], [0, 0], false, true, None).flatten(1, -1);
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
