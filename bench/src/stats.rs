//! Summaries of per-call timings.

use std::time::Duration;

/// Median, 90th percentile and range of a series of timings, in
/// milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub runs: usize,
}

impl Summary {
    /// None for an empty series.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut ms: Vec<f64> = samples.iter().map(|d| ms(*d)).collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let median = if n % 2 == 1 {
            ms[n / 2]
        } else {
            (ms[n / 2 - 1] + ms[n / 2]) / 2.0
        };
        // Nearest rank: the smallest sample with at least 90% at or below it.
        let rank = (n * 9).div_ceil(10).max(1);
        Some(Summary {
            median_ms: median,
            p90_ms: ms[rank - 1],
            min_ms: ms[0],
            max_ms: ms[n - 1],
            runs: n,
        })
    }
}

/// `Summary::of` for callers that treat an empty series as an error.
pub fn summarise(samples: &[Duration]) -> Result<Summary, String> {
    Summary::of(samples).ok_or_else(|| "no samples to summarise".to_string())
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The nearest-rank `p` percentile (0 < p <= 1) of `samples`: the
/// smallest one with at least that share at or below it. None when empty.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let mut v = samples.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64) * p).ceil().max(1.0) as usize;
    v.get(rank.min(v.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(ms: &[u64]) -> Vec<Duration> {
        ms.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn median_and_p90() {
        let s = Summary::of(&series(&[5, 1, 3, 2, 4, 6, 7, 8, 9, 10])).unwrap();
        assert_eq!(s.median_ms, 5.5);
        assert_eq!(s.p90_ms, 9.0);
        assert_eq!((s.min_ms, s.max_ms, s.runs), (1.0, 10.0, 10));
        let s = Summary::of(&series(&[3, 1, 2])).unwrap();
        assert_eq!(s.median_ms, 2.0);
        assert_eq!(s.p90_ms, 3.0);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(
            percentile(&[3.0, f64::INFINITY, 1.0], 0.99),
            Some(f64::INFINITY)
        );
        assert_eq!(percentile(&[], 0.5), None);
    }
}
