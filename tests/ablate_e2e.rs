//! `crcd ablate` through the real binary and the real trainer on synthetic
//! data: a SIGKILL at any point followed by a rerun, and two shards sharing
//! one results folder, both end with the tables of one uninterrupted run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PROFILES: &str = r#"
[tiny]
description = "Synthetic data, 2 epochs of 2 steps at batch 16, 2 seeds"
dataset = "synthetic"
subset = 128
test_subset = 100
epochs = 2
batch_size = 16
max_steps_per_epoch = 2
seeds = [0, 1]

[tiny.nce_k]
"500" = 16
"#;

const SUITE: &str = r#"
description = "Three methods on one small pair"
seeds = [0, 1]

[base]
teacher = "resnet8"
student = "resnet8"

[axes]
method = ["vanilla", "kd", "crcd"]
"#;

/// Makes a suites folder with the tiny profile and suite; returns it.
fn suites_dir(root: &Path) -> PathBuf {
    let dir = root.join("ablations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("profiles.toml"), PROFILES).unwrap();
    std::fs::write(dir.join("tiny-suite.toml"), SUITE).unwrap();
    dir
}

fn ablate(suites: &Path, results: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crcd"));
    cmd.args(["ablate", "all", "--profile", "tiny", "--device", "cpu", "--threads", "1"])
        .arg("--no-progress")
        .arg("--suites-dir")
        .arg(suites)
        .arg("--results")
        .arg(results)
        .args(extra)
        .env("CRCD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn run_ok(mut cmd: Command) {
    let output = cmd.output().unwrap();
    assert!(output.status.success(), "ablate failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Returns every table file of `results` with its content, sorted by name.
fn tables(results: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(results.join("tables"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no tables in {}", results.display());
    files
}

fn finished_runs(results: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(results.join("runs")) else { return 0 };
    entries
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("summary.json")).ok())
        .filter(|s| s.contains("\"finished\""))
        .count()
}

#[test]
fn killed_suite_and_shards_match_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let suites = suites_dir(tmp.path());
    let whole = tmp.path().join("whole");
    run_ok(ablate(&suites, &whole, &[]));
    let expected = tables(&whole);
    let md = &expected.iter().find(|(n, _)| n.ends_with(".md")).unwrap().1;
    assert!(md.contains("crcd"), "{md}");
    assert!(md.contains("kd"), "{md}");

    // Kill at several points: before the first run ends, and after 1 and 3
    // finished runs. Each rerun starts from what is on disk.
    let killed = tmp.path().join("killed");
    for finished in [0, 1, 3] {
        let mut child = ablate(&suites, &killed, &[]).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = if finished == 0 {
                killed.join("runs").read_dir().map(|mut d| d.next().is_some()).unwrap_or(false)
            } else {
                finished_runs(&killed) >= finished
            };
            if ready || child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().ok();
        child.wait().unwrap();
    }
    run_ok(ablate(&suites, &killed, &[]));
    assert_eq!(tables(&killed), expected);

    // A rerun of a finished suite trains nothing and keeps the tables.
    let started = Instant::now();
    run_ok(ablate(&suites, &killed, &[]));
    assert_eq!(tables(&killed), expected);
    assert!(started.elapsed() < Duration::from_secs(30), "rerun took {:?}", started.elapsed());

    // Two shards at once over one results folder.
    let sharded = tmp.path().join("sharded");
    let first = ablate(&suites, &sharded, &["--shard", "1/2"]).spawn().unwrap();
    let second = ablate(&suites, &sharded, &["--shard", "2/2"]).spawn().unwrap();
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    // Each shard writes tables of the runs finished when it ends, so a final
    // report reads every run.
    let mut report = Command::new(env!("CARGO_BIN_EXE_crcd"));
    report.arg("report").arg("--results").arg(&sharded).stdout(Stdio::null());
    assert!(report.status().unwrap().success());
    assert_eq!(tables(&sharded), expected);
}
