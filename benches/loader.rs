//! Throughput of the augmented training batches: images per second of
//! `Dataset::train_batches` at batch size 64 (pad, random crop, flip,
//! normalise) over a CIFAR-sized synthetic set of 50,000 32x32 RGB images
//! on the CPU.
//!
//! The second benchmark limits libtorch to one intra-op thread, which is
//! faster when other processes already keep every core busy.
//!
//! Run with `cargo bench --bench loader`.

use std::hint::black_box;
use std::time::Duration;

use crcd::data::synthetic;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Images in the CIFAR training split.
const IMAGES: usize = 50_000;
const BATCH_SIZE: i64 = 64;
/// Batches drawn per measured iteration: enough to average over many
/// batches while one iteration stays short (about 60 ms with one thread on
/// the 2-core development machine).
const BATCHES: usize = 100;

fn train_batches(c: &mut Criterion) {
    let dataset = synthetic::generate(100, IMAGES, 0);
    let mut group = c.benchmark_group("loader");
    group.throughput(Throughput::Elements(BATCHES as u64 * BATCH_SIZE as u64));
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    let mut epoch = 0;
    let mut draw_batches = || {
        // A new epoch each time, so the permutation and crops are drawn
        // afresh as in training.
        epoch += 1;
        for batch in dataset.train_batches(BATCH_SIZE, 0, epoch).take(BATCHES) {
            black_box(&batch.images);
        }
    };
    group.bench_function("train_batches_64", |b| b.iter(&mut draw_batches));
    tch::set_num_threads(1);
    group.bench_function("train_batches_64_one_thread", |b| b.iter(&mut draw_batches));
    group.finish();
}

criterion_group!(benches, train_batches);
criterion_main!(benches);
