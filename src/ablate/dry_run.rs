//! The `--dry-run` listing: every run of a plan with its state and estimated
//! cost, and totals over the selected suites.

use std::collections::HashSet;
use std::fmt::Write;

use super::cost::{run_cost, Cost, Duration};
use super::plan::{Plan, RunKind};
use super::profile::Profile;
use super::shard::Shard;
use super::store::{RunState, Store, StoreError};

/// Renders the plans as the dry-run prints them.
pub fn render(
    plans: &[Plan],
    profile: &Profile,
    store: &Store,
    shard: Option<Shard>,
) -> Result<String, StoreError> {
    let mut out = String::new();
    let mut seen = HashSet::new();
    let (mut total, mut remaining) = (Cost::default(), Cost::default());
    for plan in plans {
        render_plan(&mut out, plan, profile, store, shard)?;
        for (i, run) in plan.runs.iter().enumerate() {
            if in_share(shard, i, plan.runs.len()) && seen.insert(run.id.clone()) {
                let state = store.state(&run.id)?;
                let cost = run_cost(&run.config, profile.step_seconds);
                total += cost;
                remaining += remaining_cost(cost, &state);
            }
        }
    }
    if plans.len() > 1 {
        let share = shard.map_or(String::new(), |s| format!(" in shard {s}"));
        let _ = writeln!(
            out,
            "all {} suites, profile {}: {} distinct runs{share}",
            plans.len(),
            profile.name,
            seen.len()
        );
        let _ = writeln!(out, "  total:     {}", cost_line(total));
        let _ = writeln!(out, "  remaining: {}", cost_line(remaining));
    }
    let _ = writeln!(
        out,
        "times are estimates: {} s per resnet8x4 step of batch 64 (step_seconds of profile {}), \
         scaled by each network's multiply-adds",
        profile.step_seconds, profile.name
    );
    Ok(out)
}

fn render_plan(
    out: &mut String,
    plan: &Plan,
    profile: &Profile,
    store: &Store,
    shard: Option<Shard>,
) -> Result<(), StoreError> {
    write_header(out, plan, shard);

    let (mut total, mut remaining) = (Cost::default(), Cost::default());
    for (i, run) in plan.runs.iter().enumerate() {
        if !in_share(shard, i, plan.runs.len()) {
            continue;
        }
        let state = store.state(&run.id)?;
        let cost = run_cost(&run.config, profile.step_seconds);
        total += cost;
        remaining += remaining_cost(cost, &state);
        let (pair, method, row) = match run.kind {
            RunKind::Student => (
                run.pair.to_string(),
                run.method.map_or("-".to_owned(), |m| m.to_string()),
                plan.cells.iter().find(|c| c.run == i).map_or("-".to_owned(), |c| c.row.clone()),
            ),
            RunKind::Vanilla => {
                (run.pair.student.to_string(), "vanilla".to_owned(), "vanilla".to_owned())
            }
            RunKind::Teacher => {
                (run.config.train().model.to_string(), "-".to_owned(), "teacher".to_owned())
            }
        };
        let _ = writeln!(
            out,
            "  {:>4}  {:<16}  {:<7}  {:<24}  {:<7}  {:>4}  {:<7}  {:>6}  {:>6}  {row}",
            i + 1,
            run.id,
            run.kind.to_string(),
            pair,
            method,
            run.seed(),
            state.label(),
            cost.steps,
            Duration(cost.seconds).to_string(),
        );
    }

    write_notes(out, plan, profile);
    let _ = writeln!(out, "  total:     {}", cost_line(total));
    let _ = writeln!(out, "  remaining: {}", cost_line(remaining));
    let _ = writeln!(out);
    Ok(())
}

fn write_header(out: &mut String, plan: &Plan, shard: Option<Shard>) {
    let (teachers, vanilla, students) = plan.counts();
    let _ = writeln!(
        out,
        "suite {}, profile {} ({}): {} runs: {teachers} teachers, {vanilla} vanilla, {students} students",
        plan.suite,
        plan.profile,
        plan.dataset,
        plan.runs.len()
    );
    let _ = writeln!(out, "  {}", plan.description);
    if let Some(shard) = shard {
        let share = shard.share(plan.runs.len()).len();
        let _ = writeln!(out, "  shard {shard}: {share} of {} runs", plan.runs.len());
    }
    let _ = writeln!(
        out,
        "  {:>4}  {:<16}  {:<7}  {:<24}  {:<7}  {:>4}  {:<7}  {:>6}  {:>6}  row",
        "#", "id", "kind", "pair", "method", "seed", "status", "steps", "est."
    );
}

fn write_notes(out: &mut String, plan: &Plan, profile: &Profile) {
    for reason in &plan.skipped {
        let _ = writeln!(out, "  skipped: {reason}");
    }
    if !plan.substituted.is_empty() {
        let substitutions: Vec<String> =
            plan.substituted.iter().map(|(a, b)| format!("{a} → {b}")).collect();
        let _ = writeln!(
            out,
            "  substituted by profile {}: {}",
            profile.name,
            substitutions.join(", ")
        );
    }
    if let Some(note) = &plan.published_note {
        let _ = writeln!(out, "  {note}");
    }
}

fn in_share(shard: Option<Shard>, index: usize, len: usize) -> bool {
    shard.is_none_or(|s| (index % s.count()) + 1 == s.index() && index < len)
}

/// Returns the part of `cost` still to run in `state`.
fn remaining_cost(cost: Cost, state: &RunState) -> Cost {
    let fraction = match state {
        RunState::Finished(_) => 0.0,
        RunState::Interrupted(Some(s)) if s.epochs > 0 => {
            (s.epochs - s.epochs_done.min(s.epochs)) as f64 / s.epochs as f64
        }
        _ => 1.0,
    };
    Cost {
        steps: (cost.steps as f64 * fraction).round() as u64,
        eval_batches: (cost.eval_batches as f64 * fraction).round() as u64,
        seconds: cost.seconds * fraction,
    }
}

fn cost_line(cost: Cost) -> String {
    format!(
        "{} optimizer steps, {} evaluation batches, about {}",
        cost.steps,
        cost.eval_batches,
        Duration(cost.seconds)
    )
}
