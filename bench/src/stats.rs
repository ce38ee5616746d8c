//! Order statistics over samples: min, median, p90, max (and mean).
//!
//! Percentiles interpolate linearly between the closest ranks (the "type 7"
//! definition NumPy and R use by default): for 1..=10, the median is 5.5 and
//! p90 is 9.1.

use serde::{Deserialize, Serialize};

/// Summary of a set of samples, in the samples' unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Smallest sample.
    pub min: f64,
    /// 50th percentile.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// The `p`-th percentile (0..=100) of already sorted samples; `None` if empty.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Summarizes `samples` (any order); `None` if empty or if any sample is NaN.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() || samples.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    Some(Summary {
        n: sorted.len(),
        min: sorted[0],
        median: percentile_sorted(&sorted, 50.0)?,
        p90: percentile_sorted(&sorted, 90.0)?,
        max: sorted[sorted.len() - 1],
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn one_to_ten() {
        let s = summarize(&[7.0, 1.0, 10.0, 3.0, 2.0, 9.0, 4.0, 8.0, 6.0, 5.0]).unwrap();
        assert_eq!(s.n, 10);
        assert!(close(s.min, 1.0) && close(s.max, 10.0));
        assert!(close(s.median, 5.5), "{s:?}");
        assert!(close(s.p90, 9.1), "{s:?}");
        assert!(close(s.mean, 5.5));
    }

    #[test]
    fn odd_count_and_single() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert!(close(s.median, 2.0));
        assert!(close(s.p90, 2.8), "{s:?}");
        let one = summarize(&[42.0]).unwrap();
        assert!(close(one.median, 42.0) && close(one.p90, 42.0) && close(one.min, 42.0));
    }

    #[test]
    fn outlier_moves_max_not_median() {
        let s = summarize(&[10.0, 11.0, 12.0, 13.0, 1000.0]).unwrap();
        assert!(close(s.median, 12.0));
        assert!(close(s.p90, 605.2), "{s:?}"); // 13 + 0.6 * (1000 - 13)
        assert!(close(s.max, 1000.0));
    }

    #[test]
    fn empty_and_nan() {
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[1.0, f64::NAN]).is_none());
        assert_eq!(percentile_sorted(&[1.0, 2.0], 0.0), Some(1.0));
        assert_eq!(percentile_sorted(&[1.0, 2.0], 100.0), Some(2.0));
    }
}
