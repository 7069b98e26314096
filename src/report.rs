//! Result tables of the ablation suites: `results/tables/<suite>.<profile>.md`
//! and `.csv`.
//!
//! Rows are methods or variants, and columns are teacher → student pairs. A
//! cell is the mean ± sample standard deviation of test top-1 over the
//! finished seeds, with their count n. Tables show top-1 at the last epoch
//! (the CRD convention) and at the best epoch. Suites that reproduce a CRD benchmark table also get
//! the published last-epoch number and our difference to it, read from
//! `results/published/cifar100_crd_benchmark.csv`.
//!
//! The report reads only suite manifests (`results/suites/*.json`, written by
//! `ablate`) and the runs' `config.json` and `summary.json`, so it can run any
//! time, also while suites train. The same files give byte-identical tables:
//! rows and columns keep the manifest's order and numbers have two decimals.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use polars::prelude::*;

use crate::ablate::manifest::{manifests_dir, Manifest};
use crate::ablate::store::{write_atomic, Store};
use crate::train::RunStatus;

/// Path of the published CRD benchmark under a results folder.
pub const PUBLISHED_CSV: &str = "published/cifar100_crd_benchmark.csv";

/// The CRD benchmark (Tian et al., "Contrastive Representation
/// Distillation", ICLR 2020): last-epoch CIFAR-100 top-1 of teacher, student
/// and 14 methods on 13 pairs, built into the binary so that a new results
/// folder gets it.
const PUBLISHED_CSV_BYTES: &[u8] =
    include_bytes!("../results/published/cifar100_crd_benchmark.csv");

/// Writes the published CRD benchmark into `results_dir` unless a copy is
/// there already (a user may have edited theirs).
pub fn ensure_published_csv(results_dir: &Path) -> anyhow::Result<()> {
    let path = results_dir.join(PUBLISHED_CSV);
    if path.is_file() {
        return Ok(());
    }
    let dir = path.parent().expect("PUBLISHED_CSV has a folder");
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    crate::fsutil::write_atomic(&path, PUBLISHED_CSV_BYTES)
        .with_context(|| format!("failed to write {}", path.display()))
}

/// Row label of the teacher runs.
const TEACHER_ROW: &str = "teacher";

/// Writes the tables of every manifest under `results_dir` and returns the
/// paths written, Markdown then CSV for each suite, in manifest-name order.
pub fn write_tables(results_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = manifests_dir(results_dir);
    let mut manifests = Vec::new();
    if dir.is_dir() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let path = entry.with_context(|| format!("cannot read {}", dir.display()))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                manifests.push(path);
            }
        }
    }
    manifests.sort();
    if manifests.is_empty() {
        anyhow::bail!(
            "no suite manifests in {}\nrun `crcd ablate <suite>` first; it writes one per suite",
            dir.display()
        );
    }

    let tables_dir = results_dir.join("tables");
    std::fs::create_dir_all(&tables_dir)
        .with_context(|| format!("cannot create {}", tables_dir.display()))?;
    let store = Store::new(results_dir);
    let mut written = Vec::new();
    for path in manifests {
        let manifest = Manifest::read(&path)?;
        let table = build_table(&manifest, &store, results_dir)
            .with_context(|| format!("table of {}", path.display()))?;
        let stem = format!("{}.{}", manifest.suite, manifest.profile);
        let md = tables_dir.join(format!("{stem}.md"));
        let csv = tables_dir.join(format!("{stem}.csv"));
        write_atomic(&md, render_markdown(&manifest, &table).as_bytes())
            .with_context(|| format!("cannot write {}", md.display()))?;
        write_atomic(&csv, &render_csv(&manifest, table)?)
            .with_context(|| format!("cannot write {}", csv.display()))?;
        written.push(md);
        written.push(csv);
    }
    Ok(written)
}

/// Returns the published CSV's method name of a row label: the CRD tables
/// call the vanilla student `Student`.
fn published_method(row: &str) -> Option<&'static str> {
    match row {
        TEACHER_ROW => Some("Teacher"),
        "vanilla" => Some("Student"),
        "kd" => Some("KD"),
        "crd" => Some("CRD"),
        "crd_kd" => Some("CRD+KD"),
        _ => None,
    }
}

/// Reads the finished runs of `manifest` and aggregates them per cell, one
/// row per (row, pair) of the grid in table order.
fn build_table(
    manifest: &Manifest,
    store: &Store,
    results_dir: &Path,
) -> anyhow::Result<DataFrame> {
    // The grid: every (row, pair) that has at least one planned run.
    let mut grid_row = Vec::new();
    let mut grid_teacher = Vec::new();
    let mut grid_student = Vec::new();
    let mut grid_row_order = Vec::new();
    let mut grid_pair_order = Vec::new();
    let mut grid_planned = Vec::new();
    let mut grid_method = Vec::new();
    let rows: Vec<&str> =
        std::iter::once(TEACHER_ROW).chain(manifest.rows.iter().map(|r| r.as_str())).collect();
    for (r, row) in rows.iter().enumerate() {
        for (p, pair) in manifest.pairs.iter().enumerate() {
            let planned = if *row == TEACHER_ROW {
                usize::from(pair.teacher_run.is_some())
            } else {
                manifest
                    .cells
                    .iter()
                    .filter(|c| {
                        c.row == *row && c.teacher == pair.teacher && c.student == pair.student
                    })
                    .count()
            };
            if planned == 0 {
                continue;
            }
            grid_row.push(row.to_string());
            grid_teacher.push(pair.teacher.clone());
            grid_student.push(pair.student.clone());
            grid_row_order.push(r as u32);
            grid_pair_order.push(p as u32);
            grid_planned.push(planned as u32);
            grid_method.push(published_method(row));
        }
    }
    let grid = df!(
        "row" => grid_row,
        "teacher" => grid_teacher,
        "student" => grid_student,
        "row_order" => grid_row_order,
        "pair_order" => grid_pair_order,
        "planned" => grid_planned,
        "published_method" => grid_method,
    )?;

    // One record per finished run and cell.
    let mut run_row = Vec::new();
    let mut run_teacher = Vec::new();
    let mut run_student = Vec::new();
    let mut run_last: Vec<Option<f64>> = Vec::new();
    let mut run_best: Vec<Option<f64>> = Vec::new();
    let teacher_cells = manifest.pairs.iter().filter_map(|p| {
        let run = p.teacher_run.as_ref()?;
        Some((TEACHER_ROW, p.teacher.as_str(), p.student.as_str(), run.as_str()))
    });
    let student_cells = manifest
        .cells
        .iter()
        .map(|c| (c.row.as_str(), c.teacher.as_str(), c.student.as_str(), c.run.as_str()));
    for (row, teacher, student, run) in teacher_cells.chain(student_cells) {
        if store.read_config(run)?.is_none() {
            continue;
        }
        let Some(summary) = store.read_summary(run)? else { continue };
        if summary.status != RunStatus::Finished {
            continue;
        }
        run_row.push(row.to_owned());
        run_teacher.push(teacher.to_owned());
        run_student.push(student.to_owned());
        run_last.push(summary.last_top1);
        run_best.push(summary.best_top1);
    }
    let runs = df!(
        "row" => run_row,
        "teacher" => run_teacher,
        "student" => run_student,
        "last" => run_last,
        "best" => run_best,
    )?;

    let keys = [col("row"), col("teacher"), col("student")];
    let stats = runs.lazy().group_by(keys.clone()).agg([
        col("last").count().alias("n"),
        col("last").mean().alias("last_mean"),
        col("last").std(1).alias("last_std"),
        col("best").count().alias("n_best"),
        col("best").mean().alias("best_mean"),
        col("best").std(1).alias("best_std"),
    ]);
    let mut table = grid.lazy().join(stats, keys.clone(), keys, JoinArgs::new(JoinType::Left));

    table = match &manifest.published {
        Some(name) => {
            let path = results_dir.join(PUBLISHED_CSV);
            anyhow::ensure!(
                path.is_file(),
                "{} not found: the suite compares with the published table {name}; \
                 rerun crcd ablate, which writes it, or copy results/published from the repository",
                path.display()
            );
            let published = LazyCsvReader::new(&path)
                .with_has_header(true)
                .finish()?
                .filter(col("table").eq(lit(name.as_str())))
                .select([
                    col("method").alias("published_method"),
                    col("teacher"),
                    col("student"),
                    col("top1_last_epoch").cast(DataType::Float64).alias("published"),
                ]);
            let on = [col("published_method"), col("teacher"), col("student")];
            table.join(published, on.clone(), on, JoinArgs::new(JoinType::Left))
        }
        None => table.with_column(lit(NULL).cast(DataType::Float64).alias("published")),
    };

    // A standard deviation needs two runs; a count of none is 0, not null.
    let with_count = |n: &str, std: &str| {
        [
            col(n).fill_null(lit(0u32)).cast(DataType::UInt32),
            when(col(n).gt(lit(1u32)))
                .then(col(std))
                .otherwise(lit(NULL).cast(DataType::Float64))
                .alias(std),
        ]
    };
    let table = table
        .with_columns(with_count("n", "last_std"))
        .with_columns(with_count("n_best", "best_std"))
        .with_column((col("last_mean") - col("published")).alias("difference"))
        .sort_by_exprs([col("row_order"), col("pair_order")], SortMultipleOptions::default())
        .collect()?;
    Ok(table)
}

/// Values of one table column.
struct Columns {
    row: Vec<String>,
    teacher: Vec<String>,
    student: Vec<String>,
    planned: Vec<u32>,
    n: Vec<u32>,
    n_best: Vec<u32>,
    last_mean: Vec<Option<f64>>,
    last_std: Vec<Option<f64>>,
    best_mean: Vec<Option<f64>>,
    best_std: Vec<Option<f64>>,
    published: Vec<Option<f64>>,
    difference: Vec<Option<f64>>,
}

impl Columns {
    fn read(table: &DataFrame) -> PolarsResult<Columns> {
        let strings = |name: &str| -> PolarsResult<Vec<String>> {
            Ok(table
                .column(name)?
                .str()?
                .into_iter()
                .map(|s| s.unwrap_or_default().to_owned())
                .collect())
        };
        let counts = |name: &str| -> PolarsResult<Vec<u32>> {
            Ok(table.column(name)?.u32()?.into_iter().map(|n| n.unwrap_or(0)).collect())
        };
        let floats = |name: &str| -> PolarsResult<Vec<Option<f64>>> {
            Ok(table
                .column(name)?
                .f64()?
                .into_iter()
                .map(|x| x.filter(|x| x.is_finite()))
                .collect())
        };
        Ok(Columns {
            row: strings("row")?,
            teacher: strings("teacher")?,
            student: strings("student")?,
            planned: counts("planned")?,
            n: counts("n")?,
            n_best: counts("n_best")?,
            last_mean: floats("last_mean")?,
            last_std: floats("last_std")?,
            best_mean: floats("best_mean")?,
            best_std: floats("best_std")?,
            published: floats("published")?,
            difference: floats("difference")?,
        })
    }

    fn find(&self, row: &str, teacher: &str, student: &str) -> Option<usize> {
        (0..self.row.len()).find(|&i| {
            self.row[i] == row && self.teacher[i] == teacher && self.student[i] == student
        })
    }
}

fn render_markdown(manifest: &Manifest, table: &DataFrame) -> String {
    let columns = match Columns::read(table) {
        Ok(c) => c,
        Err(e) => unreachable!("build_table produces every column with its type: {e}"),
    };
    let mut out = String::new();
    let _ = writeln!(out, "# {} (profile {})\n", manifest.suite, manifest.profile);
    let _ = writeln!(out, "{}\n", manifest.description);
    let _ = writeln!(
        out,
        "Test top-1 accuracy (%) on {}: mean ± sample standard deviation over seeds, \
         (n) finished runs of the planned ones. A dash marks a cell with no finished run.\n",
        manifest.dataset
    );
    if let Some(note) = &manifest.published_note {
        let _ = writeln!(out, "{note}.\n");
    }
    let rows: Vec<&str> =
        std::iter::once(TEACHER_ROW).chain(manifest.rows.iter().map(|r| r.as_str())).collect();

    let mean_std = |mean: Option<f64>, std: Option<f64>, n: u32, planned: u32| match (mean, std) {
        (Some(m), Some(s)) => format!("{m:.2} ± {s:.2} ({n}/{planned})"),
        (Some(m), None) => format!("{m:.2} ({n}/{planned})"),
        _ => format!("– (0/{planned})"),
    };
    section(&mut out, "Last epoch", manifest, &rows, &columns, |i| {
        mean_std(columns.last_mean[i], columns.last_std[i], columns.n[i], columns.planned[i])
    });
    section(&mut out, "Best epoch", manifest, &rows, &columns, |i| {
        mean_std(columns.best_mean[i], columns.best_std[i], columns.n_best[i], columns.planned[i])
    });
    if let Some(name) = &manifest.published {
        let title = format!(
            "Last epoch against the published CRD benchmark ({name}): ours / published (difference)"
        );
        section(&mut out, &title, manifest, &rows, &columns, |i| {
            let ours = columns.last_mean[i].map_or("–".to_owned(), |m| format!("{m:.2}"));
            match (columns.published[i], columns.difference[i]) {
                (Some(p), Some(d)) => format!("{ours} / {p:.2} ({d:+.2})"),
                (Some(p), None) => format!("{ours} / {p:.2}"),
                _ => format!("{ours} / –"),
            }
        });
    }
    out
}

fn section(
    out: &mut String,
    title: &str,
    manifest: &Manifest,
    rows: &[&str],
    columns: &Columns,
    cell: impl Fn(usize) -> String,
) {
    let _ = writeln!(out, "## {title}\n");
    let _ = write!(out, "| row |");
    for pair in &manifest.pairs {
        let _ = write!(out, " {} → {} |", pair.teacher, pair.student);
    }
    let _ = write!(out, "\n|:---|");
    for _ in &manifest.pairs {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out);
    for row in rows {
        let cells: Vec<String> = manifest
            .pairs
            .iter()
            .map(|p| columns.find(row, &p.teacher, &p.student).map_or(String::new(), &cell))
            .collect();
        if cells.iter().all(|c| c.is_empty()) {
            continue;
        }
        let _ = write!(out, "| {row} |");
        for c in cells {
            let _ = write!(out, " {c} |");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out);
}

fn render_csv(manifest: &Manifest, table: DataFrame) -> anyhow::Result<Vec<u8>> {
    let height = table.height();
    let mut out = table
        .lazy()
        .select([
            lit(manifest.suite.as_str()).alias("suite"),
            lit(manifest.profile.as_str()).alias("profile"),
            col("row"),
            col("teacher"),
            col("student"),
            col("planned"),
            col("n"),
            col("last_mean").alias("last_top1_mean"),
            col("last_std").alias("last_top1_std"),
            col("n_best"),
            col("best_mean").alias("best_top1_mean"),
            col("best_std").alias("best_top1_std"),
            col("published").alias("published_last_top1"),
            col("difference").alias("last_top1_difference"),
        ])
        .collect()?;
    debug_assert_eq!(out.height(), height);
    let mut bytes = Vec::new();
    CsvWriter::new(&mut bytes)
        .include_header(true)
        .with_float_precision(Some(2))
        .finish(&mut out)?;
    Ok(bytes)
}
