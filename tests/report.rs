//! Tests of the result tables: a fixed set of hand-written manifests,
//! `config.json` and `summary.json` files in a temporary results folder,
//! rendered to Markdown and CSV.

use std::path::{Path, PathBuf};

use crcd::config::RunConfig;
use crcd::report::write_tables;

fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("crcd-{name}-")).tempdir().expect("temp dir")
}

fn train_json(model: &str, dataset: &str, seed: u64, epochs: i64) -> String {
    format!(
        r#""model": "{model}", "dataset": "{dataset}", "subset": null, "epochs": {epochs},
        "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005,
        "lr_decay_epochs": [150.0, 180.0, 210.0], "lr_decay_rate": 0.1, "seed": {seed},
        "max_steps_per_epoch": null"#
    )
}

/// Returns the config.json text of a teacher or vanilla run.
fn teacher_config(model: &str, dataset: &str, seed: u64) -> String {
    format!("{{\"kind\": \"teacher\", {}}}", train_json(model, dataset, seed, 240))
}

/// Returns the config.json text of a distillation run with `method` and K.
fn student_config(teacher: &str, student: &str, method: &str, k: i64, seed: u64) -> String {
    format!(
        r#"{{"kind": "student",
        "train": {{{}}},
        "distill": {{"method": "{method}", "gamma": 1.0, "alpha": 0.9, "beta": 1.0,
            "lambda_g": 1.0, "kd_t": 4.0, "elements": ["feature", "gradient"],
            "gradient_loss": "crcd", "gradient_path": "closed_form", "embed": "linear",
            "sampling": "exact", "relation_form": "gram", "schedule": "step",
            "schedule_step": 0.96, "exp_alpha0": 0.1, "exp_factor": 10.0, "nce_k": {k},
            "nce_t": 0.05, "nce_mu": 0.5, "feat_dim": 128, "grad_times_kd": false,
            "teacher_train_mode": false}},
        "teacher": {{{}}}}}"#,
        train_json(student, "cifar100", seed, 250),
        train_json(teacher, "cifar100", 0, 240)
    )
}

/// Returns a summary.json text, with `None` for an accuracy not measured yet.
fn summary(status: &str, epochs_done: i64, last: Option<f64>, best: Option<f64>) -> String {
    let number = |x: Option<f64>| x.map_or("null".to_owned(), |v| v.to_string());
    let error = if status == "failed" { "\"loss is NaN\"" } else { "null" };
    format!(
        r#"{{"status": "{status}", "error": {error}, "epochs_done": {epochs_done}, "epochs": 240,
        "last_top1": {}, "last_top5": null, "best_top1": {}, "best_top5": null,
        "best_epoch": null, "wall_seconds": 10.0, "device": "cpu", "threads": 1}}"#,
        number(last),
        number(best)
    )
}

/// Writes a run folder from config text and optional summary text; returns
/// the run id.
fn write_run(results: &Path, config: &str, summary: Option<String>) -> String {
    let parsed: RunConfig = serde_json::from_str(config).expect("hand-written config parses");
    let id = parsed.id();
    let dir = results.join("runs").join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    if let Some(summary) = summary {
        std::fs::write(dir.join("summary.json"), summary).unwrap();
    }
    id
}

fn finished(last: f64, best: f64) -> Option<String> {
    Some(summary("finished", 240, Some(last), Some(best)))
}

/// Builds a results folder with two suites: a paper-style one compared with
/// the published table and an ablation with variant rows.
fn results_fixture(results: &Path) -> PathBuf {
    let published = results.join("published");
    std::fs::create_dir_all(&published).unwrap();
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("results/published/cifar100_crd_benchmark.csv");
    std::fs::copy(shipped, published.join("cifar100_crd_benchmark.csv")).unwrap();

    let t56 =
        write_run(results, &teacher_config("resnet56", "cifar100", 0), finished(72.51, 72.80));
    let t13 = write_run(results, &teacher_config("vgg13", "cifar100", 0), None);
    let mut cells = Vec::new();
    let mut cell = |row: &str, teacher: &str, student: &str, seed: u64, run: String| {
        cells.push(format!(
            r#"{{"row": "{row}", "teacher": "{teacher}", "student": "{student}", "seed": {seed}, "run": "{run}"}}"#
        ));
    };
    for (seed, last) in [(0, 69.12), (1, 69.50), (2, 68.93)] {
        let id = write_run(
            results,
            &teacher_config("resnet20", "cifar100", seed),
            finished(last, last + 0.2),
        );
        cell("vanilla", "resnet56", "resnet20", seed, id);
        let id = write_run(
            results,
            &teacher_config("vgg8", "cifar100", seed),
            finished(last + 1.0, last + 1.4),
        );
        cell("vanilla", "vgg13", "vgg8", seed, id);
    }
    let kd = [
        (0, finished(70.61, 70.9)),
        (1, finished(70.95, 71.3)),
        (2, Some(summary("running", 100, Some(60.0), Some(61.0)))),
    ];
    for (seed, s) in kd {
        let id = write_run(results, &student_config("resnet56", "resnet20", "kd", 16384, seed), s);
        cell("kd", "resnet56", "resnet20", seed, id);
    }
    let id = write_run(results, &student_config("vgg13", "vgg8", "kd", 16384, 0), None);
    cell("kd", "vgg13", "vgg8", 0, id);
    let id = write_run(
        results,
        &student_config("resnet56", "resnet20", "crcd", 500, 0),
        finished(71.4, 71.66),
    );
    cell("crcd", "resnet56", "resnet20", 0, id);
    let id = write_run(
        results,
        &student_config("resnet56", "resnet20", "crcd", 500, 1),
        Some(summary("failed", 3, None, None)),
    );
    cell("crcd", "resnet56", "resnet20", 1, id);
    let id = write_run(
        results,
        &student_config("vgg13", "vgg8", "crcd", 500, 0),
        finished(74.02, 74.31),
    );
    cell("crcd", "vgg13", "vgg8", 0, id);

    let suites = results.join("suites");
    std::fs::create_dir_all(&suites).unwrap();
    let paper = format!(
        r#"{{"suite": "mini-paper", "profile": "paper", "description": "Two CRD pairs, three methods",
        "dataset": "cifar100", "published": "same_architecture", "published_note": null,
        "rows": ["vanilla", "kd", "crcd"],
        "pairs": [{{"teacher": "resnet56", "student": "resnet20", "teacher_run": "{t56}"}},
                  {{"teacher": "vgg13", "student": "vgg8", "teacher_run": "{t13}"}}],
        "cells": [{}]}}"#,
        cells.join(",\n")
    );
    std::fs::write(suites.join("mini-paper.paper.json"), paper).unwrap();

    let mut cells = Vec::new();
    for (k, tops) in [(1000, [71.4, 71.8]), (4096, [71.9, 72.5])] {
        for (seed, top) in tops.into_iter().enumerate() {
            let id = write_run(
                results,
                &student_config("resnet56", "resnet20", "crcd", k, seed as u64),
                finished(top, top + 0.3),
            );
            cells.push(format!(
                r#"{{"row": "nce_k={k}", "teacher": "resnet56", "student": "resnet20", "seed": {seed}, "run": "{id}"}}"#
            ));
        }
    }
    let ablation = format!(
        r#"{{"suite": "mini-negatives", "profile": "quick", "description": "CRCD with two K",
        "dataset": "cifar100", "published": null,
        "published_note": null, "rows": ["nce_k=1000", "nce_k=4096"],
        "pairs": [{{"teacher": "resnet56", "student": "resnet20", "teacher_run": "{t56}"}}],
        "cells": [{}]}}"#,
        cells.join(",\n")
    );
    std::fs::write(suites.join("mini-negatives.quick.json"), ablation).unwrap();
    results.join("tables")
}

#[test]
fn tables_render_means_counts_and_published() {
    let dir = temp_dir("tables");
    let tables = results_fixture(dir.path());
    let written = write_tables(dir.path()).unwrap();
    let names: Vec<String> =
        written.iter().map(|p| p.strip_prefix(&tables).unwrap().display().to_string()).collect();
    assert_eq!(
        names,
        [
            "mini-negatives.quick.md",
            "mini-negatives.quick.csv",
            "mini-paper.paper.md",
            "mini-paper.paper.csv"
        ]
    );
    for name in &names {
        let text = std::fs::read_to_string(tables.join(name)).unwrap();
        insta::assert_snapshot!(format!("table-{name}"), text);
    }
    let md = std::fs::read_to_string(tables.join("mini-paper.paper.md")).unwrap();
    assert!(md.contains("| kd | 70.78 ± 0.24 (2/3) |"), "{md}");
    assert!(md.contains("69.18 / 69.06 (+0.12)"), "vanilla against Student: {md}");
    assert!(md.contains("71.40 / –"), "CRCD has no published number: {md}");
}

#[test]
fn tables_are_byte_identical_on_rerun() {
    let dir = temp_dir("tables-rerun");
    let tables = results_fixture(dir.path());
    let first: Vec<Vec<u8>> =
        write_tables(dir.path()).unwrap().iter().map(|p| std::fs::read(p).unwrap()).collect();
    let second: Vec<Vec<u8>> =
        write_tables(dir.path()).unwrap().iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert_eq!(first, second);
    let leftovers: Vec<_> = std::fs::read_dir(&tables)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn tables_reject_run_folder_with_other_config() {
    let dir = temp_dir("tables-mismatch");
    results_fixture(dir.path());
    let runs = dir.path().join("runs");
    let mut folders: Vec<PathBuf> =
        std::fs::read_dir(&runs).unwrap().map(|e| e.unwrap().path()).collect();
    folders.sort();
    let other = std::fs::read(folders[1].join("config.json")).unwrap();
    std::fs::write(folders[0].join("config.json"), other).unwrap();
    let err = format!("{:#}", write_tables(dir.path()).unwrap_err());
    assert!(err.contains("does not match its config"), "{err}");
}

#[test]
fn tables_need_manifests() {
    let dir = temp_dir("tables-empty");
    let err = format!("{:#}", write_tables(dir.path()).unwrap_err());
    assert!(err.contains("no suite manifests"), "{err}");
    assert!(err.contains("crcd ablate"), "{err}");
}

#[test]
fn tables_need_published_csv_when_compared() {
    let dir = temp_dir("tables-no-published");
    results_fixture(dir.path());
    std::fs::remove_file(dir.path().join("published/cifar100_crd_benchmark.csv")).unwrap();
    let err = format!("{:#}", write_tables(dir.path()).unwrap_err());
    assert!(err.contains("cifar100_crd_benchmark.csv not found"), "{err}");
}
