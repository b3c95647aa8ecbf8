//! TensorRT's entropy calibration: the divergence KL(P ‖ Q) of one candidate threshold, where P is
//! the histogram's first `i` bins with the outliers (bins ≥ `i`) folded into its last bin, and Q is
//! P's first `i` bins merged into [`LEVELS`] levels and spread back evenly over their non-empty bins.
//!
//! Evaluated from prefix sums of the counts, of `c · ln c` and of the non-empty bins, so that one
//! candidate costs O(levels) instead of O(i) and a search over all candidates O(bins · levels):
//! with `p_j = c_j / N` and `q_j = (T_l / n_l) / C_i` inside level `l`,
//! `Σ p_j ln(p_j / q_j) = (Σ c_j ln c_j − C ln N) / N − Σ_l (C_l / N) ln q_l` over the bins before
//! the last, plus the last bin's own term.

/// Quantization levels on one side of zero (|x| histogram, int8).
pub const LEVELS: usize = 128;

/// Floor of `q_j` (as in TensorRT's reference implementation): a non-empty P bin whose Q bin is
/// empty costs a large but finite divergence.
const Q_FLOOR: f64 = 1e-12;

/// Prefix sums of one histogram, shared by every candidate threshold.
pub struct KlSearch<'a> {
    bins: &'a [u64],
    /// `count[k] = Σ_{j<k} c_j`.
    count: Vec<f64>,
    /// `nonzero[k]` = non-empty bins among the first `k`.
    nonzero: Vec<usize>,
    /// `c_ln_c[k] = Σ_{j<k} c_j ln c_j`.
    c_ln_c: Vec<f64>,
}

impl<'a> KlSearch<'a> {
    pub fn new(bins: &'a [u64]) -> Self {
        let n = bins.len();
        let (mut count, mut nonzero, mut c_ln_c) =
            (vec![0f64; n + 1], vec![0usize; n + 1], vec![0f64; n + 1]);
        for (j, &c) in bins.iter().enumerate() {
            let c = c as f64;
            count[j + 1] = count[j] + c;
            nonzero[j + 1] = nonzero[j] + usize::from(c > 0.0);
            c_ln_c[j + 1] = c_ln_c[j] + if c > 0.0 { c * c.ln() } else { 0.0 };
        }
        Self {
            bins,
            count,
            nonzero,
            c_ln_c,
        }
    }

    /// `ln q` of the level `[s, e)` (Q's value on its non-empty bins), if it has any.
    fn ln_q(&self, s: usize, e: usize, sq: f64) -> Option<f64> {
        let n = self.nonzero[e] - self.nonzero[s];
        (n > 0).then(|| {
            (((self.count[e] - self.count[s]) / n as f64) / sq)
                .max(Q_FLOOR)
                .ln()
        })
    }

    /// KL(P ‖ Q) of the threshold at bin edge `i` (`LEVELS ≤ i ≤ bins`); infinite when P or Q is
    /// empty.
    pub fn kl_at(&self, i: usize) -> f64 {
        let sp = self.count[self.bins.len()];
        let sq = self.count[i];
        if sp == 0.0 || sq == 0.0 {
            return f64::INFINITY;
        }
        let last = i - 1;
        let mut kl = (self.c_ln_c[last] - self.count[last] * sp.ln()) / sp;
        for level in 0..LEVELS {
            let (s, e) = (level * i / LEVELS, (level + 1) * i / LEVELS);
            let body_end = e.min(last);
            if body_end <= s {
                continue;
            }
            let weight = self.count[body_end] - self.count[s];
            if weight > 0.0 {
                if let Some(lq) = self.ln_q(s, e, sq) {
                    kl -= weight / sp * lq;
                }
            }
        }
        // The last bin holds the outliers; it lies in the last level.
        let p = self.bins[last] as f64 + (sp - sq);
        if p > 0.0 {
            let pp = p / sp;
            let s = (LEVELS - 1) * i / LEVELS;
            let qq = match self.bins[last] {
                0 => Q_FLOOR,
                _ => self.ln_q(s, i, sq).map_or(Q_FLOOR, f64::exp),
            };
            kl += pp * (pp / qq).ln();
        }
        kl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, bin by bin.
    fn reference(bins: &[u64], i: usize) -> f64 {
        let mut p: Vec<f64> = bins[..i].iter().map(|&c| c as f64).collect();
        p[i - 1] += bins[i..].iter().map(|&c| c as f64).sum::<f64>();
        let mut q = vec![0f64; i];
        for level in 0..LEVELS {
            let (start, end) = (level * i / LEVELS, (level + 1) * i / LEVELS);
            let total: f64 = bins[start..end].iter().map(|&c| c as f64).sum();
            let nonzero = bins[start..end].iter().filter(|&&c| c > 0).count();
            for j in start..end {
                if bins[j] > 0 {
                    q[j] = total / nonzero as f64;
                }
            }
        }
        let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
        if sp == 0.0 || sq == 0.0 {
            return f64::INFINITY;
        }
        p.iter()
            .zip(&q)
            .filter(|(&pp, _)| pp > 0.0)
            .map(|(&pp, &qq)| {
                let (pp, qq) = (pp / sp, (qq / sq).max(Q_FLOOR));
                pp * (pp / qq).ln()
            })
            .sum()
    }

    fn histograms() -> Vec<Vec<u64>> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let smooth: Vec<u64> = (0..2048)
            .map(|j| (1e6 * (-(j as f64 / 300.0).powi(2)).exp()) as u64)
            .collect();
        let sparse: Vec<u64> = (0..2048)
            .map(|_| if next() % 5 == 0 { next() % 1000 } else { 0 })
            .collect();
        let mut gaps = smooth.clone();
        for j in (300..2048).step_by(3) {
            gaps[j] = 0; // empty bins everywhere, also at some candidate's last bin
        }
        gaps[2047] = 7; // a far outlier
        vec![smooth, sparse, gaps, vec![0; 2048]]
    }

    #[test]
    fn prefix_sums_match_the_definition() {
        for bins in histograms() {
            let search = KlSearch::new(&bins);
            for i in [128, 129, 200, 255, 256, 301, 302, 1000, 2047, 2048] {
                let (a, b) = (search.kl_at(i), reference(&bins, i));
                assert!(
                    a == b || (a - b).abs() <= 1e-9 * b.abs().max(1e-3),
                    "bin {i}: {a} vs {b}"
                );
            }
        }
    }
}
