//! End-to-end tests of `crcd train-teacher`, `eval` and `distill` through the
//! real binary: repeatability, resume after SIGKILL, and bad input.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn crcd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crcd"));
    cmd.env("CRCD_LOG", "warn");
    cmd
}

/// Arguments of a small synthetic teacher run: 3 epochs of 4 steps.
fn small_run(out: &Path) -> Vec<String> {
    [
        "train-teacher",
        "--model",
        "resnet8",
        "--dataset",
        "synthetic",
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--subset",
        "320",
        "--max-steps-per-epoch",
        "4",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect()
}

fn run_ok(cmd: &mut Command) -> Output {
    let output = cmd.output().expect("crcd starts");
    assert!(
        output.status.success(),
        "crcd failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn run_err(cmd: &mut Command) -> String {
    let output = cmd.output().expect("crcd starts");
    assert!(!output.status.success(), "crcd succeeded but should have failed");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Returns metrics.csv without the wall-time column, which differs between
/// runs by nature.
fn metrics_without_time(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv exists");
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let seconds = header.iter().position(|c| *c == "seconds").unwrap();
    text.lines()
        .map(|line| {
            let mut fields: Vec<&str> = line.split(',').collect();
            fields.remove(seconds);
            fields.join(",")
        })
        .collect()
}

fn checkpoint_tensors(dir: &Path) -> Vec<(String, tch::Tensor)> {
    let mut entries = tch::Tensor::read_safetensors(dir.join("checkpoint.safetensors")).unwrap();
    entries.retain(|(name, _)| name != "meta.wall_seconds");
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

fn assert_same_checkpoints(a: &Path, b: &Path) {
    let (ta, tb) = (checkpoint_tensors(a), checkpoint_tensors(b));
    assert_eq!(ta.len(), tb.len());
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(va.equal(vb), "variable {na} differs");
    }
}

#[test]
fn seeded_run_repeats_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_ok(crcd().args(small_run(&a)));
    run_ok(crcd().args(small_run(&b)));
    let metrics = metrics_without_time(&a);
    assert_eq!(metrics.len(), 4, "header and 3 epochs: {metrics:?}");
    assert_eq!(metrics, metrics_without_time(&b));
    assert_same_checkpoints(&a, &b);
    let summary = std::fs::read_to_string(a.join("summary.json")).unwrap();
    assert!(summary.contains("\"status\": \"finished\""), "{summary}");
}

#[test]
fn killed_run_resumes_to_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, killed) = (tmp.path().join("whole"), tmp.path().join("killed"));
    run_ok(crcd().args(small_run(&whole)));

    // SIGKILL once the first epoch's checkpoint exists, mid-way through the
    // second epoch or later.
    let mut child = crcd().args(small_run(&killed)).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !killed.join("checkpoint.json").exists() {
        assert!(Instant::now() < deadline, "no checkpoint after 120 s");
        assert!(child.try_wait().unwrap().is_none(), "run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = metrics_without_time(&killed);
    assert!(partial.len() < 4, "the run finished before the kill: {partial:?}");

    let output = run_ok(crcd().args(small_run(&killed)));
    assert!(String::from_utf8_lossy(&output.stdout).contains("last top1"));
    assert_eq!(metrics_without_time(&killed), metrics_without_time(&whole));
    assert_same_checkpoints(&killed, &whole);

    // A finished run is not trained again.
    run_ok(crcd().args(small_run(&killed)));
    assert_eq!(metrics_without_time(&killed), metrics_without_time(&whole));
}

#[test]
fn eval_prints_accuracy_and_rejects_other_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut args = small_run(&dir);
    args[6] = "1".into(); // --epochs 1
    run_ok(crcd().args(&args));
    let output = run_ok(
        crcd()
            .args(["eval", "--dataset", "synthetic", "--device", "cpu"])
            .arg("--checkpoint")
            .arg(&dir),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("resnet8"), "{stdout}");
    assert!(stdout.contains("top1"), "{stdout}");

    let missing = tmp.path().join("no-fashion");
    let err = run_err(
        crcd()
            .args(["eval", "--dataset", "fashion-mnist", "--device", "cpu", "--data-dir"])
            .arg(&missing)
            .arg("--checkpoint")
            .arg(&dir),
    );
    assert!(err.contains("scripts/setup"), "{err}");
}

#[test]
fn bad_input_gets_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");

    let err =
        run_err(crcd().args(["train-teacher", "--model", "resnet9", "--dataset", "synthetic"]));
    assert!(err.contains("resnet9"), "{err}");
    assert!(err.contains("resnet8x4"), "{err}");

    let err = run_err(crcd().args(["train-teacher", "--model", "resnet8", "--dataset", "mnist"]));
    assert!(err.contains("mnist"), "{err}");
    assert!(err.contains("fashion-mnist"), "{err}");

    let missing = tmp.path().join("nowhere");
    let mut args = small_run(&out);
    args[4] = "cifar100".into();
    let err = run_err(crcd().args(&args).arg("--data-dir").arg(&missing));
    assert!(err.contains("nowhere"), "{err}");
    assert!(err.contains("--data-dir"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // An output folder below a regular file cannot be created.
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"keep me").unwrap();
    let err = run_err(crcd().args(small_run(&file.join("run"))));
    assert!(err.contains("--out"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    let err =
        run_err(crcd().args(["eval", "--dataset", "synthetic", "--checkpoint"]).arg(&missing));
    assert!(err.contains("checkpoint not found"), "{err}");
}

#[test]
fn teacher_of_wrong_architecture_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = tmp.path().join("teacher");
    let mut args = small_run(&teacher);
    args[6] = "1".into();
    run_ok(crcd().args(&args));
    let before = std::fs::read(teacher.join("checkpoint.safetensors")).unwrap();

    // Overwrite the description so that it claims another architecture.
    let meta_path = teacher.join("checkpoint.json");
    let meta = std::fs::read_to_string(&meta_path).unwrap().replace("resnet8", "resnet14");
    std::fs::write(&meta_path, meta).unwrap();
    let student = tmp.path().join("student");
    let err = run_err(
        crcd()
            .args(["distill", "--student", "resnet8", "--method", "kd", "--dataset", "synthetic"])
            .args([
                "--epochs",
                "1",
                "--max-steps-per-epoch",
                "1",
                "--device",
                "cpu",
                "--no-progress",
            ])
            .arg("--teacher")
            .arg(&teacher)
            .arg("--out")
            .arg(&student),
    );
    assert!(err.contains("resnet14"), "{err}");
    assert!(err.contains("resnet8"), "{err}");
    assert_eq!(std::fs::read(teacher.join("checkpoint.safetensors")).unwrap(), before);
    let summary = std::fs::read_to_string(student.join("summary.json")).unwrap();
    assert!(summary.contains("\"failed\""), "{summary}");
}

#[test]
fn diverging_run_stops_with_step_and_term() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut args = small_run(&dir);
    args.extend(["--lr".to_string(), "1e30".to_string()]);
    let err = run_err(crcd().args(&args));
    assert!(err.contains("loss term loss is"), "{err}");
    assert!(err.contains("epoch 1, step"), "{err}");
    assert!(err.contains("no checkpoint was written yet"), "{err}");
    let summary = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    assert!(summary.contains("\"failed\""), "{summary}");
    assert!(!dir.join("checkpoint.safetensors").exists());
}

#[test]
fn larger_model_checkpoint_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut args = small_run(&dir);
    args[2] = "resnet14".into();
    args[6] = "1".into();
    run_ok(crcd().args(&args));
    // resnet8's variable names are a subset of resnet14's.
    let meta_path = dir.join("checkpoint.json");
    let meta = std::fs::read_to_string(&meta_path).unwrap().replace("resnet14", "resnet8");
    std::fs::write(&meta_path, meta).unwrap();
    let err = run_err(
        crcd()
            .args(["eval", "--dataset", "synthetic", "--device", "cpu"])
            .arg("--checkpoint")
            .arg(&dir),
    );
    assert!(err.contains("this model lacks"), "{err}");
}

#[test]
fn failing_rerun_keeps_finished_summary() {
    let fashion = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    if !fashion.join("t10k-images-idx3-ubyte.gz").exists() {
        eprintln!("skipped: run scripts/setup to install Fashion-MNIST");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut args = small_run(&dir);
    args[4] = "fashion-mnist".into();
    args[6] = "1".into();
    run_ok(crcd().args(&args).arg("--data-dir").arg(&fashion));
    let before = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    assert!(before.contains("\"finished\""), "{before}");

    // The same run with its data missing fails without touching the record.
    let missing = tmp.path().join("no-data");
    let err = run_err(crcd().args(&args).arg("--data-dir").arg(&missing));
    assert!(err.contains("no-data"), "{err}");
    let threads = args.iter().position(|a| a == "--threads").unwrap() + 1;
    args[threads] = "0".into();
    let err = run_err(crcd().args(&args).arg("--data-dir").arg(&fashion));
    assert!(err.contains("--threads 0"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("summary.json")).unwrap(), before);
}
