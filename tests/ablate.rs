//! Tests of the ablation harness: suite and profile parsing, plan expansion,
//! snapshots of every shipped suite under every profile, sharding, the run
//! store and the runner loop. No test trains a network: the runner tests pass
//! `stand_in_trainer`, which writes files the way the trainer does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crcd::ablate::plan::{self, Plan, RunKind};
use crcd::ablate::profile::{parse_profiles, Profile};
use crcd::ablate::runner::{Runner, Session};
use crcd::ablate::shard::Shard;
use crcd::ablate::spec::Suite;
use crcd::ablate::store::{write_atomic, RunState, Store};
use crcd::ablate::{self, AblateArgs, SuiteSelection};
use crcd::config::{Method, RunConfig};
use crcd::train::{RunOptions, RunStatus, Summary};

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ablations")
}

fn shipped_profiles() -> std::collections::BTreeMap<String, Profile> {
    ablate::load_profiles(&shipped_dir()).expect("shipped profiles parse")
}

fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("crcd-{name}-")).tempdir().expect("temp dir")
}

fn parse_suite(text: &str) -> Result<Suite, String> {
    Suite::parse(Path::new("ablations/test-suite.toml"), text).map_err(|e| e.to_string())
}

/// A profile like the smoke one, written out so that tests do not depend on
/// the shipped file's values.
const TEST_PROFILES: &str = r#"
[tiny]
description = "synthetic, 1 epoch of 2 steps"
dataset = "synthetic"
subset = 200
epochs = 1
batch_size = 8
max_steps_per_epoch = 2
seeds = [0, 1]

[tiny.nce_k]
"500" = 20
"16384" = 40

[full]
description = "cifar100 protocol"
dataset = "cifar100"
epochs = 240
crcd_epochs = 250
seeds = [0, 1, 2]
"#;

fn test_profile(name: &str) -> Profile {
    let profiles =
        parse_profiles(Path::new("profiles.toml"), TEST_PROFILES).expect("test profiles parse");
    profiles[name].clone()
}

fn expand(suite_text: &str, profile: &str) -> Result<Plan, String> {
    let suite = parse_suite(suite_text)?;
    plan::expand(&suite, &test_profile(profile)).map_err(|e| e.to_string())
}

const TWO_PAIRS: &str = r#"
description = "two pairs, three K"
[base]
method = "crcd"
[axes]
nce_k = [500, 16384]
[[zip]]
teacher = ["resnet32x4", "wrn_40_2"]
student = ["resnet8x4", "wrn_16_2"]
"#;

// ---------------------------------------------------------------------------
// Suite parsing errors

#[test]
fn spec_unknown_top_level_key() {
    let err = parse_suite("description = \"x\"\naxis = {}\n").unwrap_err();
    assert!(err.contains("ablations/test-suite.toml"), "{err}");
    assert!(err.contains("unknown key `axis`"), "{err}");
    assert!(err.contains("similar keys: axes"), "{err}");
}

#[test]
fn spec_unknown_axis_names_similar_keys() {
    let text = "description = \"x\"\n[base]\nmethod = \"crcd\"\nteacher = \"resnet32x4\"\n\
                student = \"resnet8x4\"\n[axes]\nnce_kk = [1, 2]\n";
    let err = parse_suite(text).unwrap_err();
    assert!(err.contains("ablations/test-suite.toml"), "{err}");
    assert!(err.contains("unknown axis `nce_kk`"), "{err}");
    assert!(err.contains("similar keys: nce_k"), "{err}");
}

#[test]
fn spec_unknown_base_setting() {
    let err = parse_suite("description = \"x\"\n[base]\nschedul = \"step\"\n").unwrap_err();
    assert!(err.contains("unknown setting `schedul`"), "{err}");
    assert!(err.contains("schedule"), "{err}");
}

#[test]
fn spec_unknown_zip_key() {
    let text = "description = \"x\"\n[base]\nmethod = \"kd\"\n[[zip]]\nteachers = [\"vgg13\"]\n\
                student = [\"vgg8\"]\n";
    let err = parse_suite(text).unwrap_err();
    assert!(err.contains("unknown setting `teachers`"), "{err}");
    assert!(err.contains("similar keys: teacher"), "{err}");
}

#[test]
fn spec_axis_value_wrong_type() {
    let text = TWO_PAIRS.replace("nce_k = [500, 16384]", "nce_k = [500, \"4096\"]");
    let err = parse_suite(&text).unwrap_err();
    assert!(err.contains("`axes.nce_k[1]`"), "{err}");
    assert!(err.contains("expected an integer"), "{err}");
    assert!(err.contains("found string \"4096\""), "{err}");
}

#[test]
fn spec_axis_not_a_list() {
    let text = TWO_PAIRS.replace("nce_k = [500, 16384]", "nce_k = 500");
    let err = parse_suite(&text).unwrap_err();
    assert!(err.contains("`axes.nce_k`"), "{err}");
    assert!(err.contains("expected a list of values, each an integer"), "{err}");
}

#[test]
fn spec_bool_and_float_types() {
    let text = TWO_PAIRS.replace("nce_k = [500, 16384]", "grad_times_kd = [\"yes\"]");
    let err = parse_suite(&text).unwrap_err();
    assert!(err.contains("expected a boolean"), "{err}");
    let text = TWO_PAIRS.replace("nce_k = [500, 16384]", "beta = [true]");
    let err = parse_suite(&text).unwrap_err();
    assert!(err.contains("expected a number, found boolean true"), "{err}");
}

#[test]
fn spec_unknown_model() {
    let text = TWO_PAIRS.replace("\"resnet8x4\"", "\"resnet8x5\"");
    let err = parse_suite(&text).unwrap_err();
    assert!(err.contains("`zip[0].student[0]`"), "{err}");
    assert!(err.contains("unknown model 'resnet8x5'"), "{err}");
    assert!(err.contains("resnet8x4"), "{err}");
}

#[test]
fn spec_unknown_method() {
    let text = TWO_PAIRS.replace("method = \"crcd\"", "method = \"crdd\"");
    let err = parse_suite(&text).unwrap_err();
    assert!(err.contains("unknown method 'crdd'"), "{err}");
    assert!(err.contains("similar names: crcd, crd, crd_kd"), "{err}");
}

#[test]
fn spec_unknown_choice_and_element() {
    let text = TWO_PAIRS.replace("nce_k = [500, 16384]", "schedule = [\"steps\"]");
    let err = parse_suite(&text).unwrap_err();
    assert!(err.contains("unknown schedule 'steps'"), "{err}");
    assert!(err.contains("step"), "{err}");
    let text = TWO_PAIRS.replace("nce_k = [500, 16384]", "elements = [[\"features\"]]");
    let err = parse_suite(&text).unwrap_err();
    assert!(err.contains("unknown relation element 'features'"), "{err}");
}

#[test]
fn spec_zip_lengths_must_match() {
    let text =
        TWO_PAIRS.replace("student = [\"resnet8x4\", \"wrn_16_2\"]", "student = [\"resnet8x4\"]");
    let err = parse_suite(&text).unwrap_err();
    assert!(err.contains("equal lengths"), "{err}");
    assert!(err.contains("teacher has 2, student has 1"), "{err}");
}

#[test]
fn spec_labels_count_must_match() {
    let text = TWO_PAIRS.replace("[[zip]]\n", "[[zip]]\nlabels = [\"a\"]\n");
    let err = parse_suite(&text).unwrap_err();
    assert!(err.contains("`labels` has 1 entries but the lists have 2"), "{err}");
}

#[test]
fn spec_key_in_base_and_axis() {
    let text = TWO_PAIRS.replace("method = \"crcd\"", "method = \"crcd\"\nnce_k = 500");
    let err = parse_suite(&text).unwrap_err();
    assert!(err.contains("`nce_k`: set in [base] and varied by an axis"), "{err}");
}

#[test]
fn spec_duplicate_axis_value() {
    let text = TWO_PAIRS.replace("nce_k = [500, 16384]", "nce_k = [500, 500]");
    let err = parse_suite(&text).unwrap_err();
    assert!(err.contains("value 500 is listed twice"), "{err}");
}

#[test]
fn spec_missing_student() {
    let err = parse_suite("description = \"x\"\n[base]\nmethod = \"kd\"\nteacher = \"vgg13\"\n")
        .unwrap_err();
    assert!(err.contains("`student`: missing"), "{err}");
}

#[test]
fn spec_invalid_toml_names_file() {
    let err = parse_suite("description = \n").unwrap_err();
    assert!(err.starts_with("ablations/test-suite.toml: invalid TOML"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn spec_exclusion_of_unvaried_setting() {
    let text = format!("{TWO_PAIRS}[[exclude]]\nembed = \"none\"\n");
    let err = parse_suite(&text).unwrap_err();
    assert!(err.contains("`exclude[0].embed`"), "{err}");
    assert!(err.contains("only settings that an axis or zip group varies"), "{err}");
}

#[test]
fn profile_errors_name_key_and_hint() {
    let parse = |text: &str| {
        parse_profiles(Path::new("ablations/profiles.toml"), text).unwrap_err().to_string()
    };
    let err = parse("[p]\ndescription = \"x\"\ndataset = \"cifar100\"\nepoch = 3\n");
    assert!(err.contains("ablations/profiles.toml"), "{err}");
    assert!(err.contains("unknown profile key `p.epoch`"), "{err}");
    assert!(err.contains("similar keys: epochs"), "{err}");
    let err = parse("[p]\ndescription = \"x\"\ndataset = \"cifar-100\"\n");
    assert!(err.contains("unknown dataset 'cifar-100'"), "{err}");
    assert!(err.contains("similar names: cifar100"), "{err}");
    let err = parse(
        "[p]\ndescription = \"x\"\ndataset = \"cifar100\"\n[p.substitute]\nvgg13 = \"vgg7\"\n",
    );
    assert!(err.contains("`p.substitute.vgg13`: unknown model 'vgg7'"), "{err}");
    let err = parse("[p]\ndescription = \"x\"\ndataset = \"cifar100\"\nepochs = \"3\"\n");
    assert!(err.contains("profile p"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
    let err = parse("[p]\ndescription = \"x\"\ndataset = \"cifar100\"\nepochs = 0\n");
    assert!(err.contains("0 is not a positive number of epochs"), "{err}");
}

// ---------------------------------------------------------------------------
// Plan expansion

#[test]
fn plan_expands_cartesian_product_with_seeds_outermost() {
    let plan = expand(TWO_PAIRS, "tiny").unwrap();
    let (teachers, vanilla, students) = plan.counts();
    assert_eq!((teachers, vanilla, students), (2, 0, 8), "2 pairs × 2 K × 2 seeds");
    assert!(plan.runs[..2].iter().all(|r| r.kind == RunKind::Teacher));
    let order: Vec<(u64, String, i64)> = plan.runs[2..]
        .iter()
        .map(|r| match &r.config {
            RunConfig::Student(s) => (s.train.seed, s.train.model.to_string(), s.distill.nce_k),
            other => panic!("expected a student, found {other:?}"),
        })
        .collect();
    let expected = [
        (0, "resnet8x4", 20),
        (0, "resnet8x4", 40),
        (0, "wrn_16_2", 20),
        (0, "wrn_16_2", 40),
        (1, "resnet8x4", 20),
        (1, "resnet8x4", 40),
        (1, "wrn_16_2", 20),
        (1, "wrn_16_2", 40),
    ];
    let expected: Vec<(u64, String, i64)> =
        expected.iter().map(|(s, m, k)| (*s, m.to_string(), *k)).collect();
    assert_eq!(order, expected);
    assert_eq!(plan.rows, vec!["nce_k=500", "nce_k=16384"]);
    assert_eq!(plan.pairs.len(), 2);
    assert_eq!(plan.cells.len(), 8);
}

#[test]
fn plan_is_deterministic() {
    let a = expand(TWO_PAIRS, "tiny").unwrap();
    let b = expand(TWO_PAIRS, "tiny").unwrap();
    let ids = |p: &Plan| p.runs.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
}

#[test]
fn plan_teachers_use_seed_zero_and_are_shared() {
    let plan = expand(TWO_PAIRS, "tiny").unwrap();
    for run in plan.runs.iter().filter(|r| r.kind == RunKind::Student) {
        let teacher = &plan.runs[run.teacher.expect("a student has a teacher")];
        assert_eq!(teacher.kind, RunKind::Teacher);
        assert_eq!(teacher.seed(), plan::TEACHER_SEED);
        let RunConfig::Student(s) = &run.config else { panic!("student config") };
        assert_eq!(
            RunConfig::Teacher(s.teacher.clone()).id(),
            teacher.id,
            "teacher id from the student"
        );
    }
}

#[test]
fn plan_vanilla_shared_by_pairs() {
    let text = r#"
description = "vanilla and kd"
[axes]
method = ["vanilla", "kd"]
[[zip]]
teacher = ["resnet56", "resnet110"]
student = ["resnet20", "resnet20"]
"#;
    let plan = expand(text, "tiny").unwrap();
    let vanilla: Vec<_> = plan.runs.iter().filter(|r| r.kind == RunKind::Vanilla).collect();
    assert_eq!(vanilla.len(), 2, "one vanilla resnet20 per seed, shared by both pairs");
    assert!(matches!(vanilla[0].config, RunConfig::Teacher(_)));
    let vanilla_cells = plan.cells.iter().filter(|c| c.row == "vanilla").count();
    assert_eq!(vanilla_cells, 4, "each pair's column lists it");
}

#[test]
fn plan_paper_protocol_epochs_and_milestones() {
    let text = "description = \"x\"\n[axes]\nmethod = [\"crd\", \"crcd\"]\n[base]\nteacher = \"resnet56\"\n\
                student = \"resnet20\"\n";
    let plan = expand(text, "full").unwrap();
    for run in &plan.runs {
        let train = run.config.train();
        assert_eq!(train.lr_decay_epochs, vec![150.0, 180.0, 210.0], "{}", run.id);
        let expected = match run.method {
            Some(Method::Crcd) => 250,
            _ => 240,
        };
        assert_eq!(train.epochs, expected, "{:?}", run.method);
    }
    let RunConfig::Student(crd) = &plan.runs[1].config else { panic!("student") };
    assert_eq!(crd.distill.nce_k, 16384);
    assert_eq!(plan.published, None);
}

#[test]
fn plan_exclusion_removes_combinations() {
    let text = format!("{TWO_PAIRS}[[exclude]]\nteacher = \"wrn_40_2\"\nnce_k = 16384\n");
    let plan = expand(&text, "tiny").unwrap();
    assert_eq!(plan.counts().2, 6);
    let excluded = plan.runs.iter().any(|r| match &r.config {
        RunConfig::Student(s) => s.teacher.model.name() == "wrn_40_2" && s.distill.nce_k == 40,
        _ => false,
    });
    assert!(!excluded);
}

#[test]
fn plan_exclusion_matching_nothing_is_an_error() {
    let text = format!("{TWO_PAIRS}[[exclude]]\nteacher = \"vgg13\"\n");
    let err = expand(&text, "tiny").unwrap_err();
    assert!(err.contains("exclude[0] matches no combination"), "{err}");
}

#[test]
fn plan_all_excluded_is_empty_error() {
    let text = format!("{TWO_PAIRS}[[exclude]]\nnce_k = 500\n[[exclude]]\nnce_k = 16384\n");
    let err = expand(&text, "tiny").unwrap_err();
    assert!(err.contains("suite test-suite, profile tiny"), "{err}");
    assert!(err.contains("the plan is empty"), "{err}");
}

#[test]
fn plan_skips_embed_none_for_unequal_widths() {
    let text = r#"
description = "embed"
[base]
method = "crcd"
[axes]
embed = ["linear", "none"]
[[zip]]
teacher = ["resnet32x4", "wrn_40_2"]
student = ["resnet8x4", "wrn_40_1"]
"#;
    let plan = expand(text, "tiny").unwrap();
    assert_eq!(plan.counts().2, 6, "none runs only for resnet32x4 → resnet8x4");
    assert_eq!(plan.skipped.len(), 1);
    assert!(plan.skipped[0].contains("wrn_40_2 → wrn_40_1"), "{}", plan.skipped[0]);
    assert!(plan.skipped[0].contains("128 and 64"), "{}", plan.skipped[0]);
}

#[test]
fn plan_rejects_k_beyond_subset_negatives() {
    let text = TWO_PAIRS.replace("nce_k = [500, 16384]", "nce_k = [500, 4096]");
    let err = expand(&text, "tiny").unwrap_err();
    assert!(err.contains("K = 4096 exceeds the 180 negatives"), "{err}");
    assert!(err.contains("[tiny.nce_k]"), "{err}");
}

#[test]
fn plan_rejects_invalid_values() {
    let text = TWO_PAIRS.replace("nce_k = [500, 16384]", "nce_mu = [0.5, 1.5]");
    let err = expand(&text, "tiny").unwrap_err();
    assert!(err.contains("invalid nce_mu 1.5"), "{err}");
}

#[test]
fn plan_labels_name_zip_rows() {
    let text = r#"
description = "labels"
[base]
method = "crcd"
teacher = "resnet32x4"
student = "resnet8x4"
[[zip]]
labels = ["formula", "release"]
grad_times_kd = [false, true]
teacher_train_mode = [false, true]
"#;
    let plan = expand(text, "tiny").unwrap();
    assert_eq!(plan.rows, vec!["formula", "release"]);
}

#[test]
fn plan_configs_round_trip_through_json() {
    for (name, profile) in shipped_profiles() {
        for suite in ablate::load_suites(&shipped_dir(), &SuiteSelection::All).unwrap() {
            let plan = plan::expand(&suite, &profile).unwrap();
            for run in &plan.runs {
                let json = serde_json::to_string_pretty(&run.config).unwrap();
                let back: RunConfig = serde_json::from_str(&json).unwrap();
                assert_eq!(back.id(), run.id, "{} under {name}", suite.name);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Snapshots of the shipped suites

/// Lists a plan's runs with the settings that tell them apart.
fn plan_listing(plan: &Plan) -> String {
    let mut out =
        format!("suite {}, profile {}, dataset {}\n", plan.suite, plan.profile, plan.dataset);
    for (i, run) in plan.runs.iter().enumerate() {
        let t = run.config.train();
        let common = format!(
            "{} seed={} epochs={} milestones={:?} lr={} batch={} subset={:?} steps_cap={:?}",
            t.model,
            t.seed,
            t.epochs,
            t.lr_decay_epochs,
            t.lr,
            t.batch_size,
            t.subset,
            t.max_steps_per_epoch
        );
        let line = match &run.config {
            RunConfig::Teacher(_) => {
                format!("{:>3} {} {:<7} {common}", i + 1, run.id, run.kind.to_string())
            }
            RunConfig::Student(s) => {
                let d = &s.distill;
                let elements: Vec<String> = d.elements.iter().map(|e| e.to_string()).collect();
                format!(
                    "{:>3} {} student {common} teacher=#{} {} γ={} α={} β={} K={} T={} elements={} \
                     grad_loss={} schedule={} embed={} grad_times_kd={} teacher_train_mode={}",
                    i + 1,
                    run.id,
                    run.teacher.expect("student") + 1,
                    d.method,
                    d.gamma,
                    d.alpha,
                    d.beta,
                    d.nce_k,
                    d.nce_t,
                    elements.join("+"),
                    d.gradient_loss,
                    d.schedule,
                    d.embed,
                    d.grad_times_kd,
                    d.teacher_train_mode
                )
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("cells:\n");
    for cell in &plan.cells {
        out.push_str(&format!(
            "  {} | {} | seed {} -> #{}\n",
            cell.row,
            cell.pair,
            cell.seed,
            cell.run + 1
        ));
    }
    for reason in &plan.skipped {
        out.push_str(&format!("skipped: {reason}\n"));
    }
    out.push_str(&format!("published: {:?} {:?}\n", plan.published, plan.published_note));
    out
}

#[test]
fn snapshot_every_shipped_suite_under_every_profile() {
    let suites = ablate::load_suites(&shipped_dir(), &SuiteSelection::All).unwrap();
    let names: Vec<&str> = suites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "embedding",
            "gradient-loss",
            "negatives",
            "paper-cross-arch",
            "paper-same-arch",
            "relation-elements",
            "release-variants",
            "schedules"
        ]
    );
    for (profile_name, profile) in shipped_profiles() {
        for suite in &suites {
            let plan = plan::expand(suite, &profile).unwrap();
            insta::assert_snapshot!(
                format!("plan-{}-{profile_name}", suite.name),
                plan_listing(&plan)
            );
        }
    }
}

#[test]
fn shipped_paper_suites_have_published_pairs() {
    let profiles = shipped_profiles();
    let suite = Suite::load(&shipped_dir().join("paper-same-arch.toml")).unwrap();
    let plan = plan::expand(&suite, &profiles["paper"]).unwrap();
    assert_eq!(plan.pairs.len(), 7);
    assert_eq!(plan.rows, vec!["vanilla", "kd", "crd", "crd_kd", "crcd"]);
    assert_eq!(plan.runs.iter().filter(|r| r.kind == RunKind::Teacher).count(), 5);
    assert!(plan.published.is_some());
    let cross = Suite::load(&shipped_dir().join("paper-cross-arch.toml")).unwrap();
    let plan = plan::expand(&cross, &profiles["paper"]).unwrap();
    assert_eq!(plan.pairs.len(), 6);
    let quick = plan::expand(&cross, &profiles["quick"]).unwrap();
    assert!(quick.published.is_none());
    assert!(quick.published_note.unwrap().contains("fashion-mnist"));
}

#[test]
fn quick_profile_stays_within_budget() {
    let mut args = AblateArgs::new(SuiteSelection::All, "quick");
    args.suites_dir = shipped_dir();
    let (profile, plans) = ablate::plans(&args).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut total = ablate::cost::Cost::default();
    for plan in &plans {
        for run in &plan.runs {
            if seen.insert(run.id.clone()) {
                total += ablate::cost::run_cost(&run.config, profile.step_seconds);
            }
        }
    }
    assert!(total.steps <= 5_000, "quick profile plans {} optimizer steps", total.steps);
    assert!(total.seconds <= 20.0 * 60.0, "quick profile estimate {} s", total.seconds);
}

#[test]
fn dry_run_all_quick() {
    let results = temp_dir("dry-run");
    let fashion = results.path().join("data").join("fashion-mnist");
    write_tiny_fashion_mnist(&fashion);
    let mut args = AblateArgs::new(SuiteSelection::All, "quick");
    args.suites_dir = shipped_dir();
    args.results_dir = results.path().join("results");
    args.data_dir = Some(fashion.clone());
    args.dry_run = true;
    let calls = AtomicUsize::new(0);
    let trainer = |_: &RunConfig, _: &Path, _: &RunOptions| -> anyhow::Result<Summary> {
        calls.fetch_add(1, Ordering::SeqCst);
        anyhow::bail!("a dry run trains nothing")
    };
    let outcome = ablate::run_with(&args, &trainer).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(!args.results_dir.exists(), "a dry run writes nothing");
    let listing = outcome.dry_run.expect("a dry run returns its listing");
    insta::assert_snapshot!("dry-run-all-quick", listing);

    args.data_dir = Some(results.path().join("no-data"));
    let listing = ablate::run_with(&args, &trainer).unwrap().dry_run.unwrap();
    assert!(
        listing.contains("note: a real run would stop here: fashion-mnist data folder"),
        "{listing}"
    );
}

// ---------------------------------------------------------------------------
// Sharding

#[test]
fn shard_parse_errors() {
    for (text, reason) in [
        ("3/2", "shard 3 does not exist out of 2"),
        ("0/0", "the shard count must be at least 1"),
        ("0/3", "shards are numbered from 1"),
        ("1-3", "missing '/'"),
        ("a/3", "shard index 'a' is not a whole number"),
        ("1/", "shard count '' is not a whole number"),
        ("-1/3", "shard index '-1' is not a whole number"),
    ] {
        let err = text.parse::<Shard>().unwrap_err();
        assert_eq!(err.reason, reason, "{text}");
        assert!(err.to_string().contains(&format!("invalid shard '{text}'")), "{err}");
    }
    assert_eq!("2/4".parse::<Shard>().unwrap().to_string(), "2/4");
}

#[test]
fn shard_partition_covers_plan_once() {
    let profiles = shipped_profiles();
    let suite = Suite::load(&shipped_dir().join("paper-same-arch.toml")).unwrap();
    let plan = plan::expand(&suite, &profiles["paper"]).unwrap();
    let len = plan.runs.len();
    for count in 1..=7 {
        let mut seen = vec![0; len];
        for index in 1..=count {
            let share = Shard::new(index, count).unwrap().share(len);
            assert!(share.windows(2).all(|w| w[0] < w[1]), "share in plan order");
            for i in share {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "count {count}: {seen:?}");
    }
    assert_eq!(Shard::new(3, 3).unwrap().share(2), Vec::<usize>::new());
}

// ---------------------------------------------------------------------------
// Store

fn finished_summary(epochs: i64, top1: f64) -> Summary {
    Summary {
        status: RunStatus::Finished,
        error: None,
        epochs_done: epochs,
        epochs,
        last_top1: Some(top1),
        last_top5: Some(99.0),
        best_top1: Some(top1 + 0.5),
        best_top5: Some(99.5),
        best_epoch: Some(epochs),
        wall_seconds: 1.0,
        device: "cpu".into(),
        threads: 1,
    }
}

#[test]
fn store_atomic_write_replaces_whole_file() {
    let dir = temp_dir("atomic");
    let path = dir.path().join("summary.json");
    write_atomic(&path, b"first version, longer than the second").unwrap();
    write_atomic(&path, b"second").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["summary.json"], "no temporary file is left");
    let missing = dir.path().join("no-such-folder").join("x.json");
    assert!(write_atomic(&missing, b"x").is_err());
}

#[test]
fn store_states_follow_summary() {
    let dir = temp_dir("states");
    let store = Store::new(dir.path());
    let plan = expand(TWO_PAIRS, "tiny").unwrap();
    let run = &plan.runs[0];
    assert_eq!(store.state(&run.id).unwrap(), RunState::New);
    store.write_config(&run.config).unwrap();
    assert_eq!(store.state(&run.id).unwrap(), RunState::Interrupted(None));
    let done = finished_summary(1, 50.0);
    store.write_summary(&run.id, &done).unwrap();
    assert_eq!(store.state(&run.id).unwrap(), RunState::Finished(done));
    let stored = std::fs::read_to_string(store.run_dir(&run.id).join("config.json")).unwrap();
    let back: RunConfig = serde_json::from_str(&stored).unwrap();
    assert_eq!(back, run.config);
}

#[test]
fn store_rejects_folder_with_other_config() {
    let dir = temp_dir("mismatch");
    let store = Store::new(dir.path());
    let plan = expand(TWO_PAIRS, "tiny").unwrap();
    let (a, b) = (&plan.runs[0], &plan.runs[1]);
    let folder = store.run_dir(&a.id);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("config.json"), serde_json::to_vec(&b.config).unwrap()).unwrap();
    let err = store.state(&a.id).unwrap_err().to_string();
    assert!(err.contains(&a.id), "{err}");
    assert!(err.contains(&format!("config.json has id {}", b.id)), "{err}");
}

#[test]
fn store_lock_is_exclusive() {
    let dir = temp_dir("lock");
    let store = Store::new(dir.path());
    let first = store.try_lock("0123456789abcdef").unwrap();
    assert!(first.is_some());
    assert!(store.try_lock("0123456789abcdef").unwrap().is_none());
    drop(first);
    assert!(store.try_lock("0123456789abcdef").unwrap().is_some());
}

// ---------------------------------------------------------------------------
// Runner loop

/// Stands in for `crate::train::run` in the tests and trains nothing.
///
/// It checks what the runner must have prepared: the run's config.json, and a
/// finished teacher for a student. It appends one line per call to
/// `metrics.csv`, as the trainer appends its per-epoch rows. It returns a
/// finished summary whose accuracy depends on the seed and method, so that
/// tables get numbers.
fn stand_in_trainer(
    config: &RunConfig,
    dir: &Path,
    options: &RunOptions,
) -> anyhow::Result<Summary> {
    anyhow::ensure!(dir.join("config.json").is_file(), "config.json missing in {}", dir.display());
    if let RunConfig::Student(_) = config {
        let teacher_dir =
            options.teacher_checkpoint.as_ref().expect("a student gets its teacher's folder");
        let summary: Summary =
            serde_json::from_slice(&std::fs::read(teacher_dir.join("summary.json"))?)?;
        anyhow::ensure!(summary.status == RunStatus::Finished, "teacher not finished");
    }
    let metrics = dir.join("metrics.csv");
    let mut rows = std::fs::read_to_string(&metrics).unwrap_or_default();
    rows.push_str("epoch,top1\n");
    std::fs::write(&metrics, rows)?;
    let train = config.train();
    let bonus = match config {
        RunConfig::Student(s) => {
            Method::NAMES.iter().position(|m| *m == s.distill.method.to_string()).unwrap_or(0)
        }
        RunConfig::Teacher(_) => 0,
    };
    Ok(finished_summary(train.epochs, 60.0 + train.seed as f64 + bonus as f64))
}

struct Fixture {
    _dir: tempfile::TempDir,
    args: AblateArgs,
}

/// Creates a suites folder with one small suite on synthetic data and its
/// profiles.
fn fixture(name: &str, suite: &str) -> Fixture {
    let dir = temp_dir(name);
    let suites = dir.path().join("ablations");
    std::fs::create_dir(&suites).unwrap();
    std::fs::write(suites.join("profiles.toml"), TEST_PROFILES).unwrap();
    std::fs::write(suites.join("small.toml"), suite).unwrap();
    let mut args = AblateArgs::new(SuiteSelection::Named("small".into()), "tiny");
    args.suites_dir = suites;
    args.results_dir = dir.path().join("results");
    args.data_dir = Some(dir.path().join("data"));
    Fixture { _dir: dir, args }
}

const SMALL_SUITE: &str = r#"
description = "kd and crcd on one pair"
[axes]
method = ["vanilla", "kd", "crcd"]
[base]
teacher = "resnet32x4"
student = "resnet8x4"
"#;

#[test]
fn runner_trains_every_run_then_skips_them() {
    let f = fixture("runner-all", SMALL_SUITE);
    let calls = Mutex::new(Vec::new());
    let trainer = |c: &RunConfig, d: &Path, o: &RunOptions| {
        calls.lock().unwrap().push(c.id());
        stand_in_trainer(c, d, o)
    };
    let outcome = ablate::run_with(&f.args, &trainer).unwrap();
    let suite = &outcome.suites[0];
    assert_eq!(suite.planned, 7, "1 teacher, 2 vanilla, 4 students");
    assert_eq!(suite.finished.len(), 7);
    assert_eq!(outcome.failed(), 0);
    let (_, plans) = ablate::plans(&f.args).unwrap();
    let planned: Vec<String> = plans[0].runs.iter().map(|r| r.id.clone()).collect();
    assert_eq!(*calls.lock().unwrap(), planned, "plan order, teacher first");

    let store = Store::new(&f.args.results_dir);
    for id in &planned {
        assert!(matches!(store.state(id).unwrap(), RunState::Finished(_)), "{id}");
        assert!(store.run_dir(id).join("metrics.csv").is_file());
    }
    let manifest = f.args.results_dir.join("suites").join("small.tiny.json");
    assert!(manifest.is_file(), "the manifest is written for the report");

    calls.lock().unwrap().clear();
    let again = ablate::run_with(&f.args, &trainer).unwrap();
    assert!(calls.lock().unwrap().is_empty(), "finished runs are not trained again");
    assert_eq!(again.suites[0].already_done.len(), 7);
}

#[test]
fn runner_records_failure_and_goes_on() {
    let f = fixture("runner-fail", SMALL_SUITE);
    let (_, plans) = ablate::plans(&f.args).unwrap();
    let plan = &plans[0];
    let failing = plan.runs.iter().find(|r| r.method == Some(Method::Kd)).unwrap().id.clone();
    let panicking = plan.runs.iter().find(|r| r.method == Some(Method::Crcd)).unwrap().id.clone();
    let trainer = |c: &RunConfig, d: &Path, o: &RunOptions| {
        let id = c.id();
        if id == failing {
            anyhow::bail!("loss is NaN at step 3\nsecond line");
        }
        if id == panicking {
            panic!("tensor shape mismatch");
        }
        stand_in_trainer(c, d, o)
    };
    let outcome = ablate::run_with(&f.args, &trainer).unwrap();
    let suite = &outcome.suites[0];
    assert_eq!(suite.failed.len(), 2, "{:?}", suite.failed);
    assert_eq!(suite.finished.len(), 5);
    let store = Store::new(&f.args.results_dir);
    let RunState::Failed(summary) = store.state(&failing).unwrap() else { panic!("failed state") };
    assert_eq!(summary.error.as_deref(), Some("loss is NaN at step 3 second line"));
    let RunState::Failed(summary) = store.state(&panicking).unwrap() else {
        panic!("failed state")
    };
    assert_eq!(summary.error.as_deref(), Some("the trainer panicked: tensor shape mismatch"));

    // A second session retries the failed runs only.
    let calls = AtomicUsize::new(0);
    let healthy = |c: &RunConfig, d: &Path, o: &RunOptions| {
        calls.fetch_add(1, Ordering::SeqCst);
        stand_in_trainer(c, d, o)
    };
    let again = ablate::run_with(&f.args, &healthy).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(again.suites[0].resumed.len(), 2);
}

#[test]
fn runner_fails_students_of_failed_teacher() {
    let f = fixture("runner-teacher-fail", SMALL_SUITE);
    let trainer = |c: &RunConfig, d: &Path, o: &RunOptions| match c {
        RunConfig::Teacher(t) if t.model.name() == "resnet32x4" => anyhow::bail!("out of memory"),
        _ => stand_in_trainer(c, d, o),
    };
    let outcome = ablate::run_with(&f.args, &trainer).unwrap();
    let suite = &outcome.suites[0];
    assert_eq!(suite.failed.len(), 5, "the teacher and its 4 students");
    assert_eq!(suite.finished.len(), 2, "the vanilla runs");
    let student_errors: Vec<&String> = suite.failed.iter().skip(1).map(|(_, e)| e).collect();
    assert!(
        student_errors.iter().all(|e| e.contains("failed: out of memory")),
        "{student_errors:?}"
    );
}

#[test]
fn runner_resumes_interrupted_run() {
    let f = fixture("runner-resume", SMALL_SUITE);
    let (_, plans) = ablate::plans(&f.args).unwrap();
    let teacher = &plans[0].runs[0];
    let store = Store::new(&f.args.results_dir);
    store.write_config(&teacher.config).unwrap();
    let mut partial = finished_summary(1, 40.0);
    partial.status = RunStatus::Running;
    partial.epochs_done = 0;
    partial.wall_seconds = 12.5;
    store.write_summary(&teacher.id, &partial).unwrap();
    std::fs::write(store.run_dir(&teacher.id).join("metrics.csv"), "epoch,top1\n").unwrap();

    let seen_running = AtomicUsize::new(0);
    let trainer = |c: &RunConfig, d: &Path, o: &RunOptions| {
        if c.id() == teacher.id {
            let s: Summary = serde_json::from_slice(&std::fs::read(d.join("summary.json"))?)?;
            assert_eq!(s.status, RunStatus::Running);
            assert_eq!(s.wall_seconds, 12.5, "the running summary keeps earlier sessions' time");
            seen_running.fetch_add(1, Ordering::SeqCst);
        }
        stand_in_trainer(c, d, o)
    };
    let outcome = ablate::run_with(&f.args, &trainer).unwrap();
    assert_eq!(seen_running.load(Ordering::SeqCst), 1);
    assert_eq!(outcome.suites[0].resumed, vec![teacher.id.clone()]);
    let metrics = std::fs::read_to_string(store.run_dir(&teacher.id).join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "the trainer found the earlier session's files");
}

#[test]
fn runner_skips_run_locked_by_another_process() {
    let f = fixture("runner-locked", SMALL_SUITE);
    let (_, plans) = ablate::plans(&f.args).unwrap();
    let vanilla = plans[0].runs.iter().find(|r| r.kind == RunKind::Vanilla).unwrap().id.clone();
    let store = Store::new(&f.args.results_dir);
    let lock = store.try_lock(&vanilla).unwrap().unwrap();
    let trainer = |c: &RunConfig, d: &Path, o: &RunOptions| {
        assert_ne!(c.id(), vanilla, "a locked run is not trained");
        stand_in_trainer(c, d, o)
    };
    let outcome = ablate::run_with(&f.args, &trainer).unwrap();
    assert_eq!(outcome.suites[0].locked, vec![vanilla.clone()]);
    assert!(outcome.to_string().contains(&format!("locked: run {vanilla}")));
    drop(lock);
}

#[test]
fn runner_waits_for_teacher_locked_elsewhere() {
    let f = fixture("runner-wait", SMALL_SUITE);
    let (_, plans) = ablate::plans(&f.args).unwrap();
    let plan = &plans[0];
    let teacher = plan.runs[0].clone();
    let store = Store::new(&f.args.results_dir);
    store.ensure_writable().unwrap();
    let lock = store.try_lock(&teacher.id).unwrap().unwrap();

    // "Another process": holds the teacher's lock, then finishes it.
    let other = {
        let store = store.clone();
        let teacher = teacher.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            store.write_config(&teacher.config).unwrap();
            store.write_summary(&teacher.id, &finished_summary(1, 70.0)).unwrap();
            drop(lock);
        })
    };
    let session = Session {
        device: tch::Device::Cpu,
        threads: 1,
        data_dir: PathBuf::from("data"),
        progress: false,
        poll_interval: Duration::from_millis(20),
    };
    let calls = Mutex::new(Vec::new());
    let trainer = |c: &RunConfig, d: &Path, o: &RunOptions| {
        calls.lock().unwrap().push(c.id());
        stand_in_trainer(c, d, o)
    };
    let students: Vec<usize> =
        (0..plan.runs.len()).filter(|&i| plan.runs[i].kind == RunKind::Student).collect();
    let mut runner = Runner::new(&store, &trainer, &session);
    let outcome = runner.run_plan(plan, &students, &indicatif::ProgressBar::hidden()).unwrap();
    other.join().unwrap();
    assert_eq!(outcome.finished.len(), students.len());
    assert!(!calls.lock().unwrap().contains(&teacher.id), "the other process trained the teacher");
}

#[test]
fn runner_shards_train_every_run_once() {
    let f = fixture("runner-shards", SMALL_SUITE);
    let calls = Mutex::new(Vec::new());
    let trainer = |c: &RunConfig, d: &Path, o: &RunOptions| {
        calls.lock().unwrap().push(c.id());
        stand_in_trainer(c, d, o)
    };
    for index in 1..=3 {
        let mut args = f.args.clone();
        args.shard = Some(Shard::new(index, 3).unwrap());
        ablate::run_with(&args, &trainer).unwrap();
    }
    let mut trained = calls.lock().unwrap().clone();
    trained.sort();
    let (_, plans) = ablate::plans(&f.args).unwrap();
    let mut planned: Vec<String> = plans[0].runs.iter().map(|r| r.id.clone()).collect();
    planned.sort();
    assert_eq!(trained, planned);
}

// ---------------------------------------------------------------------------
// Checks before training

fn never_called(_: &RunConfig, _: &Path, _: &RunOptions) -> anyhow::Result<Summary> {
    panic!("no run may start when a check fails")
}

#[test]
fn run_rejects_results_under_a_file() {
    let f = fixture("not-writable", SMALL_SUITE);
    let file = f.args.results_dir.with_file_name("plain-file");
    std::fs::write(&file, "not a folder").unwrap();
    let mut args = f.args.clone();
    args.results_dir = file.join("results");
    let err = format!("{:#}", ablate::run_with(&args, &never_called).unwrap_err());
    assert!(err.contains("is not writable"), "{err}");
    assert!(err.contains("--results"), "{err}");
}

#[test]
fn run_rejects_mismatched_run_folder_before_training() {
    let f = fixture("mismatch-run", SMALL_SUITE);
    let (_, plans) = ablate::plans(&f.args).unwrap();
    let (last, first) = (plans[0].runs.last().unwrap(), &plans[0].runs[0]);
    let folder = f.args.results_dir.join("runs").join(&last.id);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("config.json"), serde_json::to_vec(&first.config).unwrap()).unwrap();
    let err = format!("{:#}", ablate::run_with(&f.args, &never_called).unwrap_err());
    assert!(err.contains("does not match its config"), "{err}");
    let mut dry = f.args.clone();
    dry.dry_run = true;
    assert!(ablate::run_with(&dry, &never_called).is_err(), "a dry run checks the folders too");
}

#[test]
fn run_names_missing_dataset_and_fix() {
    let suite = SMALL_SUITE;
    let f = fixture("missing-data", suite);
    let profiles = TEST_PROFILES.to_owned()
        + "\n[fashion]\ndescription = \"x\"\ndataset = \"fashion-mnist\"\nsubset = 200\n[fashion.nce_k]\n\"500\" = 10\n";
    std::fs::write(f.args.suites_dir.join("profiles.toml"), &profiles).unwrap();
    let mut args = f.args.clone();
    args.profile = "fashion".into();
    let err = format!("{:#}", ablate::run_with(&args, &never_called).unwrap_err());
    assert!(err.contains("needs fashion-mnist"), "{err}");
    assert!(err.contains("scripts/setup"), "{err}");
    args.profile = "full".into();
    let err = format!("{:#}", ablate::run_with(&args, &never_called).unwrap_err());
    assert!(err.contains("needs cifar100"), "{err}");
    assert!(err.contains("--data-dir"), "{err}");
}

#[test]
fn run_rejects_unknown_suite_and_profile() {
    let f = fixture("unknown-names", SMALL_SUITE);
    let mut args = f.args.clone();
    args.suite = SuiteSelection::Named("smal".into());
    let err = format!("{:#}", ablate::run_with(&args, &never_called).unwrap_err());
    assert!(err.contains("suite 'smal' not found"), "{err}");
    assert!(err.contains("similar suites: small"), "{err}");
    let mut args = f.args.clone();
    args.profile = "tinny".into();
    let err = format!("{:#}", ablate::run_with(&args, &never_called).unwrap_err());
    assert!(err.contains("profile 'tinny' not found"), "{err}");
    assert!(err.contains("similar profiles: tiny"), "{err}");
}

#[test]
fn run_rejects_empty_plan() {
    let suite = format!("{SMALL_SUITE}[[exclude]]\nmethod = \"vanilla\"\n[[exclude]]\nmethod = \"kd\"\n[[exclude]]\nmethod = \"crcd\"\n");
    let f = fixture("empty-plan", &suite);
    let err = format!("{:#}", ablate::run_with(&f.args, &never_called).unwrap_err());
    assert!(err.contains("the plan is empty"), "{err}");
}

#[test]
fn list_suites_counts_runs_per_profile() {
    let infos = ablate::list_suites(&shipped_dir()).unwrap();
    assert_eq!(infos.len(), 8);
    let negatives = infos.iter().find(|i| i.name == "negatives").unwrap();
    assert_eq!(negatives.axes, vec!["teacher+student", "nce_k"]);
    let paper = negatives.runs.iter().find(|(p, _)| p == "paper").unwrap().1;
    assert_eq!(paper, 2 + 2 * 3 * 3, "2 teachers, 2 pairs × 3 K × 3 seeds");
}

/// Writes gzip IDX files of one blank 28×28 image per split, a valid
/// Fashion-MNIST folder as far as the loader's checks go.
fn write_tiny_fashion_mnist(dir: &Path) {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let gzip = |bytes: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    };
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 28, 0, 0, 0, 28];
    images.extend([0u8; 28 * 28]);
    let labels = [0, 0, 8, 1, 0, 0, 0, 1, 3];
    for split in ["train", "t10k"] {
        std::fs::write(dir.join(format!("{split}-images-idx3-ubyte.gz")), gzip(&images)).unwrap();
        std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte.gz")), gzip(&labels)).unwrap();
    }
}
