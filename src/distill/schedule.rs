//! Loss-weight schedules over training progress, from the CRCD release
//! (Zhu et al., "Complementary Relation Contrastive Distillation", CVPR 2021,
//! <https://arxiv.org/abs/2103.16367>).
//!
//! A schedule maps the progress `t = iteration / total ∈ [0, 1]` to a weight
//! `w_task` for the cross-entropy on the labels and a weight `w_mimic` for the
//! terms that imitate the teacher (KD and the contrastive losses).

use crate::config::{DistillConfig, ScheduleKind};

/// Progress at which the linear schedules leave their first phase.
const FIRST_THIRD: f64 = 1.0 / 3.0;
/// Progress at which the linear schedules reach `w_mimic = 0`.
const SECOND_THIRD: f64 = 2.0 / 3.0;

/// Weights of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScheduleWeights {
    /// Multiplier of `γ · CE`.
    pub task: f64,
    /// Multiplier of `α · KD` and `β · (L_feat + λ_g · L_grad)`.
    pub mimic: f64,
}

/// Returns the weights of `cfg.schedule` at progress `t`.
///
/// | schedule | task | mimic |
/// |---|---|---|
/// | constant | 1 | 1 |
/// | step | 1 | 1 while `t < cfg.schedule_step`, then 0 |
/// | linear_decrease | 1 − mimic | 1 for `t < 1/3`, `2 − 3t` for `t < 2/3`, then 0 |
/// | linear_decrease2 | 1 | as linear_decrease |
/// | exp_increase | 1 | `exp_alpha0 · exp_factor^⌊3t⌋` |
///
/// In linear_decrease the task weight is 0 on the first third, so the
/// student learns from the teacher alone before it trains on the labels.
pub fn schedule_weights(cfg: &DistillConfig, t: f64) -> ScheduleWeights {
    let linear_mimic = if t < FIRST_THIRD {
        1.0
    } else if t < SECOND_THIRD {
        2.0 - 3.0 * t
    } else {
        0.0
    };
    let (task, mimic) = match cfg.schedule {
        ScheduleKind::Constant => (1.0, 1.0),
        ScheduleKind::Step => (1.0, if t < cfg.schedule_step { 1.0 } else { 0.0 }),
        ScheduleKind::LinearDecrease => (1.0 - linear_mimic, linear_mimic),
        ScheduleKind::LinearDecrease2 => (1.0, linear_mimic),
        ScheduleKind::ExpIncrease => {
            // ⌊3t⌋ counts the finished thirds of the run: 0, 1, 2 (3 at t = 1).
            let thirds = (3.0 * t).floor();
            (1.0, cfg.exp_alpha0 * cfg.exp_factor.powf(thirds))
        }
    };
    ScheduleWeights { task, mimic }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Method;

    fn weights(kind: ScheduleKind, t: f64) -> (f64, f64) {
        let cfg = DistillConfig { schedule: kind, ..DistillConfig::for_method(Method::Crcd) };
        let w = schedule_weights(&cfg, t);
        (w.task, w.mimic)
    }

    #[test]
    fn linear_decrease_is_continuous_at_thirds() {
        let eps = 1e-9;
        for kind in [ScheduleKind::LinearDecrease, ScheduleKind::LinearDecrease2] {
            for t in [FIRST_THIRD, SECOND_THIRD] {
                let (task_lo, mimic_lo) = weights(kind, t - eps);
                let (task_hi, mimic_hi) = weights(kind, t);
                assert!((mimic_lo - mimic_hi).abs() < 1e-8, "{kind} mimic at {t}");
                assert!((task_lo - task_hi).abs() < 1e-8, "{kind} task at {t}");
            }
        }
    }

    #[test]
    fn step_turns_mimic_off_at_its_point() {
        let cfg = DistillConfig { schedule_step: 0.5, ..DistillConfig::for_method(Method::Crcd) };
        assert_eq!(schedule_weights(&cfg, 0.4999).mimic, 1.0);
        assert_eq!(schedule_weights(&cfg, 0.5).mimic, 0.0);
        assert_eq!(schedule_weights(&cfg, 0.5).task, 1.0);
    }
}
