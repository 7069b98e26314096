//! Layers shared by the zoo: a BatchNorm with PyTorch's buffers, convolution
//! and linear constructors with PyTorch's initialisations, and channel shuffle.

use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// `nn.init.kaiming_normal_(w, mode='fan_out', nonlinearity='relu')`: normal
/// with std `sqrt(2 / (c_out * k * k))`. The WRN, VGG and MobileNetV2
/// definitions write the same distribution out as `normal_(0, sqrt(2. / n))`.
pub(crate) const KAIMING_NORMAL_FAN_OUT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

/// PyTorch's default weight init for `Conv2d` and `Linear`,
/// `kaiming_uniform_(w, a=sqrt(5))`, which is uniform in `±1/sqrt(fan_in)`.
/// The gain `sqrt(2 / (1 + a²)) = 1/sqrt(3)` times the uniform factor
/// `sqrt(3)` gives that bound. tch 0.26's own default uses gain `sqrt(2)`,
/// a bound `sqrt(6)` times wider.
pub(crate) const TORCH_DEFAULT: Init = Init::Kaiming {
    dist: NormalOrUniform::Uniform,
    fan: FanInOut::FanIn,
    non_linearity: NonLinearity::ExplicitGain(0.577_350_269_189_625_8),
};

/// BatchNorm2d with the five entries of PyTorch's `state_dict`: trainable
/// `weight` and `bias`, and the buffers `running_mean`, `running_var` and
/// `num_batches_tracked` (an i64 scalar). tch's `nn::BatchNorm` has no
/// `num_batches_tracked`, so checkpoints written by PyTorch would not load.
#[derive(Debug)]
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
}

impl BatchNorm2d {
    /// PyTorch's default `eps`.
    pub const EPS: f64 = 1e-5;
    /// PyTorch's default `momentum`: each training batch moves the running
    /// statistics 10% of the way towards its own.
    pub const MOMENTUM: f64 = 0.1;

    /// Creates the layer for `c` channels: weight 1, bias 0, running mean 0,
    /// running variance 1, counter 0 (PyTorch's defaults, which every zoo
    /// definition keeps or sets again).
    pub fn new(p: nn::Path, c: i64) -> BatchNorm2d {
        let counter = Tensor::zeros([0i64; 0], (Kind::Int64, p.device()));
        BatchNorm2d {
            weight: p.var("weight", &[c], Init::Const(1.)),
            bias: p.var("bias", &[c], Init::Const(0.)),
            running_mean: p.zeros_no_train("running_mean", &[c]),
            running_var: p.ones_no_train("running_var", &[c]),
            num_batches_tracked: p.add("num_batches_tracked", counter, false),
        }
    }
}

impl nn::ModuleT for BatchNorm2d {
    /// Normalises (B, C, H, W) with batch statistics when `train` is set,
    /// which also updates the running statistics and counts the batch, and
    /// with the running statistics otherwise.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            let mut counter = self.num_batches_tracked.shallow_clone();
            let _ = counter.g_add_scalar_(1);
        }
        xs.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            Self::MOMENTUM,
            Self::EPS,
            true,
        )
    }
}

/// Fully connected layer whose bias always exists, so that `classifier()` can
/// hand out both tensors.
#[derive(Debug)]
pub struct Linear {
    /// (out, in).
    pub weight: Tensor,
    /// (out,).
    pub bias: Tensor,
}

/// Initialisation of a [`Linear`] layer.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LinearInit {
    /// PyTorch's default: weight and bias uniform in `±1/sqrt(in)`.
    TorchDefault,
    /// PyTorch's default weight, zero bias (WRN).
    ZeroBias,
    /// Weight normal with std 0.01, zero bias (VGG, MobileNetV2).
    Normal001,
}

impl Linear {
    /// Creates an `in_dim` to `out_dim` layer.
    pub(crate) fn new(p: nn::Path, in_dim: i64, out_dim: i64, init: LinearInit) -> Linear {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let (ws_init, bs_init) = match init {
            LinearInit::TorchDefault => (TORCH_DEFAULT, Init::Uniform { lo: -bound, up: bound }),
            LinearInit::ZeroBias => (TORCH_DEFAULT, Init::Const(0.)),
            LinearInit::Normal001 => (Init::Randn { mean: 0., stdev: 0.01 }, Init::Const(0.)),
        };
        Linear {
            weight: p.var("weight", &[out_dim, in_dim], ws_init),
            bias: p.var("bias", &[out_dim], bs_init),
        }
    }
}

impl nn::Module for Linear {
    /// Maps (B, in) to (B, out).
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear(&self.weight, Some(&self.bias))
    }
}

/// Creates a bias-free `k`×`k` convolution with padding `k / 2`, which keeps
/// the spatial size at stride 1 for the odd kernels of the zoo.
pub(crate) fn conv2d(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    groups: i64,
    ws_init: Init,
) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding: k / 2,
        groups,
        bias: false,
        ws_init,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, config)
}

/// Projection shortcut of a residual block: a strided 1×1 convolution and a
/// BatchNorm, stored as PyTorch's `nn.Sequential` entries `0` and `1`.
#[derive(Debug)]
pub(crate) struct Projection {
    conv: nn::Conv2D,
    bn: BatchNorm2d,
}

impl Projection {
    /// Creates the projection from `c_in` to `c_out` channels with kaiming
    /// normal (fan-out) weights, as both ResNet definitions initialise it.
    pub(crate) fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Projection {
        Projection {
            conv: conv2d(&p / 0, c_in, c_out, 1, stride, 1, KAIMING_NORMAL_FAN_OUT),
            bn: BatchNorm2d::new(&p / 1, c_out),
        }
    }
}

impl nn::ModuleT for Projection {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train)
    }
}

/// Interleaves the channels of `groups` groups (ShuffleNet's channel
/// shuffle): channel `j * groups + i` of the output is channel
/// `i * (C / groups) + j` of the input.
pub(crate) fn channel_shuffle(xs: &Tensor, groups: i64) -> Tensor {
    let (b, c, h, w) = xs.size4().expect("channel shuffle takes (B, C, H, W)");
    xs.view([b, groups, c / groups, h, w]).permute([0, 2, 1, 3, 4]).reshape([b, c, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::ModuleT;
    use tch::Device;

    #[test]
    fn batch_norm_train_updates_running_stats() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = BatchNorm2d::new(vs.root() / "bn", 3);
        let xs = Tensor::randn([4, 3, 5, 5], (Kind::Float, Device::Cpu)) * 2.0 + 1.0;
        let ys = bn.forward_t(&xs, true);

        let mean = xs.mean_dim([0, 2, 3].as_slice(), false, Kind::Float);
        let var_biased = xs.var_dim([0, 2, 3].as_slice(), false, false);
        let var_unbiased = xs.var_dim([0, 2, 3].as_slice(), true, false);
        let expected = (&xs - mean.view([1, 3, 1, 1]))
            / (var_biased.view([1, 3, 1, 1]) + BatchNorm2d::EPS).sqrt();
        assert!(ys.allclose(&expected, 1e-5, 1e-5, false));
        assert!(bn.running_mean.allclose(&(mean * 0.1), 1e-6, 1e-6, false));
        assert!(bn.running_var.allclose(&(var_unbiased * 0.1 + 0.9), 1e-6, 1e-6, false));
        assert_eq!(bn.num_batches_tracked.int64_value(&[]), 1);
    }

    #[test]
    fn batch_norm_eval_uses_running_stats() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut bn = BatchNorm2d::new(vs.root() / "bn", 2);
        tch::no_grad(|| {
            bn.running_mean.copy_(&Tensor::from_slice(&[1.0f32, -2.0]));
            bn.running_var.copy_(&Tensor::from_slice(&[4.0f32, 0.25]));
            bn.weight.copy_(&Tensor::from_slice(&[3.0f32, 1.0]));
            bn.bias.copy_(&Tensor::from_slice(&[0.5f32, 0.0]));
        });
        let xs = Tensor::from_slice(&[5.0f32, -1.0]).view([1, 2, 1, 1]);
        let ys = bn.forward_t(&xs, false);
        // (5 - 1) / sqrt(4) * 3 + 0.5 and (-1 + 2) / sqrt(0.25), up to eps.
        let expected = Tensor::from_slice(&[6.5f32, 2.0]).view([1, 2, 1, 1]);
        assert!(ys.allclose(&expected, 1e-4, 1e-4, false));
        assert_eq!(bn.num_batches_tracked.int64_value(&[]), 0);
        assert!(bn.running_mean.equal(&Tensor::from_slice(&[1.0f32, -2.0])));
    }

    #[test]
    fn batch_norm_variables_match_pytorch() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _bn = BatchNorm2d::new(vs.root() / "bn1", 8);
        let variables = vs.variables();
        let mut names: Vec<&str> = variables.keys().map(String::as_str).collect();
        names.sort_unstable();
        let expected = [
            "bn1.bias",
            "bn1.num_batches_tracked",
            "bn1.running_mean",
            "bn1.running_var",
            "bn1.weight",
        ];
        assert_eq!(names, expected);
        assert_eq!(variables["bn1.num_batches_tracked"].kind(), Kind::Int64);
        assert_eq!(variables["bn1.num_batches_tracked"].size(), Vec::<i64>::new());
        assert_eq!(vs.trainable_variables().len(), 2);
    }

    #[test]
    fn torch_default_init_bound() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        // fan_in = 16 / 4 groups * 3 * 3 = 36, so the bound is 1/6.
        let conv = conv2d(vs.root() / "conv", 16, 64, 3, 1, 4, TORCH_DEFAULT);
        let max = conv.ws.abs().max().double_value(&[]);
        assert!(max <= 1.0 / 6.0, "max |w| = {max} exceeds the bound");
        assert!(max > 0.9 / 6.0, "max |w| = {max} is far below the bound");
    }

    #[test]
    fn kaiming_fan_out_std() {
        tch::manual_seed(2);
        let vs = nn::VarStore::new(Device::Cpu);
        // fan_out = 128 * 3 * 3, so the std is sqrt(2 / 1152) = 1/24.
        let conv = conv2d(vs.root() / "conv", 64, 128, 3, 1, 1, KAIMING_NORMAL_FAN_OUT);
        let std = conv.ws.std(true).double_value(&[]);
        assert!((std * 24.0 - 1.0).abs() < 0.02, "std = {std}");
    }

    #[test]
    fn channel_shuffle_interleaves_groups() {
        let xs = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([1, 6, 1, 1]);
        let ys = channel_shuffle(&xs, 3);
        assert_eq!(Vec::<f32>::try_from(ys.flatten(0, -1)).unwrap(), [0., 2., 4., 1., 3., 5.]);
    }
}
