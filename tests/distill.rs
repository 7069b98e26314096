//! Tests of the distillation losses: the fixtures of the independent
//! PyTorch oracle in `tests/fixtures/oracle/` (regenerate them with
//! `.venv/bin/python scripts/gen_oracle_fixtures.py`), Gram against direct
//! relation scores, the gradient element, sampling, schedules, input errors
//! and checkpoints.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use rand::distr::{Distribution, Uniform};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tch::{nn, nn::Module, Device, Kind, Tensor};

use crcd::config::{
    DistillConfig, Element, Embed, GradientLoss, GradientPath, Method, RelationForm, Sampling,
    ScheduleKind,
};
use crcd::distill::contrast::{ContrastBranch, Objective};
use crcd::distill::gradient::{autograd_gradient, closed_form_gradient, cosine_gradient_loss};
use crcd::distill::memory::{update_rows, ContrastSampler, NormConstant};
use crcd::distill::nce::nce_loss;
use crcd::distill::relation::{relation_loss, relation_scores_direct, relation_scores_gram};
use crcd::distill::{
    build, cross_entropy, kd_loss, schedule_weights, DistillShapes, Distiller, LossTerm, StepInput,
};
use crcd::models::ModelOutput;

/// Tolerance of every comparison with the oracle: the Rust side computes in
/// f32 from the oracle's f32-rounded inputs, the oracle in f64.
const ORACLE_RTOL: f64 = 1e-5;

const CPU: Device = Device::Cpu;

fn normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)
}

/// Returns a (rows, cols) f64 tensor uniform in [-1, 1), drawn from ChaCha8
/// with `seed` so that tests running in parallel do not share libtorch's
/// global generator.
fn uniform(shape: &[i64], seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dist = Uniform::new(-1.0f64, 1.0).expect("valid range");
    let len: i64 = shape.iter().product();
    let values: Vec<f64> = (0..len).map(|_| dist.sample(&mut rng)).collect();
    Tensor::from_slice(&values).view(shape)
}

/// Returns the oracle fixture `name`.
fn fixture(name: &str) -> Result<Value> {
    let path: PathBuf =
        [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", "oracle", &format!("{name}.json")]
            .iter()
            .collect();
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path:?}"))?;
    Ok(serde_json::from_str(&text)?)
}

/// Decodes a fixture tensor; floats become `kind`, integers i64.
fn tensor(value: &Value, kind: Kind) -> Tensor {
    let shape: Vec<i64> =
        value["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
    let data = value["data"].as_array().unwrap();
    if value["dtype"] == "i64" {
        let ints: Vec<i64> = data.iter().map(|x| x.as_i64().unwrap()).collect();
        Tensor::from_slice(&ints).view(shape.as_slice())
    } else {
        let floats: Vec<f64> = data.iter().map(|x| x.as_f64().unwrap()).collect();
        Tensor::from_slice(&floats).view(shape.as_slice()).to_kind(kind)
    }
}

fn float(value: &Value) -> f64 {
    value.as_f64().unwrap_or_else(|| panic!("expected a number, got {value}"))
}

/// Asserts `max|actual − expected| ≤ rtol · max|expected|`: relative for a
/// scalar, relative to the largest entry for a tensor.
fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, rtol: f64) {
    assert_eq!(actual.size(), expected.size(), "{what}: shapes differ");
    let actual = actual.to_kind(Kind::Double);
    let expected = expected.to_kind(Kind::Double);
    let scale = expected.abs().max().double_value(&[]);
    let err = (&actual - &expected).abs().max().double_value(&[]);
    assert!(
        err <= rtol * scale,
        "{what}: max difference {err:.3e} exceeds {rtol:.0e} × {scale:.3e}"
    );
}

fn assert_close_f64(what: &str, actual: f64, expected: f64, rtol: f64) {
    let err = (actual - expected).abs();
    assert!(err <= rtol * expected.abs(), "{what}: {actual} vs {expected} (difference {err:.3e})");
}

/// A bank of unit rows where rows 10..15 are near-duplicates of rows 0..5 at
/// distances 1e-2 .. 1e-5, with embeddings of which one sits 1e-3 from an
/// anchor, and contrast indices that hit batch rows (degenerate pairs) and
/// near-duplicates.
struct RelationCase {
    bank: Tensor,
    embed: Tensor,
    rows: Tensor,
    contrast: Tensor,
}

fn relation_case(kind: Kind) -> RelationCase {
    let (n, m, b) = (30i64, 16i64, 5i64);
    // Rounded to f32 first, so that the f64 and f32 cases hold equal values.
    let f32_exact = |x: Tensor| x.to_kind(Kind::Float).to_kind(Kind::Double);
    let bank = f32_exact(normalize(&uniform(&[n, m], 1)));
    for (i, dist) in [1e-2, 1e-3, 1e-4, 1e-5, 3e-5].iter().enumerate() {
        let i = i as i64;
        let noise = uniform(&[m], 10 + i as u64) * *dist;
        let near = f32_exact(normalize(&(bank.get(i) + noise)));
        bank.get(10 + i).copy_(&near);
    }
    let rows = Tensor::from_slice(&[0i64, 1, 2, 3, 4]);
    let embed = f32_exact(normalize(&uniform(&[b, m], 2)));
    let near_anchor = f32_exact(normalize(&(bank.get(1) + uniform(&[m], 3) * 1e-3)));
    embed.get(0).copy_(&near_anchor);
    // Column 0: the sample itself. Then other batch rows, near-duplicates
    // and ordinary rows.
    let contrast = Tensor::from_slice(&[
        0i64, 1, 10, 11, 20, 21, 2, 12, 13, 22, 23, 24, 25, //
        1, 0, 2, 11, 10, 14, 20, 26, 27, 28, 29, 5, 6, //
        2, 3, 4, 12, 13, 14, 7, 8, 9, 15, 16, 17, 18, //
        3, 4, 0, 1, 13, 10, 19, 20, 21, 22, 23, 24, 25, //
        4, 3, 2, 1, 0, 14, 12, 10, 26, 27, 28, 29, 9,
    ])
    .view([b, 13]);
    RelationCase { bank: bank.to_kind(kind), embed: embed.to_kind(kind), rows, contrast }
}

/// Returns the first-order bound of the Gram form's rounding error, stated in
/// `src/distill/relation.rs`, plus the direct form's own error in f64:
/// `5γ(1/(‖u‖‖v‖) + 1/(2‖u‖²) + 1/(2‖v‖²)) + 4γ + 4·2⁻⁵³`, and
/// `5γ(1/‖v‖ + 1/(2‖v‖²)) + 4γ + 4·2⁻⁵³` for degenerate pairs.
fn gram_error_bound(case: &RelationCase) -> Tensor {
    let m = case.bank.size()[1];
    let unit = 2f64.powi(-53);
    let gamma = (m + 4) as f64 * unit / (1.0 - (m + 4) as f64 * unit);
    let (b, k1) = case.contrast.size2().unwrap();
    let anchors = case.bank.index_select(0, &case.rows);
    let cand = case.bank.index_select(0, &case.contrast.reshape([-1])).view([b, 1, k1, m]);
    let u = cand - anchors.view([1, b, 1, m]) + 1e-6;
    let v = case.embed.unsqueeze(1) - anchors.unsqueeze(0) + 1e-6;
    let u_norm = u.norm_scalaropt_dim(2.0, [-1i64].as_slice(), false);
    let v_norm = v.norm_scalaropt_dim(2.0, [-1i64].as_slice(), false).unsqueeze(2);
    let terms = (&u_norm * &v_norm).reciprocal()
        + u_norm.square().reciprocal() * 0.5
        + v_norm.square().reciprocal() * 0.5;
    let own_error = 4.0 * gamma + 4.0 * unit;
    // In degenerate pairs u is exact, so only v's terms remain:
    // 5γ(1/‖v‖ + 1/(2‖v‖²)).
    let degenerate_terms = v_norm.reciprocal() + v_norm.square().reciprocal() * 0.5;
    let degenerate = case.contrast.unsqueeze(1).eq_tensor(&case.rows.view([1, b, 1]));
    let general = terms * (5.0 * gamma) + own_error;
    let exact_u = (degenerate_terms * (5.0 * gamma) + own_error).expand_as(&general);
    general.where_self(&degenerate.logical_not(), &exact_u)
}

fn preset_z(vs: &nn::VarStore, value: Option<f64>) -> Result<NormConstant> {
    let z = NormConstant::new(&vs.root(), "z");
    if let Some(value) = value {
        z.get_or_init(1, || Ok(value))?;
    }
    Ok(z)
}

#[test]
fn gram_matches_direct_in_f32() -> Result<()> {
    let case64 = relation_case(Kind::Double);
    let case = relation_case(Kind::Float);
    let m = case.bank.size()[1];
    let gamma32 = (m + 4) as f64 * 2f64.powi(-24);
    let direct = relation_scores_direct(&case.embed, &case.bank, &case.rows, &case.contrast)?;
    let gram = relation_scores_gram(&case.embed, &case.bank, &case.rows, &case.contrast)?;
    // The f32 inputs are exact in f64, so the f64 bound plus the f32 direct
    // form's own rounding, 4γ with 2⁻²⁴, bounds the difference.
    let bound = gram_error_bound(&case64) + 4.0 * gamma32;
    let err = (&gram - direct.to_kind(Kind::Double)).abs();
    let worst = (&err / &bound).max().double_value(&[]);
    assert!(worst <= 1.0, "f32 scores exceed the bound by a factor {worst}");

    let vs = nn::VarStore::new(CPU);
    let z = preset_z(&vs, Some(3.5))?;
    let (t, n) = (0.05, 30);
    let loss_direct = relation_loss(
        RelationForm::Direct,
        &case.embed,
        &case.bank,
        &case.rows,
        &case.contrast,
        t,
        &z,
        n,
    )?;
    let loss_gram = relation_loss(
        RelationForm::Gram,
        &case.embed,
        &case.bank,
        &case.rows,
        &case.contrast,
        t,
        &z,
        n,
    )?;
    let (ld, lg) = (loss_direct.double_value(&[]), loss_gram.double_value(&[]));
    assert!(((ld - lg) / ld).abs() < 1e-5, "direct loss {ld} vs Gram loss {lg}");
    Ok(())
}

#[test]
fn gram_gradient_matches_direct() -> Result<()> {
    let case = relation_case(Kind::Double);
    let vs = nn::VarStore::new(CPU);
    let z = preset_z(&vs, Some(2.0))?;
    let mut grads = vec![];
    for form in [RelationForm::Direct, RelationForm::Gram] {
        let embed = case.embed.detach().set_requires_grad(true);
        let loss =
            relation_loss(form, &embed, &case.bank, &case.rows, &case.contrast, 0.05, &z, 30)?;
        loss.backward();
        grads.push(embed.grad());
    }
    let scale = grads[0].abs().max().double_value(&[]);
    let err = (&grads[0] - &grads[1]).abs().max().double_value(&[]);
    eprintln!("gradient scale {scale:.3e}, max difference {err:.3e}");
    assert!(scale > 1e-3, "gradient too small to compare: {scale}");
    assert!(err <= 1e-9 * scale, "Gram gradient differs from direct by {err} (scale {scale})");
    Ok(())
}

#[test]
fn gram_and_direct_set_same_z() -> Result<()> {
    let case = relation_case(Kind::Float);
    let mut zs = vec![];
    for form in [RelationForm::Direct, RelationForm::Gram] {
        let vs = nn::VarStore::new(CPU);
        let z = preset_z(&vs, None)?;
        let _loss =
            relation_loss(form, &case.embed, &case.bank, &case.rows, &case.contrast, 0.05, &z, 30)?;
        zs.push(z.get().expect("the first batch sets Z"));
    }
    assert!(((zs[0] - zs[1]) / zs[0]).abs() < 1e-5, "Z direct {} vs Gram {}", zs[0], zs[1]);
    Ok(())
}

#[test]
fn gram_matches_direct_within_bound() -> Result<()> {
    let case = relation_case(Kind::Double);
    let direct = relation_scores_direct(&case.embed, &case.bank, &case.rows, &case.contrast)?;
    let gram = relation_scores_gram(&case.embed, &case.bank, &case.rows, &case.contrast)?;
    let err = (&gram - &direct).abs();
    let bound = gram_error_bound(&case);
    let worst = (&err / &bound).max().double_value(&[]);
    eprintln!(
        "max |gram − direct| = {:.3e}, max ratio to bound = {worst:.3e}",
        err.max().double_value(&[])
    );
    assert!(worst <= 1.0, "Gram scores exceed the proven bound by a factor {worst}");
    Ok(())
}

// ------------------------------------------------------------ oracle fixtures

#[test]
fn oracle_cross_entropy_and_kd() -> Result<()> {
    let fx = fixture("logits")?;
    let logits_s = tensor(&fx["logits_s"], Kind::Float);
    let logits_t = tensor(&fx["logits_t"], Kind::Float);
    let labels = tensor(&fx["labels"], Kind::Int64);
    let ce = cross_entropy(&logits_s, &labels)?.double_value(&[]);
    let kd = kd_loss(&logits_s, &logits_t, float(&fx["kd_t"]))?.double_value(&[]);
    assert_close_f64("cross-entropy", ce, float(&fx["ce"]), ORACLE_RTOL);
    assert_close_f64("KD", kd, float(&fx["kd"]), ORACLE_RTOL);
    Ok(())
}

#[test]
fn oracle_nce_objective() -> Result<()> {
    let fx = fixture("nce")?;
    let x = tensor(&fx["x"], Kind::Float);
    let loss = nce_loss(&x, fx["n_data"].as_i64().unwrap())?.double_value(&[]);
    assert_close_f64("NCE objective", loss, float(&fx["loss"]), ORACLE_RTOL);
    Ok(())
}

#[test]
fn oracle_bank_update() -> Result<()> {
    let fx = fixture("memory")?;
    let bank = tensor(&fx["bank"], Kind::Float);
    let rows = tensor(&fx["rows"], Kind::Int64);
    let embed = tensor(&fx["embed"], Kind::Float);
    update_rows(&bank, &rows, &embed, float(&fx["momentum"]))?;
    assert_close("updated bank", &bank, &tensor(&fx["bank_after"], Kind::Double), ORACLE_RTOL);
    Ok(())
}

#[test]
fn oracle_z_initialisation() -> Result<()> {
    let fx = fixture("memory")?;
    let vs = nn::VarStore::new(CPU);
    let z = NormConstant::new(&vs.root(), "z");
    assert_eq!(z.get(), None);
    let scores = tensor(&fx["scores"], Kind::Float);
    let n_data = fx["n_data"].as_i64().unwrap();
    // Only Z matters here; scores_to_loss sets it from the scores it gets.
    let rows = scores.size()[0];
    let _loss = crcd::distill::contrast::scores_to_loss(&scores, float(&fx["nce_t"]), &z, n_data)?;
    let set = z.get().expect("the first batch sets Z");
    assert_close_f64("Z", set, float(&fx["z"]), ORACLE_RTOL);
    // Later batches leave it alone.
    let _loss = crcd::distill::contrast::scores_to_loss(&(scores * 0.5), 0.07, &z, n_data)?;
    assert_eq!(z.get(), Some(set), "Z changed after the first batch ({rows} rows)");
    Ok(())
}

#[test]
fn oracle_gradient_element() -> Result<()> {
    let fx = fixture("gradient_element")?;
    let feat = tensor(&fx["feat"], Kind::Float).set_requires_grad(true);
    let weight = tensor(&fx["weight"], Kind::Float);
    let bias = tensor(&fx["bias"], Kind::Float);
    let labels = tensor(&fx["labels"], Kind::Int64);
    let expected = tensor(&fx["grad"], Kind::Double);
    let closed = closed_form_gradient(&feat, &weight, &bias, &labels)?;
    assert_close("closed-form gradient", &closed, &expected, ORACLE_RTOL);
    let logits = feat.linear(&weight, Some(&bias));
    let auto = autograd_gradient(&feat, &logits, &labels, true)?;
    assert_close("autograd gradient", &auto, &expected, ORACLE_RTOL);
    Ok(())
}

/// Builds a branch whose variables hold the fixture's heads, banks and Z.
fn branch_from_fixture(
    fx: &Value,
    cfg: &DistillConfig,
    objective: Objective,
    dims: (i64, i64),
) -> Result<(nn::VarStore, ContrastBranch)> {
    let vs = nn::VarStore::new(CPU);
    let n_data = fx["n_data"].as_i64().unwrap();
    let shapes = DistillShapes {
        student_dim: dims.0,
        teacher_dim: dims.1,
        num_classes: 5,
        num_data: n_data,
    };
    let branch = ContrastBranch::new(&vs.root(), cfg, objective, &shapes, 0, 0)?;
    let vars = vs.variables();
    let mut inputs: HashMap<String, Tensor> = HashMap::new();
    for (name, value) in fx["head_vars"].as_object().unwrap() {
        inputs.insert(name.clone(), tensor(value, Kind::Float));
    }
    inputs.insert("memory_s".into(), tensor(&fx["memory_s"], Kind::Float));
    inputs.insert("memory_t".into(), tensor(&fx["memory_t"], Kind::Float));
    for side in ["z_s", "z_t"] {
        let z = fx.get(format!("{side}_in")).and_then(Value::as_f64).unwrap_or(-1.0);
        inputs.insert(side.into(), Tensor::from_slice(&[z]));
    }
    assert_eq!(inputs.len(), vars.len(), "fixture and branch variables differ: {:?}", vars.keys());
    tch::no_grad(|| {
        for (name, value) in &inputs {
            let mut var =
                vars.get(name).unwrap_or_else(|| panic!("no variable {name}")).shallow_clone();
            var.copy_(value);
        }
    });
    Ok((vs, branch))
}

fn branch_config(fx: &Value, method: Method, head: Embed) -> DistillConfig {
    DistillConfig {
        embed: head,
        feat_dim: fx["feat_dim"].as_i64().unwrap(),
        nce_k: fx["nce_k"].as_i64().unwrap(),
        nce_t: float(&fx["nce_t"]),
        nce_mu: float(&fx["nce_mu"]),
        ..DistillConfig::for_method(method)
    }
}

#[test]
fn oracle_branches() -> Result<()> {
    let all = fixture("branches")?;
    for (case_name, fx) in all.as_object().unwrap() {
        let head = if fx["head"] == "linear" { Embed::Linear } else { Embed::Nonlinear };
        let (objectives, method) = if fx["objective"] == "crd" {
            (vec![Objective::Crd], Method::Crd)
        } else {
            (
                vec![Objective::Crcd(RelationForm::Gram), Objective::Crcd(RelationForm::Direct)],
                Method::Crcd,
            )
        };
        let cfg = branch_config(fx, method, head);
        let f_s = tensor(&fx["f_s"], Kind::Float);
        let f_t = tensor(&fx["f_t"], Kind::Float);
        let dims = (f_s.size()[1], f_t.size()[1]);
        let rows = tensor(&fx["rows"], Kind::Int64);
        let contrast = tensor(&fx["contrast"], Kind::Int64);
        for objective in objectives {
            let what = format!("{case_name} {objective:?}");
            let (vs, branch) = branch_from_fixture(fx, &cfg, objective, dims)?;
            let f_s = f_s.detach().set_requires_grad(true);
            let loss = branch.loss(&f_s, &f_t, &rows, &contrast)?;
            assert_close_f64(
                &format!("{what} loss"),
                loss.double_value(&[]),
                float(&fx["loss"]),
                ORACLE_RTOL,
            );
            let (z_s, z_t) = branch.norm_constants();
            assert_close_f64(&format!("{what} z_s"), z_s.unwrap(), float(&fx["z_s"]), ORACLE_RTOL);
            assert_close_f64(&format!("{what} z_t"), z_t.unwrap(), float(&fx["z_t"]), ORACLE_RTOL);
            let (bank_s, bank_t) = branch.banks();
            assert_close(
                &format!("{what} memory_s"),
                bank_s,
                &tensor(&fx["memory_s_after"], Kind::Double),
                ORACLE_RTOL,
            );
            assert_close(
                &format!("{what} memory_t"),
                bank_t,
                &tensor(&fx["memory_t_after"], Kind::Double),
                ORACLE_RTOL,
            );
            loss.backward();
            assert_close(
                &format!("{what} d loss/d f_s"),
                &f_s.grad(),
                &tensor(&fx["grad_f_s"], Kind::Double),
                ORACLE_RTOL,
            );
            let first = if head == Embed::Linear { "linear" } else { "linear.0" };
            let vars = vs.variables();
            for (side, key) in [("s", "grad_head_s_weight"), ("t", "grad_head_t_weight")] {
                let weight = &vars[&format!("embed_{side}.{first}.weight")];
                assert_close(
                    &format!("{what} d loss/d {key}"),
                    &weight.grad(),
                    &tensor(&fx[key], Kind::Double),
                    ORACLE_RTOL,
                );
            }
        }
    }
    Ok(())
}

#[test]
fn oracle_gradient_losses() -> Result<()> {
    let all = fixture("gradient_losses")?;
    for (kind_name, fx) in all.as_object().unwrap() {
        let labels = tensor(&fx["labels"], Kind::Int64);
        let f_t = tensor(&fx["f_t"], Kind::Float);
        let w_t = tensor(&fx["w_t"], Kind::Float);
        let b_t = tensor(&fx["b_t"], Kind::Float);
        let g_t = tch::no_grad(|| closed_form_gradient(&f_t, &w_t, &b_t, &labels))?;
        assert_close(
            &format!("{kind_name} g_t"),
            &g_t,
            &tensor(&fx["g_t"], Kind::Double),
            ORACLE_RTOL,
        );
        let objectives: Vec<Option<Objective>> = match kind_name.as_str() {
            "crcd" => vec![
                Some(Objective::Crcd(RelationForm::Gram)),
                Some(Objective::Crcd(RelationForm::Direct)),
            ],
            "crd" => vec![Some(Objective::Crd)],
            _ => vec![None],
        };
        for objective in objectives {
            for path in [GradientPath::ClosedForm, GradientPath::Autograd] {
                let what = format!("{kind_name} {objective:?} {path:?}");
                let f_s = tensor(&fx["f_s"], Kind::Float).set_requires_grad(true);
                let w_s = tensor(&fx["w_s"], Kind::Float).set_requires_grad(true);
                let b_s = tensor(&fx["b_s"], Kind::Float).set_requires_grad(true);
                let g_s = match path {
                    GradientPath::ClosedForm => closed_form_gradient(&f_s, &w_s, &b_s, &labels)?,
                    GradientPath::Autograd => {
                        autograd_gradient(&f_s, &f_s.linear(&w_s, Some(&b_s)), &labels, true)?
                    }
                };
                assert_close(
                    &format!("{what} g_s"),
                    &g_s,
                    &tensor(&fx["g_s"], Kind::Double),
                    ORACLE_RTOL,
                );
                let loss = match objective {
                    Some(objective) => {
                        let cfg = branch_config(fx, Method::Crcd, Embed::Linear);
                        let dims = (f_s.size()[1], f_t.size()[1]);
                        let (_vs, branch) = branch_from_fixture(fx, &cfg, objective, dims)?;
                        let rows = tensor(&fx["rows"], Kind::Int64);
                        let contrast = tensor(&fx["contrast"], Kind::Int64);
                        let loss = branch.loss(&g_s, &g_t, &rows, &contrast)?;
                        let (z_s, z_t) = branch.norm_constants();
                        assert_close_f64(
                            &format!("{what} z_s"),
                            z_s.unwrap(),
                            float(&fx["z_s"]),
                            ORACLE_RTOL,
                        );
                        assert_close_f64(
                            &format!("{what} z_t"),
                            z_t.unwrap(),
                            float(&fx["z_t"]),
                            ORACLE_RTOL,
                        );
                        loss
                    }
                    None => cosine_gradient_loss(&g_s, &g_t)?,
                };
                assert_close_f64(
                    &format!("{what} loss"),
                    loss.double_value(&[]),
                    float(&fx["loss"]),
                    ORACLE_RTOL,
                );
                loss.backward();
                for (name, var) in [("f_s", &f_s), ("w_s", &w_s), ("b_s", &b_s)] {
                    let expected = tensor(&fx[format!("grad_{name}")], Kind::Double);
                    assert_close(
                        &format!("{what} d loss/d {name}"),
                        &var.grad(),
                        &expected,
                        ORACLE_RTOL,
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn oracle_schedules() -> Result<()> {
    let fx = fixture("schedules")?;
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 100, "only {} schedule cases", cases.len());
    for case in cases {
        let kind: ScheduleKind = case["kind"].as_str().unwrap().parse()?;
        let ratio = |num: &str, den: &str| {
            case[num].as_i64().unwrap() as f64 / case[den].as_i64().unwrap() as f64
        };
        let cfg = DistillConfig {
            schedule: kind,
            schedule_step: ratio("step_num", "step_den"),
            exp_alpha0: float(&case["exp_alpha0"]),
            exp_factor: float(&case["exp_factor"]),
            ..DistillConfig::for_method(Method::Crcd)
        };
        let t = ratio("iteration", "total");
        let w = schedule_weights(&cfg, t);
        let what = format!(
            "{kind} at t = {}/{} (step {})",
            case["iteration"], case["total"], cfg.schedule_step
        );
        assert!(
            (w.task - float(&case["task"])).abs() <= 1e-12,
            "{what}: task {} vs {}",
            w.task,
            case["task"]
        );
        assert!(
            (w.mimic - float(&case["mimic"])).abs() <= 1e-12 * float(&case["mimic"]).abs().max(1.0),
            "{what}: mimic {} vs {}",
            w.mimic,
            case["mimic"]
        );
    }
    Ok(())
}

// ------------------------------------------------------------ distillers

const N_DATA: i64 = 60;
const CLASSES: i64 = 4;
const D_IN: i64 = 5;

/// A student (Linear backbone feeding a Linear classifier), a teacher's
/// constant outputs and one batch, all drawn from fixed seeds.
struct Setup {
    train_labels: Tensor,
    shapes: DistillShapes,
    _student_vs: nn::VarStore,
    backbone: nn::Linear,
    classifier: nn::Linear,
    x: Tensor,
    teacher: ModelOutput,
    teacher_weight: Tensor,
    teacher_bias: Tensor,
    labels: Tensor,
    indices: Tensor,
}

fn set_from(var: &Tensor, seed: u64, scale: f64) {
    let values = uniform(&var.size(), seed) * scale;
    tch::no_grad(|| var.shallow_clone().copy_(&values));
}

impl Setup {
    fn new(d_s: i64, d_t: i64) -> Setup {
        let train_labels = Tensor::arange(N_DATA, (Kind::Int64, CPU)).remainder(CLASSES);
        let student_vs = nn::VarStore::new(CPU);
        let root = student_vs.root();
        let backbone = nn::linear(&root / "backbone", D_IN, d_s, Default::default());
        let classifier = nn::linear(&root / "fc", d_s, CLASSES, Default::default());
        set_from(&backbone.ws, 101, 0.8);
        set_from(backbone.bs.as_ref().unwrap(), 102, 0.1);
        set_from(&classifier.ws, 103, 0.8);
        set_from(classifier.bs.as_ref().unwrap(), 104, 0.1);

        let indices = Tensor::from_slice(&[5i64, 12, 33, 40, 2, 51, 27, 18]);
        let labels = train_labels.index_select(0, &indices);
        let b = indices.size()[0];
        let x = uniform(&[b, D_IN], 105).to_kind(Kind::Float);
        let f_t = uniform(&[b, d_t], 106).to_kind(Kind::Float);
        let teacher_weight = uniform(&[CLASSES, d_t], 107).to_kind(Kind::Float);
        let teacher_bias = (uniform(&[CLASSES], 108) * 0.1).to_kind(Kind::Float);

        let logits = f_t.linear(&teacher_weight, Some(&teacher_bias));
        let teacher =
            ModelOutput { logits, feats: vec![f_t.shallow_clone()], preact_feats: vec![f_t] };
        let shapes = DistillShapes {
            student_dim: d_s,
            teacher_dim: d_t,
            num_classes: CLASSES,
            num_data: N_DATA,
        };
        Setup {
            train_labels,
            shapes,
            _student_vs: student_vs,
            backbone,
            classifier,
            x,
            teacher,
            teacher_weight,
            teacher_bias,
            labels,
            indices,
        }
    }

    fn student(&self) -> ModelOutput {
        let f = self.backbone.forward(&self.x);
        let logits = self.classifier.forward(&f);
        ModelOutput { logits, feats: vec![f.shallow_clone()], preact_feats: vec![f] }
    }

    fn input<'a>(&'a self, student: &'a ModelOutput, progress: f64, step: i64) -> StepInput<'a> {
        StepInput {
            student,
            teacher: &self.teacher,
            student_classifier: (&self.classifier.ws, self.classifier.bs.as_ref().unwrap()),
            teacher_classifier: (&self.teacher_weight, &self.teacher_bias),
            labels: &self.labels,
            indices: &self.indices,
            progress,
            step,
        }
    }

    fn build(
        &self,
        cfg: &DistillConfig,
        vs: &nn::VarStore,
        seed: u64,
    ) -> Result<Box<dyn Distiller>> {
        build(cfg, &vs.root(), &self.shapes, &self.train_labels, seed)
    }
}

fn small_config(method: Method) -> DistillConfig {
    DistillConfig { nce_k: 10, feat_dim: 8, ..DistillConfig::for_method(method) }
}

fn term<'a>(terms: &'a [LossTerm], name: &str) -> &'a LossTerm {
    terms.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no term {name}"))
}

/// Each term's name and weight, the weight rounded to 9 decimals.
type TermWeights = Vec<(&'static str, f64)>;

fn names_and_weights(terms: &[LossTerm]) -> TermWeights {
    terms.iter().map(|t| (t.name, (t.weight * 1e9).round() / 1e9)).collect()
}

#[test]
fn terms_follow_method_and_schedule() -> Result<()> {
    let setup = Setup::new(6, 7);
    let student = setup.student();
    let cases: Vec<(Method, f64, TermWeights)> = vec![
        (Method::Vanilla, 0.5, vec![("loss_ce", 1.0)]),
        (Method::Kd, 0.5, vec![("loss_ce", 0.1), ("loss_kd", 0.9)]),
        (Method::Crd, 0.5, vec![("loss_ce", 1.0), ("loss_crd", 0.8)]),
        (Method::CrdKd, 0.5, vec![("loss_ce", 1.0), ("loss_kd", 1.0), ("loss_crd", 0.8)]),
        (
            Method::Crcd,
            0.5,
            vec![("loss_ce", 1.0), ("loss_kd", 0.9), ("loss_feat", 1.0), ("loss_grad", 1.0)],
        ),
        // CRCD's step schedule turns the mimic terms off from t = 24/25.
        (
            Method::Crcd,
            0.97,
            vec![("loss_ce", 1.0), ("loss_kd", 0.0), ("loss_feat", 0.0), ("loss_grad", 0.0)],
        ),
    ];
    for (method, t, expected) in cases {
        let vs = nn::VarStore::new(CPU);
        let mut distiller = setup.build(&small_config(method), &vs, 0)?;
        let terms = distiller.losses(&setup.input(&student, t, 0))?;
        assert_eq!(names_and_weights(&terms), expected, "{method} at t = {t}");
        for term in &terms {
            let value = term.value.double_value(&[]);
            assert!(value.is_finite(), "{method} {}: {value}", term.name);
            assert!(value > 0.0, "{method} {}: {value}", term.name);
        }
    }
    Ok(())
}

#[test]
fn crcd_weights_include_lambda_g() -> Result<()> {
    let setup = Setup::new(6, 7);
    let student = setup.student();
    let cfg = DistillConfig {
        beta: 2.0,
        lambda_g: 0.25,
        schedule: ScheduleKind::LinearDecrease,
        ..small_config(Method::Crcd)
    };
    let vs = nn::VarStore::new(CPU);
    let mut distiller = setup.build(&cfg, &vs, 0)?;
    // t = 0.5: w_mimic = 2 − 1.5 = 0.5 and w_task = 0.5.
    let terms = distiller.losses(&setup.input(&student, 0.5, 0))?;
    assert_eq!(
        names_and_weights(&terms),
        vec![("loss_ce", 0.5), ("loss_kd", 0.45), ("loss_feat", 1.0), ("loss_grad", 0.25)]
    );
    Ok(())
}

#[test]
fn grad_times_kd_multiplies_by_kd() -> Result<()> {
    let setup = Setup::new(6, 6);
    let student = setup.student();
    let cfg = DistillConfig {
        elements: vec![Element::Gradient],
        gradient_loss: GradientLoss::Cosine,
        grad_times_kd: true,
        lambda_g: 0.5,
        ..small_config(Method::Crcd)
    };
    let vs = nn::VarStore::new(CPU);
    let mut distiller = setup.build(&cfg, &vs, 0)?;
    // t past the step point: w_mimic = 0, but the release's term is not
    // scheduled.
    let terms = distiller.losses(&setup.input(&student, 0.99, 0))?;
    let grad = term(&terms, "loss_grad");
    assert!((grad.weight - 0.9 * 0.5).abs() < 1e-12, "weight {}", grad.weight);

    let kd = term(&terms, "loss_kd").value.double_value(&[]);
    let g_s = closed_form_gradient(
        setup.student().feats.last().unwrap(),
        &setup.classifier.ws,
        setup.classifier.bs.as_ref().unwrap(),
        &setup.labels,
    )?;
    let g_t = closed_form_gradient(
        setup.teacher.feats.last().unwrap(),
        &setup.teacher_weight,
        &setup.teacher_bias,
        &setup.labels,
    )?;
    let cosine = cosine_gradient_loss(&g_s, &g_t)?.double_value(&[]);
    assert_close_f64("KD · L_grad", grad.value.double_value(&[]), kd * cosine, 1e-6);
    Ok(())
}

#[test]
fn gradient_loss_reaches_backbone_and_classifier() -> Result<()> {
    for (loss, path) in [
        (GradientLoss::Crcd, GradientPath::ClosedForm),
        (GradientLoss::Crcd, GradientPath::Autograd),
        (GradientLoss::Crd, GradientPath::ClosedForm),
        (GradientLoss::Cosine, GradientPath::ClosedForm),
        (GradientLoss::Cosine, GradientPath::Autograd),
    ] {
        let setup = Setup::new(6, 6);
        let student = setup.student();
        let cfg = DistillConfig {
            elements: vec![Element::Gradient],
            gradient_loss: loss,
            gradient_path: path,
            ..small_config(Method::Crcd)
        };
        let vs = nn::VarStore::new(CPU);
        let mut distiller = setup.build(&cfg, &vs, 0)?;
        let terms = distiller.losses(&setup.input(&student, 0.0, 0))?;
        let early = setup.backbone.ws.grad();
        assert!(!early.defined(), "{loss:?} {path:?}: losses() accumulated a gradient");
        // Only the gradient term: CE and KD would reach the backbone anyway.
        term(&terms, "loss_grad").value.backward();
        for (name, var) in [
            ("backbone weight", &setup.backbone.ws),
            ("classifier weight", &setup.classifier.ws),
            ("classifier bias", setup.classifier.bs.as_ref().unwrap()),
        ] {
            let norm = var.grad().norm().double_value(&[]);
            assert!(norm > 1e-8, "{loss:?} {path:?}: {name} gradient norm {norm}");
        }
    }
    Ok(())
}

/// Runs two steps of a distiller of each config, both starting from the
/// variables of the first, and returns every term's value and its gradient
/// with respect to the backbone weight.
fn paired_terms(
    setup: &Setup,
    base: &DistillConfig,
    other: &DistillConfig,
) -> Result<Vec<Vec<(String, f64, Tensor)>>> {
    let vs_a = nn::VarStore::new(CPU);
    let vs_b = nn::VarStore::new(CPU);
    let mut a = setup.build(base, &vs_a, 3)?;
    let mut b = setup.build(other, &vs_b, 3)?;
    let mut vs_b = vs_b;
    vs_b.copy(&vs_a)?;
    let mut out = vec![];
    for distiller in [&mut a, &mut b] {
        let mut terms = vec![];
        for step in 0..2 {
            let student = setup.student();
            for t in distiller.losses(&setup.input(&student, 0.1, step))? {
                let value = t.value.double_value(&[]);
                let mut grads =
                    Tensor::f_run_backward(&[&t.value], &[&setup.backbone.ws], true, false)?;
                terms.push((format!("{} step {step}", t.name), value, grads.remove(0)));
            }
        }
        out.push(terms);
    }
    Ok(out)
}

#[test]
fn relation_forms_agree_through_distiller() -> Result<()> {
    let setup = Setup::new(6, 7);
    let gram = small_config(Method::Crcd);
    let direct = DistillConfig { relation_form: RelationForm::Direct, ..gram.clone() };
    let runs = paired_terms(&setup, &gram, &direct)?;
    assert_eq!(runs[0].len(), 8);
    for ((name, value_a, grad_a), (_, value_b, grad_b)) in runs[0].iter().zip(&runs[1]) {
        assert_close_f64(&format!("{name} Gram vs direct"), *value_a, *value_b, 1e-5);
        assert_close(&format!("{name} backbone gradient"), grad_a, grad_b, 1e-4);
    }
    Ok(())
}

#[test]
fn gradient_paths_agree_through_distiller() -> Result<()> {
    let setup = Setup::new(6, 7);
    let closed = small_config(Method::Crcd);
    let auto = DistillConfig { gradient_path: GradientPath::Autograd, ..closed.clone() };
    let runs = paired_terms(&setup, &closed, &auto)?;
    for ((name, value_a, grad_a), (_, value_b, grad_b)) in runs[0].iter().zip(&runs[1]) {
        assert_close_f64(&format!("{name} closed form vs autograd"), *value_a, *value_b, 1e-5);
        assert_close(&format!("{name} backbone gradient"), grad_a, grad_b, 1e-4);
    }
    Ok(())
}

#[test]
fn checkpoint_round_trip_restores_state() -> Result<()> {
    let setup = Setup::new(6, 7);
    let cfg = DistillConfig { sampling: Sampling::Queue, ..small_config(Method::Crcd) };
    let vs = nn::VarStore::new(CPU);
    let mut distiller = setup.build(&cfg, &vs, 1)?;
    for step in 0..2 {
        let student = setup.student();
        distiller.losses(&setup.input(&student, 0.2, step))?;
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("distill.safetensors");
    vs.save(&path)?;

    // Another seed gives other banks and queue until the checkpoint loads.
    let mut restored_vs = nn::VarStore::new(CPU);
    let mut restored = setup.build(&cfg, &restored_vs, 2)?;
    restored_vs.load(&path)?;
    let saved = vs.variables();
    let loaded = restored_vs.variables();
    assert_eq!(saved.len(), loaded.len());
    for name in ["feat.memory_s", "feat.memory_t", "grad.memory_s", "feat.z_s", "grad.z_t", "queue"]
    {
        assert!(saved.contains_key(name), "no variable {name}: {:?}", saved.keys());
    }
    for (name, value) in &saved {
        let other = &loaded[name];
        assert_eq!(value.kind(), other.kind(), "{name} kind");
        assert!(value.equal(other), "{name} differs after loading");
    }
    assert!(saved["feat.z_s"].double_value(&[0]) > 0.0, "Z unset after two steps");

    let student = setup.student();
    let next = distiller.losses(&setup.input(&student, 0.2, 2))?;
    let student = setup.student();
    let next_restored = restored.losses(&setup.input(&student, 0.2, 2))?;
    for (a, b) in next.iter().zip(&next_restored) {
        assert_eq!(a.name, b.name);
        assert_eq!(
            a.value.double_value(&[]),
            b.value.double_value(&[]),
            "{} after loading",
            a.name
        );
    }
    Ok(())
}

#[test]
fn z_is_set_once_and_banks_move() -> Result<()> {
    let setup = Setup::new(6, 7);
    let vs = nn::VarStore::new(CPU);
    let mut distiller = setup.build(&small_config(Method::Crd), &vs, 0)?;
    let vars = vs.variables();
    assert_eq!(vars["feat.z_s"].double_value(&[0]), -1.0);
    let bank_before = vars["feat.memory_s"].copy();
    let student = setup.student();
    distiller.losses(&setup.input(&student, 0.0, 0))?;
    let z_first = vars["feat.z_s"].double_value(&[0]);
    assert!(z_first > 0.0);
    let bank_after = &vars["feat.memory_s"];
    let moved =
        (bank_after - &bank_before).abs().sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let moved_rows: Vec<i64> = Vec::try_from(moved.gt(0.0).nonzero().squeeze_dim(1))?;
    let mut batch: Vec<i64> = Vec::try_from(&setup.indices)?;
    batch.sort();
    assert_eq!(moved_rows, batch, "only the batch's rows move");
    let student = setup.student();
    distiller.losses(&setup.input(&student, 0.0, 1))?;
    assert_eq!(vars["feat.z_s"].double_value(&[0]), z_first, "Z changed at the second step");
    Ok(())
}

#[test]
fn embed_none_keeps_feature_width() -> Result<()> {
    let setup = Setup::new(6, 6);
    let cfg = DistillConfig { embed: Embed::None, ..small_config(Method::Crcd) };
    let vs = nn::VarStore::new(CPU);
    let mut distiller = setup.build(&cfg, &vs, 0)?;
    assert_eq!(vs.variables()["feat.memory_s"].size(), vec![N_DATA, 6]);
    assert!(vs.trainable_variables().is_empty(), "embed none has no trainable variables");
    let student = setup.student();
    let terms = distiller.losses(&setup.input(&student, 0.0, 0))?;
    assert!(term(&terms, "loss_feat").value.double_value(&[]).is_finite());
    Ok(())
}

#[test]
fn teacher_train_mode_follows_config() -> Result<()> {
    let setup = Setup::new(6, 7);
    for method in [Method::Kd, Method::Crd, Method::Crcd] {
        for flag in [false, true] {
            let cfg = DistillConfig { teacher_train_mode: flag, ..small_config(method) };
            let vs = nn::VarStore::new(CPU);
            assert_eq!(setup.build(&cfg, &vs, 0)?.teacher_train_mode(), flag, "{method}");
        }
    }
    Ok(())
}

// ------------------------------------------------------------ input errors

fn build_error(setup: &Setup, cfg: &DistillConfig) -> String {
    let vs = nn::VarStore::new(CPU);
    match setup.build(cfg, &vs, 0) {
        Ok(_) => panic!("build accepted {cfg:?}"),
        Err(err) => format!("{err:#}"),
    }
}

#[test]
fn build_rejects_embed_none_with_unequal_widths() {
    let setup = Setup::new(6, 7);
    for method in [Method::Crd, Method::Crcd] {
        let cfg = DistillConfig { embed: Embed::None, ..small_config(method) };
        let err = build_error(&setup, &cfg);
        assert!(err.contains("student's is 6"), "{err}");
        assert!(err.contains("teacher's is 7"), "{err}");
        assert!(err.contains("embed linear"), "{err}");
    }
}

#[test]
fn build_rejects_cosine_with_unequal_widths() {
    let setup = Setup::new(6, 7);
    let cfg = DistillConfig { gradient_loss: GradientLoss::Cosine, ..small_config(Method::Crcd) };
    let err = build_error(&setup, &cfg);
    assert!(err.contains("student's is 6"), "{err}");
    assert!(err.contains("teacher's is 7"), "{err}");
    assert!(err.contains("gradient_loss crcd or crd"), "{err}");
}

#[test]
fn build_rejects_zero_feat_dim() {
    let setup = Setup::new(6, 7);
    let err = build_error(&setup, &DistillConfig { feat_dim: 0, ..small_config(Method::Crcd) });
    assert!(err.contains("feat_dim 0"), "{err}");
    assert!(err.contains("at least 1"), "{err}");
}

#[test]
fn build_rejects_queue_larger_than_dataset() {
    let setup = Setup::new(6, 7);
    let cfg = DistillConfig { sampling: Sampling::Queue, nce_k: 61, ..small_config(Method::Crd) };
    let err = build_error(&setup, &cfg);
    assert!(err.contains("nce_k 61"), "{err}");
    assert!(err.contains("pool of 60"), "{err}");
    assert!(err.contains("at most 60"), "{err}");
}

#[test]
fn build_rejects_single_class_exact_sampling() {
    let mut setup = Setup::new(6, 7);
    setup.train_labels = Tensor::zeros([N_DATA], (Kind::Int64, CPU));
    let err = build_error(&setup, &small_config(Method::Crcd));
    assert!(err.contains("same label"), "{err}");
    assert!(err.contains("sampling queue"), "{err}");
}

#[test]
fn losses_reject_out_of_range_indices() -> Result<()> {
    let mut setup = Setup::new(6, 7);
    let vs = nn::VarStore::new(CPU);
    let mut distiller = setup.build(&small_config(Method::Crcd), &vs, 0)?;
    setup.indices = Tensor::from_slice(&[5i64, 12, 33, 40, 2, 51, 27, 60]);
    let student = setup.student();
    let err = match distiller.losses(&setup.input(&student, 0.0, 0)) {
        Ok(_) => panic!("index 60 accepted with N = 60"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("[2, 60]"), "{err}");
    assert!(err.contains("num_data is 60"), "{err}");
    Ok(())
}

// ------------------------------------------------------------ sampling

fn sampler(mode: Sampling, k: i64, seed: u64) -> Result<(nn::VarStore, ContrastSampler, Vec<i64>)> {
    let vs = nn::VarStore::new(CPU);
    let labels = Tensor::arange(N_DATA, (Kind::Int64, CPU)).remainder(CLASSES);
    let sampler = ContrastSampler::new(&vs.root(), mode, k, &labels, seed)?;
    Ok((vs, sampler, Vec::try_from(&labels)?))
}

fn rows_of(contrast: &Tensor) -> Vec<Vec<i64>> {
    let (b, _k1) = contrast.size2().unwrap();
    (0..b).map(|i| Vec::try_from(contrast.get(i)).unwrap()).collect()
}

#[test]
fn exact_sampling_draws_distinct_other_class_negatives() -> Result<()> {
    let (_vs, sampler, labels) = sampler(Sampling::Exact, 20, 4)?;
    let batch = Tensor::from_slice(&[0i64, 7, 13, 58]);
    let contrast = sampler.sample(&batch, 5)?;
    assert_eq!(contrast.size(), vec![4, 21]);
    for (row, drawn) in Vec::<i64>::try_from(&batch)?.iter().zip(rows_of(&contrast)) {
        assert_eq!(drawn[0], *row, "the positive is the sample itself");
        let mut negatives = drawn[1..].to_vec();
        assert!(negatives.iter().all(|&n| labels[n as usize] != labels[*row as usize]));
        negatives.sort();
        negatives.dedup();
        assert_eq!(negatives.len(), 20, "K ≤ pool draws without replacement");
    }
    Ok(())
}

#[test]
fn sampling_repeats_for_same_seed_and_step() -> Result<()> {
    let batch = Tensor::from_slice(&[0i64, 7, 13, 58]);
    for mode in [Sampling::Exact, Sampling::Relax] {
        let (_vs, a, _) = sampler(mode, 12, 4)?;
        let (_vs2, b, _) = sampler(mode, 12, 4)?;
        let (_vs3, c, _) = sampler(mode, 12, 5)?;
        assert!(a.sample(&batch, 9)?.equal(&b.sample(&batch, 9)?), "{mode}: same seed and step");
        assert!(!a.sample(&batch, 9)?.equal(&a.sample(&batch, 10)?), "{mode}: another step");
        assert!(!a.sample(&batch, 9)?.equal(&c.sample(&batch, 9)?), "{mode}: another seed");
    }
    Ok(())
}

#[test]
fn exact_sampling_replaces_when_k_exceeds_pool() -> Result<()> {
    // 45 samples of other classes, 50 negatives.
    let (_vs, sampler, labels) = sampler(Sampling::Exact, 50, 4)?;
    let contrast = sampler.sample(&Tensor::from_slice(&[3i64]), 0)?;
    let drawn = &rows_of(&contrast)[0];
    assert_eq!(drawn.len(), 51);
    assert!(drawn[1..].iter().all(|&n| labels[n as usize] != labels[3]));
    Ok(())
}

#[test]
fn relax_sampling_positive_shares_class() -> Result<()> {
    let (_vs, sampler, labels) = sampler(Sampling::Relax, 10, 4)?;
    let batch: Vec<i64> = (0..N_DATA).collect();
    let contrast = sampler.sample(&Tensor::from_slice(&batch), 3)?;
    let mut moved = 0;
    for (row, drawn) in batch.iter().zip(rows_of(&contrast)) {
        assert_eq!(labels[drawn[0] as usize], labels[*row as usize]);
        assert!(drawn[1..].iter().all(|&n| labels[n as usize] != labels[*row as usize]));
        moved += usize::from(drawn[0] != *row);
    }
    assert!(moved > N_DATA as usize / 2, "relax picked the sample itself {moved} times of 60");
    Ok(())
}

#[test]
fn queue_sampling_uses_recent_rows() -> Result<()> {
    let (_vs, sampler, _) = sampler(Sampling::Queue, 6, 4)?;
    let initial: Vec<i64> = Vec::try_from(sampler.queue().unwrap())?;
    let mut distinct = initial.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "the queue starts with distinct rows");
    let batch = Tensor::from_slice(&[11i64, 22, 33, 44]);
    let contrast = sampler.sample(&batch, 0)?;
    for (row, drawn) in [11, 22, 33, 44].iter().zip(rows_of(&contrast)) {
        assert_eq!(drawn[0], *row);
        assert_eq!(drawn[1..], initial[..]);
    }
    sampler.push(&batch)?;
    let after: Vec<i64> = Vec::try_from(sampler.queue().unwrap())?;
    assert_eq!(after, [initial[4], initial[5], 11, 22, 33, 44]);
    Ok(())
}
