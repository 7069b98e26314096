//! Checks the zoo against RepDistiller's PyTorch definitions as listed in
//! `tests/fixtures/repdistiller_models.md` (variable names and shapes,
//! trainable parameter count, feature and logit shapes for a batch of two
//! 32×32 images), and checks checkpoint round trips and seeding.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crcd::models::{build, Arch, ModelOutput, Network};
use tch::{nn, Device, Kind, Tensor};

const NUM_CLASSES: i64 = 100;
const BATCH: i64 = 2;
const FIXTURE: &str = include_str!("fixtures/repdistiller_models.md");

/// One model's section of the fixture.
#[derive(Debug)]
struct Listing {
    parameters: i64,
    state_dict_entries: usize,
    logits: Vec<i64>,
    feats: Vec<Vec<i64>>,
    /// `state_dict` keys with their shapes, in the listing's order.
    entries: Vec<(String, Vec<i64>)>,
}

/// Parses a shape such as `[2, 16, 32, 32]` or `[]`.
fn parse_shape(text: &str) -> Vec<i64> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or_else(|| panic!("invalid shape {text:?}: expected [d1, d2, ...]"));
    inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().unwrap_or_else(|e| panic!("invalid dimension {d:?}: {e}")))
        .collect()
}

/// Parses the `## name` sections that carry a listing; sections without a
/// `parameters:` line (ResNet18, ResNet34) are skipped.
fn parse_fixture(text: &str) -> HashMap<String, Listing> {
    let mut listings = HashMap::new();
    for section in text.split("\n## ").skip(1) {
        let (name, body) = section.split_once('\n').expect("section has a body");
        let Some(summary) = body.lines().find_map(|l| l.strip_prefix("parameters: ")) else {
            continue;
        };
        let fields: Vec<&str> = summary.split("; ").collect();
        let parameters = fields[0].parse().expect("parameter count is an integer");
        let state_dict_entries = fields[1]
            .strip_prefix("state_dict entries: ")
            .and_then(|n| n.parse().ok())
            .expect("second field is the state_dict entry count");
        let logits =
            parse_shape(fields[2].strip_prefix("logits: ").expect("third field is logits"));
        let feat_line = body.lines().find_map(|l| l.strip_prefix("feat: ")).expect("feat line");
        let feats = feat_line
            .split("], ")
            .map(|s| parse_shape(&format!("{}]", s.trim_end_matches(']'))))
            .collect();
        let code = body.split("```").nth(1).expect("fenced state_dict listing");
        let entries = code
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (key, shape) = l.split_once(' ').expect("entry is `key [shape]`");
                (key.to_owned(), parse_shape(shape))
            })
            .collect();
        let listing = Listing { parameters, state_dict_entries, logits, feats, entries };
        listings.insert(name.trim().to_owned(), listing);
    }
    listings
}

fn listings() -> &'static HashMap<String, Listing> {
    static LISTINGS: OnceLock<HashMap<String, Listing>> = OnceLock::new();
    LISTINGS.get_or_init(|| parse_fixture(FIXTURE))
}

/// Serialises seeding with the draws that follow it: the test harness runs
/// tests on several threads and libtorch has one global generator.
static RNG: Mutex<()> = Mutex::new(());

/// Builds `arch` on the CPU from seed `seed`.
fn build_cpu(arch: Arch, seed: i64) -> (nn::VarStore, Box<dyn Network>) {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build(arch, &vs.root(), NUM_CLASSES);
    (vs, net)
}

/// Draws a (2, 3, 32, 32) standard normal batch from seed `seed`.
fn input_batch(seed: i64) -> Tensor {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    Tensor::randn([BATCH, 3, 32, 32], (Kind::Float, Device::Cpu))
}

fn sorted_entries(vs: &nn::VarStore) -> Vec<(String, Vec<i64>)> {
    let mut entries: Vec<_> = vs.variables().into_iter().map(|(k, t)| (k, t.size())).collect();
    entries.sort();
    entries
}

fn trainable_parameters(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

fn shapes(tensors: &[Tensor]) -> Vec<Vec<i64>> {
    tensors.iter().map(Tensor::size).collect()
}

fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name.ends_with(".num_batches_tracked")
}

/// Asserts the variables, parameter count and forward outputs of `arch`
/// against its listing.
fn check_against_listing(arch: Arch) {
    let listing =
        listings().get(arch.name()).unwrap_or_else(|| panic!("{arch}: no listing in the fixture"));
    assert_eq!(
        listing.entries.len(),
        listing.state_dict_entries,
        "{arch}: fixture is inconsistent"
    );
    let (vs, net) = build_cpu(arch, 0);

    let got = sorted_entries(&vs);
    let mut expected = listing.entries.clone();
    expected.sort();
    if let Some(i) = (0..got.len().max(expected.len())).find(|&i| got.get(i) != expected.get(i)) {
        panic!(
            "{arch}: variables differ from the listing at sorted entry {i}: got {:?}, expected {:?} \
             ({} variables, {} listed)",
            got.get(i),
            expected.get(i),
            got.len(),
            expected.len()
        );
    }

    assert_eq!(trainable_parameters(&vs), listing.parameters, "{arch}: trainable parameters");
    let listed_trainable = listing.entries.iter().filter(|(k, _)| !is_buffer(k)).count();
    assert_eq!(vs.trainable_variables().len(), listed_trainable, "{arch}: trainable tensors");
    for (name, tensor) in vs.variables() {
        let expected_kind =
            if name.ends_with(".num_batches_tracked") { Kind::Int64 } else { Kind::Float };
        assert_eq!(tensor.kind(), expected_kind, "{arch}: kind of {name}");
    }

    let xs = input_batch(100);
    let out = net.forward_t(&xs, false);
    assert_eq!(out.logits.size(), listing.logits, "{arch}: logits shape");
    assert_eq!(shapes(&out.feats), listing.feats, "{arch}: feature shapes");
    assert_eq!(shapes(&out.preact_feats), listing.feats, "{arch}: pre-activation feature shapes");
    check_output_contract(arch, net.as_ref(), &out);
    check_training_step(arch, &vs, net.as_ref(), &xs);
}

/// Asserts what the `Network` contract promises beyond shapes: the pooled
/// feature feeds `classifier()` and is also the last pre-activation feature.
fn check_output_contract(arch: Arch, net: &dyn Network, out: &ModelOutput) {
    let pooled = out.pooled();
    assert_eq!(pooled.size(), [BATCH, net.feat_dim()], "{arch}: feat_dim");
    let (weight, bias) = net.classifier();
    assert_eq!(weight.size(), [NUM_CLASSES, net.feat_dim()], "{arch}: classifier weight");
    assert_eq!(bias.size(), [NUM_CLASSES], "{arch}: classifier bias");
    let logits = pooled.matmul(&weight.tr()) + bias;
    assert!(out.logits.allclose(&logits, 1e-4, 1e-5, false), "{arch}: logits are not fc(pooled)");
    let preact_pooled = out.preact_feats.last().expect("preact_feats is not empty");
    assert!(preact_pooled.equal(pooled), "{arch}: last preact feature differs from pooled");
}

/// Runs one training-mode forward and backward pass and asserts that every
/// BatchNorm ran exactly once and every trainable variable got a gradient.
fn check_training_step(arch: Arch, vs: &nn::VarStore, net: &dyn Network, xs: &Tensor) {
    let out = net.forward_t(xs, true);
    out.logits.sum(Kind::Float).backward();
    for (name, tensor) in vs.variables() {
        if name.ends_with(".num_batches_tracked") {
            assert_eq!(tensor.int64_value(&[]), 1, "{arch}: {name} after one training batch");
        }
    }
    let without_grad = vs.trainable_variables().iter().filter(|t| !t.grad().defined()).count();
    assert_eq!(without_grad, 0, "{arch}: trainable variables without a gradient");
}

macro_rules! listed_model_tests {
    ($($test:ident => $arch:expr,)*) => {
        $(
            #[test]
            fn $test() {
                check_against_listing($arch);
            }
        )*
    };
}

listed_model_tests! {
    resnet8_matches_listing => Arch::Resnet8,
    resnet14_matches_listing => Arch::Resnet14,
    resnet20_matches_listing => Arch::Resnet20,
    resnet32_matches_listing => Arch::Resnet32,
    resnet44_matches_listing => Arch::Resnet44,
    resnet56_matches_listing => Arch::Resnet56,
    resnet110_matches_listing => Arch::Resnet110,
    resnet8x4_matches_listing => Arch::Resnet8x4,
    resnet32x4_matches_listing => Arch::Resnet32x4,
    wrn_16_1_matches_listing => Arch::Wrn16_1,
    wrn_16_2_matches_listing => Arch::Wrn16_2,
    wrn_40_1_matches_listing => Arch::Wrn40_1,
    wrn_40_2_matches_listing => Arch::Wrn40_2,
    vgg8_matches_listing => Arch::Vgg8,
    vgg11_matches_listing => Arch::Vgg11,
    vgg13_matches_listing => Arch::Vgg13,
    vgg16_matches_listing => Arch::Vgg16,
    vgg19_matches_listing => Arch::Vgg19,
    resnet50_matches_listing => Arch::ResNet50,
    mobilenetv2_matches_listing => Arch::MobileNetV2,
    shufflev1_matches_listing => Arch::ShuffleV1,
    shufflev2_matches_listing => Arch::ShuffleV2,
}

#[test]
fn fixture_lists_all_but_resnet18_34() {
    for arch in Arch::ALL {
        let listed = listings().contains_key(arch.name());
        let expected = !matches!(arch, Arch::ResNet18 | Arch::ResNet34);
        assert_eq!(listed, expected, "{arch}: listed in the fixture");
    }
}

/// Counts the trainable parameters of a basic-block `resnetv2` network by
/// hand. The stem is a 3×3 convolution of width 64 with BatchNorm. Each block
/// of the stages of widths 64-128-256-512 has two 3×3 convolutions and two
/// BatchNorms, plus a 1×1 projection with BatchNorm where the width changes.
/// The linear classifier comes last.
fn basic_resnetv2_parameters(blocks: [i64; 4], num_classes: i64) -> i64 {
    let conv = |c_in: i64, c_out: i64, k: i64| c_in * c_out * k * k;
    let bn = |c: i64| 2 * c;
    let mut total = conv(3, 64, 3) + bn(64);
    let mut c_in = 64;
    for (stage, &n) in blocks.iter().enumerate() {
        let width = 64 << stage;
        for i in 0..n {
            let block_in = if i == 0 { c_in } else { width };
            total += conv(block_in, width, 3) + bn(width) + conv(width, width, 3) + bn(width);
            if block_in != width {
                total += conv(block_in, width, 1) + bn(width);
            }
        }
        c_in = width;
    }
    total + 512 * num_classes + num_classes
}

/// Checks a resnetv2 network that the fixture does not list: its parameter
/// count, a few keys, and the feature shapes, which follow from the strides
/// 1, 1, 2, 2, 2 of the stem and stages.
fn check_basic_resnetv2(arch: Arch, blocks: [i64; 4], parameters: i64) {
    assert_eq!(basic_resnetv2_parameters(blocks, NUM_CLASSES), parameters, "{arch}: derivation");
    let (vs, net) = build_cpu(arch, 0);
    assert_eq!(trainable_parameters(&vs), parameters, "{arch}: trainable parameters");
    let entries: HashMap<String, Vec<i64>> =
        vs.variables().into_iter().map(|(k, t)| (k, t.size())).collect();
    // Every convolution (stem, two per block, three projections) has one
    // weight and is followed by a BatchNorm with five entries.
    let convs = 1 + 2 * blocks.iter().sum::<i64>() as usize + 3;
    assert_eq!(entries.len(), convs * 6 + 2, "{arch}: state_dict entries");
    assert_eq!(entries["conv1.weight"], [64, 3, 3, 3], "{arch}: conv1.weight");
    assert_eq!(entries["layer2.0.shortcut.0.weight"], [128, 64, 1, 1], "{arch}: projection");
    assert_eq!(entries["layer4.0.shortcut.1.num_batches_tracked"], Vec::<i64>::new(), "{arch}");
    assert!(
        !entries.contains_key("layer1.0.shortcut.0.weight"),
        "{arch}: layer1.0 has a projection"
    );
    assert_eq!(entries["linear.weight"], [NUM_CLASSES, 512], "{arch}: linear.weight");

    let xs = input_batch(100);
    let out = net.forward_t(&xs, false);
    let expected = [
        vec![BATCH, 64, 32, 32],
        vec![BATCH, 64, 32, 32],
        vec![BATCH, 128, 16, 16],
        vec![BATCH, 256, 8, 8],
        vec![BATCH, 512, 4, 4],
        vec![BATCH, 512],
    ];
    assert_eq!(out.logits.size(), [BATCH, NUM_CLASSES], "{arch}: logits shape");
    assert_eq!(shapes(&out.feats), expected, "{arch}: feature shapes");
    assert_eq!(shapes(&out.preact_feats), expected, "{arch}: pre-activation feature shapes");
    check_output_contract(arch, net.as_ref(), &out);
    check_training_step(arch, &vs, net.as_ref(), &xs);
}

#[test]
fn resnet18_structure() {
    check_basic_resnetv2(Arch::ResNet18, [2, 2, 2, 2], 11_220_132);
}

#[test]
fn resnet34_structure() {
    check_basic_resnetv2(Arch::ResNet34, [3, 4, 6, 3], 21_328_292);
}

/// Builds `arch` from one seed, runs one training batch so that the
/// BatchNorm buffers move away from their initial values, saves the
/// VarStore, loads it into a model built from another seed and compares
/// eval-mode logits and every variable.
fn check_save_load(arch: Arch) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("model.safetensors");
    let xs = input_batch(100);

    let (vs, net) = build_cpu(arch, 1);
    let _ = net.forward_t(&xs, true);
    let expected = net.forward_t(&xs, false).logits;
    vs.save(&path).expect("save VarStore");

    let (mut loaded_vs, loaded) = build_cpu(arch, 2);
    let before = loaded.forward_t(&xs, false).logits;
    assert!(!before.equal(&expected), "{arch}: seeds 1 and 2 built the same model");
    loaded_vs.load(&path).expect("load VarStore");
    let got = loaded.forward_t(&xs, false).logits;
    assert!(got.equal(&expected), "{arch}: logits differ after load");

    let saved = vs.variables();
    for (name, tensor) in loaded_vs.variables() {
        assert_eq!(tensor.kind(), saved[&name].kind(), "{arch}: kind of {name} after load");
        assert!(tensor.equal(&saved[&name]), "{arch}: {name} differs after load");
        if name.ends_with(".num_batches_tracked") {
            assert_eq!(tensor.int64_value(&[]), 1, "{arch}: {name} after load");
        }
    }
}

#[test]
fn save_load_roundtrip() {
    // One small model of each family.
    let archs = [
        Arch::Resnet8,
        Arch::Wrn16_1,
        Arch::Vgg8,
        Arch::ResNet18,
        Arch::MobileNetV2,
        Arch::ShuffleV1,
        Arch::ShuffleV2,
    ];
    for arch in archs {
        check_save_load(arch);
    }
}

#[test]
fn same_seed_same_weights() {
    for arch in Arch::ALL {
        let (first, _) = build_cpu(arch, 7);
        let (second, _) = build_cpu(arch, 7);
        let second_vars = second.variables();
        assert_eq!(first.len(), second_vars.len(), "{arch}: variable count under the same seed");
        for (name, tensor) in first.variables() {
            assert!(
                tensor.equal(&second_vars[&name]),
                "{arch}: {name} differs under the same seed"
            );
        }
    }
}
