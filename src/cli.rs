//! The `crcd` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::ablate::store::{self, CONFIG_FILE, SUMMARY_FILE};
use crate::ablate::{self, AblateArgs, Shard, SuiteSelection};
use crate::config::{
    DistillConfig, Element, Embed, GradientLoss, GradientPath, Method, RelationForm, RunConfig,
    Sampling, ScheduleKind, StudentConfig, TrainConfig,
};
use crate::data::{self, DatasetName};
use crate::device::{default_threads, parse_device};
use crate::fsutil;
use crate::models::Arch;
use crate::report;
use crate::train::{self, MetricsLog, RunOptions, RunStatus, Summary, METRICS_FILE};

/// Reproducible ablations of Complementary Relation Contrastive Distillation.
#[derive(Debug, Parser)]
#[command(name = "crcd", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a network with cross-entropy (a teacher, or a vanilla baseline).
    TrainTeacher(TrainTeacherArgs),
    /// Train a student from a trained teacher with a distillation method.
    Distill(Box<DistillArgs>),
    /// Print test top-1 and top-5 of a checkpoint.
    Eval(EvalArgs),
    /// Train every run of the declared ablation suites that is not done yet,
    /// then write the tables.
    Ablate(AblateCliArgs),
    /// Write the tables of every suite from the stored run summaries.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
struct AblateCliArgs {
    /// Suite name (a file ablations/<name>.toml), or `all`.
    #[arg(required_unless_present = "list")]
    suite: Option<SuiteSelection>,
    /// List the suites, their axes and run counts per profile, and exit.
    #[arg(long)]
    list: bool,
    /// Scale profile from ablations/profiles.toml: paper, quick or smoke.
    #[arg(long, default_value = "quick")]
    profile: String,
    /// Print the plan (runs, what is done, estimated cost) and train nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run only share I of N (e.g. 2/4) of every suite, for parallel
    /// processes or cluster array jobs over one results folder.
    #[arg(long)]
    shard: Option<Shard>,
    /// Folder of runs/, suites/, tables/ and published/.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Folder of the suite files and profiles.toml.
    #[arg(long, default_value = "ablations")]
    suites_dir: PathBuf,
    /// Folder of the profile's dataset [default: data/<dataset>].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// libtorch threads per process [default: the number of cores].
    #[arg(long)]
    threads: Option<i64>,
    /// Do not draw progress bars.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// Folder of runs/, suites/, tables/ and published/.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

/// Data, schedule and session flags shared by the training commands.
#[derive(Debug, Args)]
struct CommonTrainArgs {
    /// Dataset: cifar100, cifar10, fashion-mnist or synthetic.
    #[arg(long, default_value = "cifar100")]
    dataset: DatasetName,
    /// Folder of the dataset's files [default: data/<dataset>].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Epochs [default: 240, or 250 for CRCD students]; the learning-rate
    /// milestones (150, 180 and 210 of 240) move to the same fractions.
    #[arg(long)]
    epochs: Option<i64>,
    /// Images per optimizer step.
    #[arg(long, default_value_t = 64)]
    batch_size: i64,
    /// Initial learning rate [default: 0.05, or 0.01 for MobileNetV2,
    /// ShuffleV1 and ShuffleV2].
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of initialisation, data order, augmentation and sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on a seeded, class-balanced subset of this many images.
    #[arg(long)]
    subset: Option<usize>,
    /// Evaluate on a class-balanced subset of this many test images.
    #[arg(long)]
    test_subset: Option<usize>,
    /// Stop every epoch after this many steps (for quick checks).
    #[arg(long)]
    max_steps_per_epoch: Option<i64>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// libtorch threads [default: the number of cores]; results repeat bit
    /// for bit only at the same count.
    #[arg(long)]
    threads: Option<i64>,
    /// Run folder for metrics, checkpoints and summary [default:
    /// results/runs/<run id>]. An existing run there is resumed.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not draw progress bars.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Args)]
struct TrainTeacherArgs {
    /// Network, by its RepDistiller name (resnet56, wrn_40_2, ResNet50, …).
    #[arg(long)]
    model: Arch,
    #[command(flatten)]
    common: CommonTrainArgs,
}

#[derive(Debug, Args)]
struct DistillArgs {
    /// The teacher's run folder or checkpoint file.
    #[arg(long)]
    teacher: PathBuf,
    /// Student network, by its RepDistiller name.
    #[arg(long)]
    student: Arch,
    /// Method: vanilla, kd, crd, crd_kd or crcd.
    #[arg(long, default_value = "crcd")]
    method: Method,
    /// CRCD relation elements, comma-separated: feature, gradient [default:
    /// feature,gradient].
    #[arg(long, value_delimiter = ',')]
    elements: Option<Vec<Element>>,
    /// Loss on the gradient element: crcd, crd or cosine [default: crcd].
    #[arg(long)]
    gradient_loss: Option<GradientLoss>,
    /// Gradient element computation: closed_form or autograd [default:
    /// closed_form].
    #[arg(long)]
    gradient_path: Option<GradientPath>,
    /// Embedding head: linear, nonlinear or none [default: linear].
    #[arg(long)]
    embed: Option<Embed>,
    /// Contrast sampling: exact, relax or queue [default: exact].
    #[arg(long)]
    sampling: Option<Sampling>,
    /// CRCD relation scores: gram or direct (the memory-hungry oracle)
    /// [default: gram].
    #[arg(long)]
    relation_form: Option<RelationForm>,
    /// Loss-weight schedule: constant, step, linear_decrease,
    /// linear_decrease2 or exp_increase [default: step for CRCD, constant
    /// otherwise].
    #[arg(long)]
    schedule: Option<ScheduleKind>,
    /// Training progress (0..1) at which `step` turns the mimic weight off
    /// [default: 0.96].
    #[arg(long)]
    schedule_step: Option<f64>,
    /// Negatives per sample (K) [default: 500 for CRCD, 16384 otherwise].
    #[arg(long)]
    nce_k: Option<i64>,
    /// Contrast temperature (T) [default: 0.05 for CRCD, 0.07 otherwise].
    #[arg(long)]
    nce_t: Option<f64>,
    /// Memory-bank momentum [default: 0.5].
    #[arg(long)]
    nce_mu: Option<f64>,
    /// Embedding width (m) [default: 128].
    #[arg(long)]
    feat_dim: Option<i64>,
    /// Weight of the cross-entropy [default: 0.1 for KD, 1 otherwise].
    #[arg(long)]
    gamma: Option<f64>,
    /// Weight of the KD loss [default: 0.9 for KD and CRCD, 1 for CRD+KD,
    /// 0 otherwise].
    #[arg(long)]
    alpha: Option<f64>,
    /// Weight of the contrastive or relation loss [default: 0.8 for CRD and
    /// CRD+KD, 1 for CRCD, 0 otherwise].
    #[arg(long)]
    beta: Option<f64>,
    /// Weight of the gradient relation loss inside the β term [default: 1].
    #[arg(long)]
    lambda_g: Option<f64>,
    /// KD temperature [default: 4].
    #[arg(long)]
    kd_t: Option<f64>,
    /// The authors' release: add the gradient term as α·KD·L_grad.
    #[arg(long)]
    grad_times_kd: bool,
    /// The authors' release: run the teacher in train mode.
    #[arg(long)]
    teacher_train_mode: bool,
    #[command(flatten)]
    common: CommonTrainArgs,
}

#[derive(Debug, Args)]
struct EvalArgs {
    /// A run folder or its checkpoint.safetensors.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset whose test split is evaluated.
    #[arg(long)]
    dataset: DatasetName,
    /// Folder of the dataset's files [default: data/<dataset>].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// Parses the command line, runs the command and prints a fatal error once,
/// with its causes on one line. Exit status: 0 success, 1 error, 2 usage.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("crcd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRCD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::TrainTeacher(args) => {
            let cfg = train_config(args.model, None, &args.common);
            let run = RunConfig::Teacher(cfg);
            train_in_folder(&run, &args.common, None)
        }
        Command::Distill(args) => distill(*args),
        Command::Ablate(args) => ablate(args),
        Command::Report(args) => {
            for path in report::write_tables(&args.results)? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Eval(args) => {
            let device = parse_device(&args.device)?;
            let data_dir = args.data_dir.unwrap_or_else(|| data::default_data_dir(args.dataset));
            let (meta, (loss, top1, top5)) =
                train::evaluate_checkpoint(&args.checkpoint, args.dataset, &data_dir, device)?;
            println!(
                "{} after {} epoch(s) on {} test: top1 {top1:.2} top5 {top5:.2} loss {loss:.4}",
                meta.arch, meta.epochs_done, args.dataset
            );
            Ok(())
        }
    }
}

fn ablate(args: AblateCliArgs) -> anyhow::Result<()> {
    if args.list {
        for suite in ablate::list_suites(&args.suites_dir)? {
            let runs: Vec<String> =
                suite.runs.iter().map(|(profile, n)| format!("{profile} {n}")).collect();
            println!("{}: {}", suite.name, suite.description);
            println!("    axes: {}", suite.axes.join(", "));
            println!("    runs: {}", runs.join(", "));
        }
        return Ok(());
    }
    let suite = args.suite.expect("clap requires a suite unless --list is given");
    let mut ablate_args = AblateArgs::new(suite, &args.profile);
    ablate_args.dry_run = args.dry_run;
    ablate_args.shard = args.shard;
    ablate_args.suites_dir = args.suites_dir;
    ablate_args.results_dir = args.results.clone();
    ablate_args.device = parse_device(&args.device)?;
    ablate_args.threads = args.threads.unwrap_or_else(default_threads);
    if ablate_args.threads < 1 {
        anyhow::bail!("invalid --threads {}: expected at least 1", ablate_args.threads);
    }
    ablate_args.data_dir = args.data_dir;
    ablate_args.progress = !args.no_progress;
    let outcome = ablate::run(&ablate_args)?;
    print!("{outcome}");
    if args.dry_run {
        return Ok(());
    }
    for path in report::write_tables(&args.results)? {
        println!("table: {}", path.display());
    }
    let failed = outcome.failed();
    if failed > 0 {
        anyhow::bail!(
            "{failed} run(s) failed; their errors are listed above and in their summary.json"
        );
    }
    Ok(())
}

/// Builds the protocol configuration of `model` with the user's overrides.
/// `method` selects the CRCD student protocol (250 epochs).
fn train_config(model: Arch, method: Option<Method>, args: &CommonTrainArgs) -> TrainConfig {
    let mut cfg = TrainConfig::protocol(model, args.dataset);
    if method == Some(Method::Crcd) {
        // 240 epochs plus 10 with the step schedule's mimic weight at 0.
        cfg.epochs = 250;
    }
    if let Some(epochs) = args.epochs {
        cfg = cfg.with_epochs_scaled(epochs);
    }
    cfg.batch_size = args.batch_size;
    cfg.lr = args.lr.unwrap_or(cfg.lr);
    cfg.seed = args.seed;
    cfg.subset = args.subset;
    cfg.test_subset = args.test_subset;
    cfg.max_steps_per_epoch = args.max_steps_per_epoch;
    cfg
}

fn distill(args: DistillArgs) -> anyhow::Result<()> {
    let teacher_cfg = teacher_config(&args.teacher, args.common.dataset)?;
    let mut d = DistillConfig::for_method(args.method);
    d.elements = args.elements.clone().unwrap_or(d.elements);
    d.gradient_loss = args.gradient_loss.unwrap_or(d.gradient_loss);
    d.gradient_path = args.gradient_path.unwrap_or(d.gradient_path);
    d.embed = args.embed.unwrap_or(d.embed);
    d.sampling = args.sampling.unwrap_or(d.sampling);
    d.relation_form = args.relation_form.unwrap_or(d.relation_form);
    d.schedule = args.schedule.unwrap_or(d.schedule);
    d.schedule_step = args.schedule_step.unwrap_or(d.schedule_step);
    d.nce_k = args.nce_k.unwrap_or(d.nce_k);
    d.nce_t = args.nce_t.unwrap_or(d.nce_t);
    d.nce_mu = args.nce_mu.unwrap_or(d.nce_mu);
    d.feat_dim = args.feat_dim.unwrap_or(d.feat_dim);
    d.gamma = args.gamma.unwrap_or(d.gamma);
    d.alpha = args.alpha.unwrap_or(d.alpha);
    d.beta = args.beta.unwrap_or(d.beta);
    d.lambda_g = args.lambda_g.unwrap_or(d.lambda_g);
    d.kd_t = args.kd_t.unwrap_or(d.kd_t);
    d.grad_times_kd = args.grad_times_kd;
    d.teacher_train_mode = args.teacher_train_mode;
    d.validate()?;
    let train = train_config(args.student, Some(args.method), &args.common);
    let run = RunConfig::Student(StudentConfig { train, distill: d, teacher: teacher_cfg });
    train_in_folder(&run, &args.common, Some(args.teacher.clone()))
}

/// Reads the teacher's configuration from its run folder's `config.json`.
fn teacher_config(path: &Path, dataset: DatasetName) -> anyhow::Result<TrainConfig> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "teacher run config {} not found; pass the folder written by crcd train-teacher",
            config_path.display()
        )
    })?;
    let run: RunConfig = serde_json::from_str(&text)
        .with_context(|| format!("teacher run config {} is invalid", config_path.display()))?;
    let cfg = run.train().clone();
    if cfg.dataset != dataset {
        anyhow::bail!(
            "the teacher in {} was trained on {}, but --dataset is {dataset}; pass --dataset {}",
            dir.display(),
            cfg.dataset,
            cfg.dataset
        );
    }
    Ok(cfg)
}

/// Trains `run` in its folder, keeping `config.json` and `summary.json` up
/// to date, and prints where the results are.
fn train_in_folder(
    run: &RunConfig,
    common: &CommonTrainArgs,
    teacher_checkpoint: Option<PathBuf>,
) -> anyhow::Result<()> {
    let device = parse_device(&common.device)?;
    let data_dir =
        common.data_dir.clone().unwrap_or_else(|| data::default_data_dir(common.dataset));
    let options = RunOptions {
        device,
        threads: common.threads.unwrap_or_else(default_threads),
        data_dir,
        teacher_checkpoint,
        progress: !common.no_progress,
    };
    // Check the settings before a run folder exists, so bad input leaves
    // nothing behind.
    run.train().validate()?;
    if let RunConfig::Student(s) = run {
        s.distill.validate()?;
    }
    if options.threads < 1 {
        anyhow::bail!("invalid --threads {}: expected at least 1", options.threads);
    }
    let dir = common.out.clone().unwrap_or_else(|| Path::new("results/runs").join(run.id()));
    fsutil::ensure_writable_dir(&dir)?;

    let config_path = dir.join(CONFIG_FILE);
    if let Some(existing) = store::read_json::<RunConfig>(&config_path)? {
        if &existing != run {
            anyhow::bail!(
                "{} contains another run ({}); choose another --out or remove the folder",
                dir.display(),
                existing.id()
            );
        }
    }
    store::write_json(&config_path, run)?;
    let summary_path = dir.join(SUMMARY_FILE);
    let previous = store::read_json::<Summary>(&summary_path)?;
    // A finished run keeps its summary: the numbers came from the session
    // that finished it, and a failing rerun must not mark it failed.
    let finished_before = previous.as_ref().is_some_and(|p| p.status == RunStatus::Finished);
    let running = store::running_summary(run, previous.as_ref(), device, options.threads);
    if !finished_before {
        store::write_json(&summary_path, &running)?;
    }

    tracing::info!("run {}: {} in {}", run.id(), describe(run), dir.display());
    let summary = match train::run(run, &dir, &options) {
        Ok(summary) => summary,
        Err(err) if finished_before => return Err(err),
        Err(err) => {
            // Keep the progress of earlier sessions beside the error.
            let progress = MetricsLog::read(&dir.join(METRICS_FILE), i64::MAX)
                .map(|log| {
                    Summary::from_log(&log, run.train().epochs, running.wall_seconds, &options)
                })
                .unwrap_or(running);
            store::write_json(
                &summary_path,
                &store::failed_summary(progress, &format!("{err:#}")),
            )?;
            return Err(err);
        }
    };
    if !finished_before {
        store::write_json(&summary_path, &summary)?;
    }

    println!(
        "{}: last top1 {:.2} top5 {:.2}, best top1 {:.2} (epoch {}), {:.0}s, results in {}",
        describe(run),
        summary.last_top1.unwrap_or(f64::NAN),
        summary.last_top5.unwrap_or(f64::NAN),
        summary.best_top1.unwrap_or(f64::NAN),
        summary.best_epoch.unwrap_or(0),
        summary.wall_seconds,
        dir.display()
    );
    Ok(())
}

fn describe(run: &RunConfig) -> String {
    match run {
        RunConfig::Teacher(t) => format!("{} on {} (seed {})", t.model, t.dataset, t.seed),
        RunConfig::Student(s) => format!(
            "{} -> {} {} on {} (seed {})",
            s.teacher.model, s.train.model, s.distill.method, s.train.dataset, s.train.seed
        ),
    }
}
