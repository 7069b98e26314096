//! Images per second of one optimizer step at batch 64 on the CPU: plain
//! cross-entropy training of resnet8x4 and resnet32x4, and one CRCD
//! distillation step (both elements) from resnet32x4 to resnet8x4.
//!
//! Run with `cargo bench --bench train_step`. libtorch uses the threads it
//! is given by `CRCD_BENCH_THREADS` (default: the number of cores).

use std::time::Duration;

use crcd::config::{DistillConfig, Method};
use crcd::data::synthetic;
use crcd::distill::{self, DistillShapes};
use crcd::models::{self, Arch};
use crcd::train::{train_step, Sgd, StepNets};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tch::{nn, Device};

const BATCH_SIZE: i64 = 64;
const NUM_CLASSES: i64 = 100;
/// Training images, so that the memory banks have CIFAR's row count.
const IMAGES: usize = 50_000;

fn threads() -> i32 {
    std::env::var("CRCD_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| crcd::device::default_threads() as i32)
}

fn train_steps(c: &mut Criterion) {
    tch::set_num_threads(threads());
    let data = synthetic::generate(NUM_CLASSES, IMAGES, 0);
    let batch = data.train_batches(BATCH_SIZE, 0, 0).next().expect("one batch");
    let mut group = c.benchmark_group("train_step");
    group.throughput(Throughput::Elements(BATCH_SIZE as u64));
    group.sample_size(10).measurement_time(Duration::from_secs(20));

    for arch in [Arch::Resnet8x4, Arch::Resnet32x4] {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = models::build(arch, &vs.root(), NUM_CLASSES);
        let mut sgd = Sgd::new(&vs, 0.9, 5e-4);
        let nets = StepNets { student: net.as_ref(), teacher: None };
        group.bench_function(format!("{arch}_ce"), |b| {
            b.iter(|| train_step(&nets, None, &mut sgd, &batch, 0.05, 0, 0.0).expect("finite loss"))
        });
    }

    tch::manual_seed(0);
    let teacher_vs = nn::VarStore::new(Device::Cpu);
    let teacher = models::build(Arch::Resnet32x4, &teacher_vs.root(), NUM_CLASSES);
    let vs = nn::VarStore::new(Device::Cpu);
    let student = models::build(Arch::Resnet8x4, &vs.root(), NUM_CLASSES);
    let shapes = DistillShapes {
        student_dim: student.feat_dim(),
        teacher_dim: teacher.feat_dim(),
        num_classes: NUM_CLASSES,
        num_data: data.len(),
    };
    let cfg = DistillConfig::for_method(Method::Crcd);
    let mut distiller = distill::build(&cfg, &(vs.root() / "distill"), &shapes, &data.labels, 0)
        .expect("valid CRCD settings");
    let mut sgd = Sgd::new(&vs, 0.9, 5e-4);
    let nets = StepNets { student: student.as_ref(), teacher: Some(teacher.as_ref()) };
    let mut step = 0;
    group.bench_function("resnet32x4_to_resnet8x4_crcd", |b| {
        b.iter(|| {
            step += 1;
            train_step(&nets, Some(distiller.as_mut()), &mut sgd, &batch, 0.05, step, 0.1)
                .expect("finite loss")
        })
    });
    group.finish();
}

criterion_group!(benches, train_steps);
criterion_main!(benches);
