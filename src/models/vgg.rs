//! VGG with BatchNorm (Simonyan and Zisserman, "Very Deep Convolutional
//! Networks for Large-Scale Image Recognition", arXiv:1409.1556) as
//! RepDistiller's `vgg.py` defines its `vgg*_bn` models for 32×32 inputs:
//! five blocks of 3×3 convolutions, max pooling between the first four,
//! global average pooling and a single linear `classifier`.

use tch::nn;
use tch::Tensor;

use super::layers::{BatchNorm2d, Linear, LinearInit, KAIMING_NORMAL_FAN_OUT};
use super::{ModelOutput, Network};

/// Convolution widths of the five blocks of each depth (RepDistiller's
/// configurations S, A, B, D and E).
fn block_widths(depth: i64) -> [&'static [i64]; 5] {
    match depth {
        8 => [&[64], &[128], &[256], &[512], &[512]],
        11 => [&[64], &[128], &[256, 256], &[512, 512], &[512, 512]],
        13 => [&[64, 64], &[128, 128], &[256, 256], &[512, 512], &[512, 512]],
        16 => [&[64, 64], &[128, 128], &[256, 256, 256], &[512, 512, 512], &[512, 512, 512]],
        19 => [
            &[64, 64],
            &[128, 128],
            &[256, 256, 256, 256],
            &[512, 512, 512, 512],
            &[512, 512, 512, 512],
        ],
        _ => panic!("invalid VGG depth {depth}: expected 8, 11, 13, 16 or 19"),
    }
}

/// Convolution (with bias) and BatchNorm pairs of one block, ReLU between
/// them but not after the last, which the network applies itself so that it
/// can return the pre-activation.
#[derive(Debug)]
struct VggBlock {
    layers: Vec<(nn::Conv2D, BatchNorm2d)>,
}

impl VggBlock {
    /// Creates the block; PyTorch's `nn.Sequential` numbers the ReLUs too,
    /// so layer j's convolution is entry 3j and its BatchNorm entry 3j + 1.
    fn new(p: nn::Path, c_in: i64, widths: &[i64]) -> VggBlock {
        let mut c_in = c_in;
        let layers = widths
            .iter()
            .enumerate()
            .map(|(j, &c_out)| {
                let config = nn::ConvConfig {
                    padding: 1,
                    ws_init: KAIMING_NORMAL_FAN_OUT,
                    bs_init: nn::Init::Const(0.),
                    ..Default::default()
                };
                let conv = nn::conv2d(&p / (3 * j), c_in, c_out, 3, config);
                let bn = BatchNorm2d::new(&p / (3 * j + 1), c_out);
                c_in = c_out;
                (conv, bn)
            })
            .collect();
        VggBlock { layers }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.shallow_clone();
        for (j, (conv, bn)) in self.layers.iter().enumerate() {
            if j > 0 {
                ys = ys.relu();
            }
            ys = ys.apply(conv).apply_t(bn, train);
        }
        ys
    }
}

/// VGG-8, 11, 13, 16 or 19 with BatchNorm.
#[derive(Debug)]
pub struct Vgg {
    blocks: [VggBlock; 5],
    classifier: Linear,
}

impl Vgg {
    /// Creates the network of `depth` weight layers (convolutions plus the
    /// classifier).
    ///
    /// Convolutions are normal with std `sqrt(2 / (k * k * c_out))` and zero
    /// bias, the classifier normal with std 0.01 and zero bias, as in
    /// RepDistiller.
    ///
    /// # Panics
    ///
    /// If `depth` is not 8, 11, 13, 16 or 19.
    pub fn new(p: &nn::Path, depth: i64, num_classes: i64) -> Vgg {
        let widths = block_widths(depth);
        let mut c_in = 3;
        let blocks = std::array::from_fn(|i| {
            let block = VggBlock::new(p / format!("block{i}"), c_in, widths[i]);
            c_in = *widths[i].last().expect("every VGG block has a convolution");
            block
        });
        Vgg {
            blocks,
            classifier: Linear::new(p / "classifier", 512, num_classes, LinearInit::Normal001),
        }
    }
}

fn max_pool(xs: &Tensor) -> Tensor {
    xs.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
}

impl Network for Vgg {
    fn forward_t(&self, xs: &Tensor, train: bool) -> ModelOutput {
        let height = xs.size()[2];
        let f0 = self.blocks[0].forward_t(xs, train).relu(); // 32x32
        let f1_pre = self.blocks[1].forward_t(&max_pool(&f0), train); // 16x16
        let f1 = f1_pre.relu();
        let f2_pre = self.blocks[2].forward_t(&max_pool(&f1), train); // 8x8
        let f2 = f2_pre.relu();
        let f3_pre = self.blocks[3].forward_t(&max_pool(&f2), train); // 4x4
        let f3 = f3_pre.relu();
        // RepDistiller pools before the last block only for 64×64 inputs,
        // so that 32×32 inputs keep a 4×4 map there.
        let block4_in = if height == 64 { max_pool(&f3) } else { f3.shallow_clone() };
        let f4_pre = self.blocks[4].forward_t(&block4_in, train); // 4x4
        let f4 = f4_pre.relu();
        let f5 = f4.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let logits = f5.apply(&self.classifier);
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
        (&self.classifier.weight, &self.classifier.bias)
    }

    fn feat_dim(&self) -> i64 {
        self.classifier.weight.size()[1]
    }
}
