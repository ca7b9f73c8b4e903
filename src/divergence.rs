//! Divergence as the paper's Table 1 defines it: under a rising learning rate, a run has diverged
//! at the first step of a non-finite loss, of a loss spike that does not recover, or of a
//! stagnation or degradation against the run's best loss. The maximum tolerable learning rate is
//! the one a step before.

use serde::{Deserialize, Serialize};

/// The `[divergence]` config section: the detector's thresholds, and whether a training run
/// stops at its first divergence (a non-finite loss or gradient always stops it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DivergenceConfig {
    pub stop: bool,
    /// A spike: the loss exceeds `spike_factor` x the best loss so far.
    pub spike_factor: f64,
    /// Steps a spike has to come back below `recover_factor` x best before it counts.
    pub recover_window: usize,
    pub recover_factor: f64,
    /// Degradation: the smoothed loss (EMA with this factor) stays above (1 + `stall_tolerance`)
    /// x its best for `stall_window` steps.
    pub ema: f64,
    pub stall_tolerance: f64,
    pub stall_window: usize,
    /// Stagnation: the best smoothed loss improves by less than this fraction over
    /// `stall_window` steps (the run stopped learning while the LR kept rising).
    pub min_improvement: f64,
}

impl Default for DivergenceConfig {
    fn default() -> Self {
        DivergenceConfig {
            stop: false,
            spike_factor: 1.5,
            recover_window: 50,
            recover_factor: 1.2,
            ema: 0.9,
            stall_tolerance: 0.1,
            stall_window: 100,
            min_improvement: 0.01,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    NonFinite,
    UnrecoveredSpike,
    Stagnation,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::NonFinite => "non_finite",
            Reason::UnrecoveredSpike => "unrecovered_spike",
            Reason::Stagnation => "stagnation",
        }
    }
}

/// Streaming detection: feed every step's loss in order; the first divergence is returned as
/// soon as it is certain (a spike only once its recovery window has passed).
#[derive(Debug, Clone)]
pub struct Detector {
    t: DivergenceConfig,
    seen: usize,
    best: f64,
    /// (step, index) where an ongoing spike began.
    spike: Option<(usize, usize)>,
    ema: Option<f64>,
    best_ema: f64,
    stall_since: Option<usize>,
    /// (step, smoothed loss) of the last improvement by at least `min_improvement`.
    last_gain: Option<(usize, f64)>,
}

impl Detector {
    pub fn new(t: DivergenceConfig) -> Self {
        Detector {
            t,
            seen: 0,
            best: f64::INFINITY,
            spike: None,
            ema: None,
            best_ema: f64::INFINITY,
            stall_since: None,
            last_gain: None,
        }
    }

    pub fn observe(&mut self, step: usize, loss: f64) -> Option<(usize, Reason)> {
        let t = self.t;
        let i = self.seen;
        self.seen += 1;
        if !loss.is_finite() {
            return Some((step, Reason::NonFinite));
        }
        match self.spike {
            Some((s, start)) => {
                if loss <= t.recover_factor * self.best {
                    self.spike = None;
                } else if i - start >= t.recover_window {
                    return Some((s, Reason::UnrecoveredSpike));
                }
            }
            None if self.best.is_finite() && loss > t.spike_factor * self.best => self.spike = Some((step, i)),
            None => {}
        }
        if self.spike.is_none() {
            self.best = self.best.min(loss);
        }
        let e = match self.ema {
            None => loss,
            Some(prev) => t.ema * prev + (1.0 - t.ema) * loss,
        };
        self.ema = Some(e);
        self.best_ema = self.best_ema.min(e);
        let (gain_step, gain_loss) = *self.last_gain.get_or_insert((step, f64::INFINITY));
        if e < (1.0 - t.min_improvement) * gain_loss {
            self.last_gain = Some((step, e));
        } else if step - gain_step >= t.stall_window {
            return Some((gain_step, Reason::Stagnation));
        }
        if e > (1.0 + t.stall_tolerance) * self.best_ema {
            let since = *self.stall_since.get_or_insert(step);
            if step - since + 1 >= t.stall_window {
                return Some((since, Reason::Stagnation));
            }
        } else {
            self.stall_since = None;
        }
        None
    }
}

/// The first diverging step (1-based, as in metrics.csv) of a loss curve given as
/// (step, loss) pairs in step order, and why.
pub fn detect(curve: &[(usize, f64)], t: &DivergenceConfig) -> Option<(usize, Reason)> {
    let mut d = Detector::new(*t);
    curve.iter().find_map(|&(step, loss)| d.observe(step, loss))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(f: impl Fn(usize) -> f64, n: usize) -> Vec<(usize, f64)> {
        (1..=n).map(|s| (s, f(s))).collect()
    }

    /// A healthy learning curve: 5 -> ~2.15 over 600 steps, still improving > 1% per 100 steps.
    fn learning(s: usize) -> f64 {
        2.0 + 3.0 * (-(s as f64) / 200.0).exp()
    }

    #[test]
    fn clean_decrease_is_not_divergence() {
        let t = DivergenceConfig::default();
        assert_eq!(detect(&curve(|s| learning(s) + 0.02 * ((s * 7) % 5) as f64, 600), &t), None);
    }

    #[test]
    fn a_recovered_spike_is_not_divergence() {
        let t = DivergenceConfig::default();
        let c = curve(|s| if (300..320).contains(&s) { 9.0 } else { learning(s) }, 600);
        assert_eq!(detect(&c, &t), None);
    }

    #[test]
    fn an_unrecovered_spike_diverges_where_it_began() {
        let t = DivergenceConfig::default();
        let c = curve(|s| if s >= 300 { 9.0 } else { learning(s) }, 600);
        assert_eq!(detect(&c, &t), Some((300, Reason::UnrecoveredSpike)));
    }

    #[test]
    fn nan_diverges_at_once() {
        let t = DivergenceConfig::default();
        let c = curve(|s| if s == 250 { f64::NAN } else { learning(s) }, 300);
        assert_eq!(detect(&c, &t), Some((250, Reason::NonFinite)));
    }

    #[test]
    fn learning_that_stops_is_stagnation() {
        let t = DivergenceConfig::default();
        // Learns until step 100, then stays flat: stuck while the LR keeps rising.
        let c = curve(|s| if s <= 100 { learning(s) } else { learning(100) }, 600);
        let (step, reason) = detect(&c, &t).expect("stagnation");
        assert_eq!(reason, Reason::Stagnation);
        assert!((90..160).contains(&step), "{step}");
        // Never learning at all is stagnation from the start.
        assert_eq!(detect(&curve(|_| 3.6, 300), &t), Some((1, Reason::Stagnation)));
    }

    #[test]
    fn a_slow_degradation_is_divergence() {
        let t = DivergenceConfig { min_improvement: 0.0, ..DivergenceConfig::default() };
        // Learns until step 300, then degrades slowly (never a spike) and stays up.
        let c = curve(|s| if s <= 300 { learning(s) } else { (learning(300) + (s - 300) as f64 * 0.01).min(3.2) }, 800);
        let (step, reason) = detect(&c, &t).expect("degradation");
        assert_eq!(reason, Reason::Stagnation);
        assert!((300..400).contains(&step), "{step}");
    }
}
