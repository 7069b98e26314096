//! Regression snapshots of every loss term over the first optimizer steps of
//! every method variant, so that CI fails when a loss value drifts.
//!
//! Values are written with 5 significant digits (4 decimals of the
//! mantissa), so any change of one part in 10^4 or more shows. They repeat
//! across machines of one kind because the test runs libtorch on one thread
//! with its CPU kernels pinned (`ATEN_CPU_CAPABILITY=avx2` from
//! `.cargo/config.toml`). Update after an intended change with
//! `INSTA_UPDATE=always cargo test --test loss_snapshots`, and review the
//! diff.

use std::fmt::Write;

use crcd::config::{
    DistillConfig, Element, Embed, GradientLoss, GradientPath, Method, RelationForm, Sampling,
    ScheduleKind,
};
use crcd::data::{synthetic, Dataset};
use crcd::distill::{self, DistillShapes};
use crcd::models::{self, Arch};
use crcd::train::{train_step, Sgd, StepNets};
use tch::{nn, Device};

/// Settings of the `smoke` profile: synthetic data, batch 16, small K.
const BATCH_SIZE: i64 = 16;
const TRAIN_IMAGES: usize = 256;
const NCE_K: i64 = 16;
/// Steps per variant; the schedules are probed at fixed progress values.
const STEPS: i64 = 3;
const PROGRESS: [f64; STEPS as usize] = [0.0, 0.5, 0.97];

fn variants() -> Vec<(&'static str, DistillConfig)> {
    let crcd = || DistillConfig { nce_k: NCE_K, ..DistillConfig::for_method(Method::Crcd) };
    let with = |f: &dyn Fn(&mut DistillConfig)| {
        let mut c = crcd();
        f(&mut c);
        c
    };
    let mut list = vec![];
    for method in [Method::Vanilla, Method::Kd, Method::Crd, Method::CrdKd] {
        let name = match method {
            Method::Vanilla => "vanilla",
            Method::Kd => "kd",
            Method::Crd => "crd",
            _ => "crd_kd",
        };
        list.push((name, DistillConfig { nce_k: NCE_K, ..DistillConfig::for_method(method) }));
    }
    list.push(("crcd", crcd()));
    list.push(("crcd_feature", with(&|c| c.elements = vec![Element::Feature])));
    list.push(("crcd_gradient", with(&|c| c.elements = vec![Element::Gradient])));
    list.push(("crcd_gradient_crd", with(&|c| c.gradient_loss = GradientLoss::Crd)));
    list.push(("crcd_gradient_cosine", with(&|c| c.gradient_loss = GradientLoss::Cosine)));
    list.push(("crcd_autograd", with(&|c| c.gradient_path = GradientPath::Autograd)));
    list.push(("crcd_direct", with(&|c| c.relation_form = RelationForm::Direct)));
    list.push(("crcd_nonlinear", with(&|c| c.embed = Embed::Nonlinear)));
    list.push(("crcd_embed_none", with(&|c| c.embed = Embed::None)));
    list.push(("crcd_relax", with(&|c| c.sampling = Sampling::Relax)));
    list.push(("crcd_queue", with(&|c| c.sampling = Sampling::Queue)));
    for (name, kind) in [
        ("crcd_constant", ScheduleKind::Constant),
        ("crcd_linear_decrease", ScheduleKind::LinearDecrease),
        ("crcd_linear_decrease2", ScheduleKind::LinearDecrease2),
        ("crcd_exp_increase", ScheduleKind::ExpIncrease),
    ] {
        list.push((name, with(&|c| c.schedule = kind)));
    }
    list.push(("crcd_grad_times_kd", with(&|c| c.grad_times_kd = true)));
    list.push(("crcd_teacher_train_mode", with(&|c| c.teacher_train_mode = true)));
    list
}

fn round_significant(value: f64) -> String {
    format!("{value:.4e}")
}

/// Runs `STEPS` optimizer steps of `cfg` from fixed initial weights and
/// returns one line per step with each term's value and weight.
fn loss_trace(cfg: &DistillConfig, data: &Dataset) -> String {
    tch::manual_seed(1);
    let teacher_vs = nn::VarStore::new(Device::Cpu);
    // resnet8 on both sides keeps the widths equal for `embed none`.
    let teacher = models::build(Arch::Resnet8, &teacher_vs.root(), data.num_classes);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let student = models::build(Arch::Resnet8, &vs.root(), data.num_classes);
    let shapes = DistillShapes {
        student_dim: student.feat_dim(),
        teacher_dim: teacher.feat_dim(),
        num_classes: data.num_classes,
        num_data: data.len(),
    };
    let mut distiller =
        distill::build(cfg, &(vs.root() / "distill"), &shapes, &data.labels, 0).unwrap();
    let mut sgd = Sgd::new(&vs, 0.9, 5e-4);
    let nets = StepNets { student: student.as_ref(), teacher: Some(teacher.as_ref()) };
    let mut trace = String::new();
    for (step, batch) in data.train_batches(BATCH_SIZE, 0, 0).take(STEPS as usize).enumerate() {
        let progress = PROGRESS[step];
        let outcome = train_step(
            &nets,
            Some(distiller.as_mut()),
            &mut sgd,
            &batch,
            0.05,
            step as i64,
            progress,
        )
        .unwrap();
        write!(trace, "step {step}: total {}", round_significant(outcome.loss)).unwrap();
        for (name, value, weight) in outcome.terms {
            write!(
                trace,
                ", {name} {} (w {})",
                round_significant(value),
                round_significant(weight)
            )
            .unwrap();
        }
        trace.push('\n');
    }
    trace
}

#[test]
fn loss_terms_of_every_variant() {
    tch::set_num_threads(1);
    let data = synthetic::generate(10, TRAIN_IMAGES, 0);
    let mut report = String::new();
    for (name, cfg) in variants() {
        writeln!(report, "[{name}]").unwrap();
        report.push_str(&loss_trace(&cfg, &data));
    }
    insta::assert_snapshot!("loss-terms", report);
}
