//! Throughput of the augmented training batches: images per second of
//! `Dataset::train_batches` at batch size 64 (pad, random crop, flip,
//! normalise) over a CIFAR-sized synthetic set of 50,000 32x32 RGB images
//! on the CPU.
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
/// batches, few enough to keep one iteration well under a second.
const BATCHES: usize = 100;

fn train_batches(c: &mut Criterion) {
    let dataset = synthetic::generate(100, IMAGES, 0);
    let mut group = c.benchmark_group("loader");
    group.throughput(Throughput::Elements(BATCHES as u64 * BATCH_SIZE as u64));
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    let mut epoch = 0;
    group.bench_function("train_batches_64", |b| {
        b.iter(|| {
            // A new epoch each time, so the permutation and crops are drawn
            // afresh as in training.
            epoch += 1;
            for batch in dataset.train_batches(BATCH_SIZE, 0, epoch).take(BATCHES) {
                black_box(&batch.images);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, train_batches);
criterion_main!(benches);
