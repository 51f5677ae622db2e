//! Early stopping by asynchronous successive halving (ASHA, Li et al. 2018), in the stopping
//! form of Ray Tune's `ASHAScheduler`: when a trial first reaches a rung (a step count) with
//! validation loss `L`, it stops if `L` is worse than the `1/η` quantile (linear
//! interpolation, as numpy's) of the losses the trials before it recorded at that rung; the
//! first trial at a rung always goes on. Trials run in a fixed order here, so the decisions
//! are reproducible, and a resumed sweep rebuilds them from the recorded reports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::spec::EarlyStop;

/// What a trial does after a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Continue,
    Stop,
}

/// The rungs and the losses recorded at each.
#[derive(Debug, Clone)]
pub struct Asha {
    rungs: Vec<usize>,
    reduction: f64,
    /// Per rung: trial → loss recorded there.
    recorded: Vec<BTreeMap<usize, f64>>,
}

impl Asha {
    pub fn new(spec: &EarlyStop) -> Self {
        Self {
            rungs: spec.rungs.clone(),
            reduction: spec.reduction,
            recorded: vec![BTreeMap::new(); spec.rungs.len()],
        }
    }

    /// `trial` reports validation loss `loss` at step `step`: every rung it reaches for the
    /// first time records the loss and is checked.
    pub fn report(&mut self, trial: usize, step: usize, loss: f64) -> Decision {
        let mut decision = Decision::Continue;
        for (rung, recorded) in self.rungs.iter().zip(&mut self.recorded) {
            if step < *rung || recorded.contains_key(&trial) {
                continue;
            }
            let others: Vec<f64> = recorded.values().copied().collect();
            if let Some(cutoff) = quantile(&others, 1.0 / self.reduction) {
                if loss.is_nan() || loss > cutoff {
                    decision = Decision::Stop;
                }
            }
            recorded.insert(trial, loss);
        }
        decision
    }

    /// Whether `step` is at or past a rung `trial` has not reported at yet.
    pub fn due(&self, trial: usize, step: usize) -> bool {
        self.rungs
            .iter()
            .zip(&self.recorded)
            .any(|(rung, recorded)| step >= *rung && !recorded.contains_key(&trial))
    }
}

/// The `q` quantile of the finite values of `v` with linear interpolation (numpy's
/// default); `None` when there are none.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asha(rungs: &[usize], reduction: f64) -> Asha {
        Asha::new(&EarlyStop {
            rungs: rungs.to_vec(),
            reduction,
        })
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        // numpy.quantile([1, 2, 3], 1/3) = 1.6666…, ([4, 1, 3, 2], 0.5) = 2.5
        assert!((quantile(&[1.0, 2.0, 3.0], 1.0 / 3.0).unwrap() - 5.0 / 3.0).abs() < 1e-12);
        assert_eq!(quantile(&[4.0, 1.0, 3.0, 2.0], 0.5), Some(2.5));
        assert_eq!(quantile(&[f64::NAN], 0.5), None);
        assert_eq!(quantile(&[], 0.5), None);
    }

    /// Hand-made curves with η = 3 and rungs at 10 and 20 steps: the first trial at a rung
    /// goes on; later ones stop when worse than the best third of those before them.
    #[test]
    fn decisions_on_hand_made_curves() {
        let mut a = asha(&[10, 20], 3.0);
        // Trial 0 alone at both rungs.
        assert_eq!(a.report(0, 10, 3.0), Decision::Continue);
        assert_eq!(a.report(0, 20, 2.5), Decision::Continue);
        // Trial 1: worse than trial 0 at rung 10 (cutoff = 3.0).
        assert_eq!(a.report(1, 10, 3.2), Decision::Stop);
        // Trial 2: better at rung 10 (cutoff of [3.0, 3.2] at 1/3 = 3.0667), worse at rung 20.
        assert_eq!(a.report(2, 10, 2.9), Decision::Continue);
        assert_eq!(a.report(2, 20, 2.6), Decision::Stop);
        // Trial 3 reports late, past both rungs at once, and is checked at each: at rung 10
        // the cutoff of [3.0, 3.2, 2.9] is 2.9667, and 3.0 is worse.
        assert!(a.due(3, 25));
        assert_eq!(a.report(3, 25, 3.0), Decision::Stop);
        assert!(!a.due(3, 30), "both rungs recorded");
        // A step before the first rung decides nothing.
        assert_eq!(a.report(4, 5, 99.0), Decision::Continue);
        assert!(!a.due(4, 9));
        // NaN losses stop (once a rung has a reference).
        assert_eq!(a.report(5, 10, f64::NAN), Decision::Stop);
    }

    /// With η = 2 and four trials of losses 4, 3, 2, 1 (each better than all before), all go
    /// on; in the reverse order, all but the first stop.
    #[test]
    fn order_matters_as_in_asynchronous_halving() {
        let mut a = asha(&[5], 2.0);
        let better: Vec<Decision> = [4.0, 3.0, 2.0, 1.0]
            .iter()
            .enumerate()
            .map(|(t, l)| a.report(t, 5, *l))
            .collect();
        assert!(better.iter().all(|d| *d == Decision::Continue));
        let mut a = asha(&[5], 2.0);
        let worse: Vec<Decision> = [1.0, 2.0, 3.0, 4.0]
            .iter()
            .enumerate()
            .map(|(t, l)| a.report(t, 5, *l))
            .collect();
        assert_eq!(worse[0], Decision::Continue);
        assert!(worse[1..].iter().all(|d| *d == Decision::Stop));
    }
}
