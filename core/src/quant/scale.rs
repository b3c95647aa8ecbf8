//! Scales: symmetric per-output-channel int8 weights, and per-tensor activation thresholds chosen
//! from a histogram of |x| by one of four methods ([`Method`]): max, percentile, minimum MSE, and
//! minimum KL divergence (TensorRT's entropy calibration).

use super::fake::MIN_SCALE;
use super::kl::{KlSearch, LEVELS};
use super::QMAX;
use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Bins of an activation histogram (TensorRT uses 2048).
pub const BINS: usize = 2048;

/// A weight quantized per output channel (dim 0): `w ≈ data · scales[channel]`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight {
    pub shape: Vec<usize>,
    pub data: Vec<i8>,
    pub scales: Vec<f32>,
}

/// `max |w_c| / 127` of every output channel `c` (dim 0); all-zero channels get scale 1.
pub fn channel_scales(w: &Tensor) -> Result<Vec<f32>> {
    let m = w.flatten_from(1)?.abs()?.max(1)?.to_vec1::<f32>()?;
    Ok(m.into_iter()
        .map(|m| if m > 0.0 { m / QMAX } else { 1.0 })
        .collect())
}

impl QuantizedWeight {
    /// Quantize `w` (rank ≥ 2, output channels first) symmetrically per channel.
    pub fn quantize(w: &Tensor) -> Result<Self> {
        let scales = channel_scales(w)?;
        let o = w.dim(0)?;
        let per = w.elem_count() / o.max(1);
        let flat = w.flatten_all()?.to_vec1::<f32>()?;
        let data = flat
            .iter()
            .enumerate()
            .map(|(i, &v)| (v / scales[i / per]).round().clamp(-QMAX, QMAX) as i8)
            .collect();
        Ok(Self {
            shape: w.dims().to_vec(),
            data,
            scales,
        })
    }

    /// The f32 weight `data · scale`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let per = self.data.len() / self.scales.len().max(1);
        let v: Vec<f32> = self
            .data
            .iter()
            .enumerate()
            .map(|(i, &q)| f32::from(q) * self.scales[i / per])
            .collect();
        Tensor::from_vec(v, self.shape.as_slice(), device)
    }
}

/// Signal-to-quantization-noise ratio in dB of `approx` against `reference`.
pub fn sqnr_db(reference: &Tensor, approx: &Tensor) -> Result<f64> {
    let signal = reference.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    let noise = (reference - approx)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok(10.0 * (signal.max(1e-30) / noise.max(1e-30)).log10())
}

/// How an activation's clipping threshold is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The largest |x| seen: nothing is clipped.
    Max,
    /// The given percentile of |x| (e.g. 99.99).
    Percentile(f64),
    /// The threshold minimising the expected squared error (clipping + rounding), from the histogram.
    Mse,
    /// TensorRT's entropy calibration: minimum KL(P ‖ Q) between the clipped histogram and its
    /// 128-level quantization ([`super::kl`]).
    Kl,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Max => write!(f, "max"),
            Method::Percentile(p) => write!(f, "percentile:{p}"),
            Method::Mse => write!(f, "mse"),
            Method::Kl => write!(f, "kl"),
        }
    }
}

impl FromStr for Method {
    type Err = String;
    /// `max`, `percentile` (99.99), `percentile:P`, `mse`, `kl`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "max" => Ok(Method::Max),
            "mse" => Ok(Method::Mse),
            "kl" | "entropy" => Ok(Method::Kl),
            "percentile" => Ok(Method::Percentile(99.99)),
            other => match other.strip_prefix("percentile:").map(str::parse::<f64>) {
                Some(Ok(p)) if p > 0.0 && p <= 100.0 => Ok(Method::Percentile(p)),
                _ => Err(format!(
                    "unknown calibration method {other:?} (max, percentile[:P], mse, kl)"
                )),
            },
        }
    }
}

/// Histogram of |x| over `[0, range]` in [`BINS`] equal bins. The range grows by powers of two
/// (adjacent bins merged) when a larger value arrives, so any stream can be added in one pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub range: f32,
    pub max: f32,
    pub count: u64,
    pub bins: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            range: 0.0,
            max: 0.0,
            count: 0,
            bins: vec![0; BINS],
        }
    }
}

impl Histogram {
    /// Add values (their absolute values are binned).
    pub fn add(&mut self, values: &[f32]) {
        let m = values
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f32, |m, v| m.max(v.abs()));
        if m > self.range {
            if self.range == 0.0 {
                self.range = m;
            } else {
                let mut factor = 1usize;
                while self.range * factor as f32 <= m {
                    factor *= 2;
                }
                let mut merged = vec![0u64; BINS];
                for (i, &c) in self.bins.iter().enumerate() {
                    merged[i / factor] += c;
                }
                self.bins = merged;
                self.range *= factor as f32;
            }
        }
        self.max = self.max.max(m);
        let width = self.bin_width();
        for v in values.iter().filter(|v| v.is_finite()) {
            let b = if width > 0.0 {
                ((v.abs() / width) as usize).min(BINS - 1)
            } else {
                0
            };
            self.bins[b] += 1;
        }
        self.count += values.iter().filter(|v| v.is_finite()).count() as u64;
    }

    fn bin_width(&self) -> f32 {
        self.range / BINS as f32
    }

    fn center(&self, i: usize) -> f64 {
        (i as f64 + 0.5) * f64::from(self.bin_width())
    }

    /// The clipping threshold (|x| above it saturates) chosen by `method`.
    pub fn threshold(&self, method: Method) -> f32 {
        if self.count == 0 || self.max == 0.0 {
            return 0.0;
        }
        let t = match method {
            Method::Max => self.max,
            Method::Percentile(p) => self.percentile(p),
            Method::Mse => self.min_mse(),
            Method::Kl => self.min_kl(),
        };
        t.min(self.max).max(MIN_SCALE)
    }

    /// The upper edge of the bin where the cumulative count reaches `p` percent.
    fn percentile(&self, p: f64) -> f32 {
        let target = (p / 100.0 * self.count as f64).ceil() as u64;
        let mut acc = 0;
        for (i, &c) in self.bins.iter().enumerate() {
            acc += c;
            if acc >= target {
                return (i + 1) as f32 * self.bin_width();
            }
        }
        self.range
    }

    /// Expected squared error at threshold `t`: values above it are clipped, the rest see uniform
    /// rounding noise of step `t / 127`.
    pub fn mse_at(&self, t: f64) -> f64 {
        let step = t / f64::from(QMAX);
        let rounding = step * step / 12.0;
        self.bins
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let x = self.center(i);
                let e = if x > t { (x - t) * (x - t) } else { rounding };
                c as f64 * e
            })
            .sum()
    }

    /// The bin edge `t = i·w` minimising [`Histogram::mse_at`], in O(bins): bins `j ≥ i` (centre above
    /// `t`) are clipped, the rest round, so suffix sums of `c`, `c·x`, `c·x²` give each candidate's
    /// error in O(1).
    fn min_mse(&self) -> f32 {
        let w = f64::from(self.bin_width());
        let last = ((f64::from(self.max) / w).ceil() as usize).clamp(1, BINS);
        let (mut s0, mut s1, mut s2) = (
            vec![0f64; BINS + 1],
            vec![0f64; BINS + 1],
            vec![0f64; BINS + 1],
        );
        for j in (0..BINS).rev() {
            let (c, x) = (self.bins[j] as f64, self.center(j));
            s0[j] = s0[j + 1] + c;
            s1[j] = s1[j + 1] + c * x;
            s2[j] = s2[j + 1] + c * x * x;
        }
        (1..=last)
            .map(|i| {
                let t = i as f64 * w;
                let step = t / f64::from(QMAX);
                let clipped = (s2[i] - 2.0 * t * s1[i] + t * t * s0[i]).max(0.0);
                (t, clipped + (s0[0] - s0[i]) * step * step / 12.0)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(self.max, |(t, _)| t as f32)
    }

    fn min_kl(&self) -> f32 {
        let w = self.bin_width();
        let last = ((self.max / w).ceil() as usize).clamp(LEVELS, BINS);
        let search = KlSearch::new(&self.bins);
        let mut best = (f64::INFINITY, self.max);
        for i in LEVELS..=last {
            let kl = search.kl_at(i);
            if kl < best.0 {
                best = (kl, i as f32 * w);
            }
        }
        best.1
    }

    /// Fraction of values whose |x| exceeds `t` (estimated from the bins lying wholly above it).
    pub fn clip_rate(&self, t: f32) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let w = self.bin_width();
        let above: u64 = self
            .bins
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as f32 * w >= t)
            .map(|(_, &c)| c)
            .sum();
        above as f64 / self.count as f64
    }

    /// Estimated SQNR (dB) of quantizing this distribution with threshold `t`.
    pub fn sqnr_db(&self, t: f32) -> f64 {
        let signal: f64 = self
            .bins
            .iter()
            .enumerate()
            .map(|(i, &c)| c as f64 * self.center(i).powi(2))
            .sum();
        let noise = self.mse_at(f64::from(t));
        10.0 * (signal.max(1e-30) / noise.max(1e-30)).log10()
    }
}

/// The int8 scale of a threshold: `t / 127`.
pub fn scale_of(threshold: f32) -> f32 {
    (threshold / QMAX).max(MIN_SCALE)
}
