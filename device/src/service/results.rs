//! Turning per-class probability maps into one label map and the `/results` JSON.
//!
//! Combination: every pixel goes to the class with the highest foreground probability, if that
//! probability exceeds [`FOREGROUND_THRESHOLD`] (0.5); otherwise it is background. Per class the JSON reports the area
//! fraction, the bounding box and centroid of its pixels, and its score (mean foreground
//! probability over its pixels).

use super::classes::MAX_CLASSES;
use mce_core::inference::{ClassMap, FOREGROUND_THRESHOLD};
use serde::{Deserialize, Serialize};

/// One label per pixel: 0 = background, `i + 1` = class `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    pub width: usize,
    pub height: usize,
    pub labels: Vec<u8>,
}

/// Combine per-class maps (all of one frame's size; at most [`MAX_CLASSES`]).
pub fn combine(maps: &[ClassMap], width: usize, height: usize) -> LabelMap {
    let n = width * height;
    let mut labels = vec![0u8; n];
    let mut best = vec![FOREGROUND_THRESHOLD; n];
    for (i, m) in maps.iter().enumerate().take(MAX_CLASSES) {
        debug_assert_eq!(m.probability.len(), n);
        for ((l, b), &p) in labels.iter_mut().zip(best.iter_mut()).zip(&m.probability) {
            if p > *b {
                *b = p;
                *l = (i + 1) as u8;
            }
        }
    }
    LabelMap {
        width,
        height,
        labels,
    }
}

impl LabelMap {
    /// The 0/1 mask of class `i`.
    pub fn mask(&self, i: usize) -> Vec<u8> {
        let want = (i + 1) as u8;
        self.labels.iter().map(|&l| u8::from(l == want)).collect()
    }
}

/// Pixel box, inclusive of `x`/`y`, `width`/`height` pixels wide/high.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BBox {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// Centre of mass in pixel coordinates (pixel centres at `x + 0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

/// What one class covers in one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassResult {
    pub name: String,
    /// Assigned pixels.
    pub pixels: usize,
    /// `pixels` / frame pixels.
    pub area: f64,
    pub bbox: Option<BBox>,
    pub centroid: Option<Point>,
    /// Mean foreground probability over the assigned pixels (0 when there are none).
    pub score: f64,
}

/// Statistics of class `i` of a label map with its probability map.
pub fn class_result(name: &str, map: &LabelMap, i: usize, probability: &[f32]) -> ClassResult {
    let want = (i + 1) as u8;
    let (w, h) = (map.width, map.height);
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    let (mut n, mut sx, mut sy, mut sp) = (0usize, 0f64, 0f64, 0f64);
    for (idx, &l) in map.labels.iter().enumerate() {
        if l != want {
            continue;
        }
        let (x, y) = (idx % w, idx / w);
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
        n += 1;
        sx += x as f64 + 0.5;
        sy += y as f64 + 0.5;
        sp += f64::from(probability.get(idx).copied().unwrap_or(0.0));
    }
    let total = (w * h).max(1) as f64;
    ClassResult {
        name: name.to_string(),
        pixels: n,
        area: n as f64 / total,
        bbox: (n > 0).then(|| BBox {
            x: x0,
            y: y0,
            width: x1 - x0 + 1,
            height: y1 - y0 + 1,
        }),
        centroid: (n > 0).then(|| Point {
            x: sx / n as f64,
            y: sy / n as f64,
        }),
        score: if n > 0 { sp / n as f64 } else { 0.0 },
    }
}

/// Frame identity in the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameInfo {
    pub index: u64,
    /// Capture time, milliseconds since the Unix epoch.
    pub captured_unix_ms: u64,
    pub width: usize,
    pub height: usize,
    /// The file it came from, for file sources.
    pub source: Option<String>,
}

/// Per-stage latency of one frame, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub capture_ms: f64,
    /// Time the frame waited in the slot before inference started.
    pub queue_ms: f64,
    pub inference_ms: f64,
    pub encode_ms: f64,
}

/// The `/results` document of one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameResults {
    pub frame: FrameInfo,
    pub latency: Latency,
    /// False when the head is untrained (`--init`): the masks are then meaningless.
    pub model_trained: bool,
    pub classes: Vec<ClassResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(probability: Vec<f32>) -> ClassMap {
        ClassMap {
            width: 4,
            height: 3,
            probability,
        }
    }

    #[test]
    fn combination_takes_the_most_probable_class_above_half() {
        #[rustfmt::skip]
        let a = map(vec![
            0.9, 0.9, 0.2, 0.0,
            0.6, 0.7, 0.5, 0.0,
            0.0, 0.0, 0.0, 0.0,
        ]);
        #[rustfmt::skip]
        let b = map(vec![
            0.1, 0.95, 0.8, 0.0,
            0.6, 0.4, 0.51, 0.0,
            0.0, 0.0, 0.0, 0.3,
        ]);
        let m = combine(&[a, b], 4, 3);
        // Ties stay with the first class; exactly 0.5 is background.
        assert_eq!(m.labels, vec![1, 2, 2, 0, 1, 1, 2, 0, 0, 0, 0, 0]);
        assert_eq!(m.mask(1), vec![0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(combine(&[], 4, 3).labels, vec![0; 12]);
    }

    #[test]
    fn area_bbox_centroid_and_score_on_a_hand_made_mask() {
        // Class 0 covers (1,0), (2,0), (1,1), (2,1), (2,2): 5 of 12 pixels.
        #[rustfmt::skip]
        let labels = vec![
            0, 1, 1, 0,
            0, 1, 1, 2,
            0, 0, 1, 0,
        ];
        let m = LabelMap {
            width: 4,
            height: 3,
            labels,
        };
        let mut p = vec![0.0f32; 12];
        for (i, v) in [(1, 0.6), (2, 0.8), (5, 0.7), (6, 0.9), (10, 1.0)] {
            p[i] = v;
        }
        let r = class_result("bike", &m, 0, &p);
        assert_eq!(r.pixels, 5);
        assert!((r.area - 5.0 / 12.0).abs() < 1e-12);
        assert_eq!(
            r.bbox,
            Some(BBox {
                x: 1,
                y: 0,
                width: 2,
                height: 3
            })
        );
        // x centres: 1.5, 2.5, 1.5, 2.5, 2.5 -> 10.5 / 5; y: 0.5, 0.5, 1.5, 1.5, 2.5 -> 6.5 / 5.
        let c = r.centroid.unwrap();
        assert!(
            (c.x - 2.1).abs() < 1e-12 && (c.y - 1.3).abs() < 1e-12,
            "{c:?}"
        );
        assert!((r.score - 0.8).abs() < 1e-6, "{}", r.score);
        let other = class_result("dog", &m, 1, &p);
        assert_eq!((other.pixels, other.bbox.unwrap().x), (1, 3));
        let none = class_result("cat", &m, 2, &p);
        assert_eq!((none.pixels, none.bbox, none.score), (0, None, 0.0));
    }
}
