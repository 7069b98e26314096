//! Time and peak memory of CRCD's relation loss (Zhu et al., CVPR 2021,
//! <https://arxiv.org/abs/2103.16367>): forward and backward of both sides,
//! Gram form against the direct form, at B = 64 and m = 128.
//!
//! Run with `cargo bench --bench crcd_loss`. Criterion reports the time per
//! forward+backward. Before that, the benchmark runs every case once more in
//! a child process of its own and reports its peak memory. The child runs one
//! step to set Z, resets the kernel's peak-RSS counter
//! (`echo 5 > /proc/self/clear_refs`), runs one more forward+backward, and
//! prints VmHWM minus the VmRSS it started from (both from
//! /proc/self/status, Linux only). A fixed glibc mmap threshold makes freed
//! tensors leave RSS at once. The
//! direct form runs only at K = 500, where its (B, B, K+1, m) tensor already
//! takes 1 GiB per side. Set `CRCD_BENCH_SKIP_PEAKS=1` to skip the memory
//! report, and `CRCD_BENCH_DEVICE=cuda` to time on a GPU (the peak memory is
//! then the host's only). libtorch runs one intra-op thread unless
//! `CRCD_BENCH_THREADS` says otherwise, so that other processes on the
//! machine disturb the figures less.

use std::process::Command;

use criterion::{criterion_group, BenchmarkId, Criterion};
use tch::{nn, Device, Kind, Tensor};

use crcd::config::RelationForm;
use crcd::distill::memory::NormConstant;
use crcd::distill::relation::relation_loss;

const BATCH: i64 = 64;
const FEAT_DIM: i64 = 128;
/// CIFAR-100's training-set size, the rows of each bank.
const N_DATA: i64 = 50_000;
/// The authors' release default, and two larger K.
const KS: [i64; 3] = [500, 4096, 16384];
/// The release's contrast temperature.
const TEMPERATURE: f64 = 0.05;
/// Largest K at which the direct form runs: B·B·(K+1)·m f32 numbers are
/// 1 GiB per side at K = 500 and 8 GiB at K = 4096.
const DIRECT_MAX_K: i64 = 500;
/// Environment variable that makes the binary measure one case's peak memory
/// ("gram:500") instead of benchmarking.
const PEAK_CASE_ENV: &str = "CRCD_BENCH_PEAK_CASE";
/// Environment variable that skips the peak-memory report.
const SKIP_PEAKS_ENV: &str = "CRCD_BENCH_SKIP_PEAKS";

fn device() -> Device {
    match std::env::var("CRCD_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

/// Inputs of both sides of one loss: unit embeddings that require grad,
/// banks of unit rows, the batch's rows and contrast indices.
struct Inputs {
    embed_s: Tensor,
    embed_t: Tensor,
    bank_s: Tensor,
    bank_t: Tensor,
    rows: Tensor,
    contrast: Tensor,
    _vs: nn::VarStore,
    z_s: NormConstant,
    z_t: NormConstant,
}

fn unit_rows(rows: i64, dim: i64, device: Device) -> Tensor {
    let x = Tensor::randn([rows, dim], (Kind::Float, device));
    &x / x.norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
}

fn inputs(k: i64) -> Inputs {
    tch::manual_seed(0);
    let device = device();
    let rows = Tensor::randperm(N_DATA, (Kind::Int64, device)).narrow(0, 0, BATCH);
    let negatives = Tensor::randint(N_DATA, [BATCH, k], (Kind::Int64, device));
    let contrast = Tensor::cat(&[rows.unsqueeze(1), negatives], 1);
    let vs = nn::VarStore::new(device);
    let z_s = NormConstant::new(&vs.root(), "z_s");
    let z_t = NormConstant::new(&vs.root(), "z_t");
    Inputs {
        embed_s: unit_rows(BATCH, FEAT_DIM, device).set_requires_grad(true),
        embed_t: unit_rows(BATCH, FEAT_DIM, device).set_requires_grad(true),
        bank_s: unit_rows(N_DATA, FEAT_DIM, device),
        bank_t: unit_rows(N_DATA, FEAT_DIM, device),
        rows,
        contrast,
        _vs: vs,
        z_s,
        z_t,
    }
}

/// Runs one forward and backward pass of both sides.
fn step(form: RelationForm, x: &Inputs) {
    let loss_s = relation_loss(
        form,
        &x.embed_s,
        &x.bank_t,
        &x.rows,
        &x.contrast,
        TEMPERATURE,
        &x.z_s,
        N_DATA,
    )
    .expect("student side");
    let loss_t = relation_loss(
        form,
        &x.embed_t,
        &x.bank_s,
        &x.rows,
        &x.contrast,
        TEMPERATURE,
        &x.z_t,
        N_DATA,
    )
    .expect("teacher side");
    (loss_s + loss_t).backward();
    for embed in [&x.embed_s, &x.embed_t] {
        let _zeroed = embed.grad().zero_();
    }
    if let Device::Cuda(_) = x.embed_s.device() {
        tch::Cuda::synchronize(0);
    }
}

fn cases() -> Vec<(RelationForm, i64)> {
    let mut cases: Vec<_> = KS.iter().map(|&k| (RelationForm::Gram, k)).collect();
    cases.extend(KS.iter().filter(|&&k| k <= DIRECT_MAX_K).map(|&k| (RelationForm::Direct, k)));
    cases
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number of kB")
}

/// Child process: prints the peak memory of one forward+backward, in bytes.
fn measure_peak(case: &str) {
    let (form, k) = case.split_once(':').expect("case is form:k");
    let form: RelationForm = form.parse().expect("gram or direct");
    let k: i64 = k.parse().expect("an integer K");
    let x = inputs(k);
    // Set Z first, so the measured step is an ordinary one.
    step(form, &x);
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS needs Linux 4.0+");
    let base = status_kib("VmRSS:");
    step(form, &x);
    let peak = status_kib("VmHWM:");
    println!("peak_bytes={}", peak.saturating_sub(base) * 1024);
}

fn report_peaks() {
    let exe = std::env::current_exe().expect("path of the benchmark binary");
    println!("peak memory of one forward+backward (both sides), B = {BATCH}, m = {FEAT_DIM}:");
    for (form, k) in cases() {
        // A fixed mmap threshold makes glibc return every large block to the
        // kernel when it is freed, so RSS follows the live tensors.
        let output = Command::new(&exe)
            .env(PEAK_CASE_ENV, format!("{form}:{k}"))
            .env("MALLOC_MMAP_THRESHOLD_", "131072")
            .output()
            .expect("running the peak-memory child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        match stdout.lines().find_map(|l| l.strip_prefix("peak_bytes=")) {
            Some(bytes) => {
                let mib = bytes.parse::<f64>().unwrap_or(f64::NAN) / (1024.0 * 1024.0);
                println!("  {form:>6} K = {k:>5}: {mib:>9.1} MiB");
            }
            None => println!(
                "  {form:>6} K = {k:>5}: failed ({})",
                String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("no output")
            ),
        }
    }
}

fn crcd_loss(c: &mut Criterion) {
    let mut group = c.benchmark_group("crcd_loss_fwd_bwd");
    group.sample_size(10);
    for (form, k) in cases() {
        let x = inputs(k);
        step(form, &x);
        group.bench_with_input(BenchmarkId::new(form.to_string(), k), &x, |bench, x| {
            bench.iter(|| step(form, x))
        });
    }
    group.finish();
}

criterion_group!(benches, crcd_loss);

fn main() {
    let threads = std::env::var("CRCD_BENCH_THREADS").ok().and_then(|t| t.parse().ok());
    tch::set_num_threads(threads.unwrap_or(1));
    if let Ok(case) = std::env::var(PEAK_CASE_ENV) {
        measure_peak(&case);
        return;
    }
    // `cargo test --benches` runs this binary without `--bench`; measuring
    // peaks there would only slow the tests down.
    if std::env::args().any(|a| a == "--bench") && std::env::var_os(SKIP_PEAKS_ENV).is_none() {
        report_peaks();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
