//! COCO masks: run-length encoding (uncompressed `counts` arrays and the compressed string form)
//! and polygon rasterisation, following the COCO API's `maskApi.c` (`rleFrString`,
//! `rleToString`, `rleFrPoly`, `rleDecode`) so that masks match what pycocotools produces.
//!
//! No maintained crate covers just this (the COCO crates on crates.io bundle whole evaluation
//! engines), and it is ~150 lines, so it is written here and tested on hand-checked masks.
//!
//! Conventions: RLE runs are in column-major (Fortran) order and alternate 0 and 1, starting
//! with 0. Decoded masks here are row-major `Vec<u8>` with values 0/1.

use serde::{Deserialize, Serialize};

/// A run-length encoded `height × width` binary mask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rle {
    pub height: usize,
    pub width: usize,
    pub counts: Vec<u32>,
}

impl Rle {
    /// Parse COCO's compressed counts string (a LEB128-like code: 6 bits a character offset by
    /// 48, 5 payload bits, bit 0x20 = more, bit 0x10 of the last = sign; from the 4th count on,
    /// each value is stored as the difference to the count two before).
    pub fn from_compressed(s: &str, height: usize, width: usize) -> Result<Rle, String> {
        let bytes = s.as_bytes();
        let mut counts: Vec<u32> = Vec::with_capacity(bytes.len());
        let mut p = 0;
        while p < bytes.len() {
            let mut x: i64 = 0;
            let mut k = 0;
            loop {
                let byte = bytes[p];
                if !(48..48 + 64).contains(&byte) {
                    return Err(format!(
                        "RLE string: invalid character {:?} at {p}",
                        byte as char
                    ));
                }
                if k >= 12 {
                    return Err(format!("RLE string: value too long at {p}"));
                }
                let c = i64::from(byte - 48);
                x |= (c & 0x1f) << (5 * k);
                p += 1;
                k += 1;
                let more = c & 0x20 != 0;
                if !more {
                    if c & 0x10 != 0 {
                        x |= -1i64 << (5 * k);
                    }
                    break;
                }
                if p == bytes.len() {
                    return Err("RLE string ends inside a value".into());
                }
            }
            let m = counts.len();
            if m > 2 {
                x += i64::from(counts[m - 2]);
            }
            let count = u32::try_from(x)
                .map_err(|_| format!("RLE string: count {m} decodes to {x}, not a run length"))?;
            counts.push(count);
        }
        Ok(Rle {
            height,
            width,
            counts,
        })
    }

    /// The compressed counts string (inverse of [`Rle::from_compressed`]).
    pub fn to_compressed(&self) -> String {
        let mut out = String::new();
        for (i, &count) in self.counts.iter().enumerate() {
            let mut x = i64::from(count);
            if i > 2 {
                x -= i64::from(self.counts[i - 2]);
            }
            loop {
                let mut c = (x & 0x1f) as u8;
                x >>= 5;
                let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    c |= 0x20;
                }
                out.push((c + 48) as char);
                if !more {
                    break;
                }
            }
        }
        out
    }

    /// Encode a row-major mask (non-zero = foreground).
    pub fn from_mask(mask: &[u8], height: usize, width: usize) -> Rle {
        let mut counts = Vec::new();
        let (mut current, mut run) = (0u8, 0u32);
        for x in 0..width {
            for y in 0..height {
                let v = u8::from(mask[y * width + x] != 0);
                if v != current {
                    counts.push(run);
                    (current, run) = (v, 0);
                }
                run += 1;
            }
        }
        counts.push(run);
        Rle {
            height,
            width,
            counts,
        }
    }

    /// Row-major 0/1 mask. Runs summing to more than `height · width` are an error; fewer leave
    /// the rest 0 (some encoders drop the last background run).
    pub fn decode(&self) -> Result<Vec<u8>, String> {
        let (h, w) = (self.height, self.width);
        let total: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        if total > (h * w) as u64 {
            return Err(format!(
                "RLE counts sum to {total}, more than {h}x{w} = {} pixels",
                h * w
            ));
        }
        let mut mask = vec![0u8; h * w];
        let mut pos = 0usize;
        for (i, &c) in self.counts.iter().enumerate() {
            if i % 2 == 1 {
                for p in pos..pos + c as usize {
                    mask[(p % h) * w + p / h] = 1;
                }
            }
            pos += c as usize;
        }
        Ok(mask)
    }

    /// Rasterise one polygon `[x0, y0, x1, y1, ...]` exactly as `maskApi.c`'s `rleFrPoly`: the
    /// outline is upsampled 5×, and a pixel is inside where its centre lies between the outline's
    /// crossings of its column.
    pub fn from_polygon(xy: &[f64], height: usize, width: usize) -> Rle {
        let (h, w) = (height as i64, width as i64);
        let k = xy.len() / 2;
        if k == 0 || h == 0 || w == 0 {
            let counts = if h * w > 0 { vec![(h * w) as u32] } else { vec![] };
            return Rle {
                height,
                width,
                counts,
            };
        }
        let scale = 5.0;
        // `as i64` truncates toward zero like C's `(int)`.
        let mut x: Vec<i64> = (0..k).map(|j| (scale * xy[2 * j] + 0.5) as i64).collect();
        let mut y: Vec<i64> = (0..k).map(|j| (scale * xy[2 * j + 1] + 0.5) as i64).collect();
        x.push(x[0]);
        y.push(y[0]);
        // Discrete points densely along the whole outline.
        let (mut u, mut v) = (Vec::new(), Vec::new());
        for j in 0..k {
            let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
            let (dx, dy) = ((xe - xs).abs(), (ys - ye).abs());
            let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
            if flip {
                std::mem::swap(&mut xs, &mut xe);
                std::mem::swap(&mut ys, &mut ye);
            }
            if dx >= dy {
                // dx == 0 only for a repeated vertex; C divides 0 by 0 there.
                let s = if dx == 0 {
                    0.0
                } else {
                    (ye - ys) as f64 / dx as f64
                };
                for d in 0..=dx {
                    let t = if flip { dx - d } else { d };
                    u.push(t + xs);
                    v.push((ys as f64 + s * t as f64 + 0.5) as i64);
                }
            } else {
                let s = (xe - xs) as f64 / dy as f64;
                for d in 0..=dy {
                    let t = if flip { dy - d } else { d };
                    v.push(t + ys);
                    u.push((xs as f64 + s * t as f64 + 0.5) as i64);
                }
            }
        }
        // Points where the outline crosses a pixel column, downsampled.
        let mut starts: Vec<u64> = Vec::new();
        for j in 1..u.len() {
            if u[j] == u[j - 1] {
                continue;
            }
            let xd = (if u[j] < u[j - 1] { u[j] } else { u[j] - 1 }) as f64;
            let xd = (xd + 0.5) / scale - 0.5;
            if xd.floor() != xd || xd < 0.0 || xd > (w - 1) as f64 {
                continue;
            }
            let yd = v[j].min(v[j - 1]) as f64;
            let yd = ((yd + 0.5) / scale - 0.5).clamp(0.0, h as f64).ceil();
            starts.push(xd as u64 * h as u64 + yd as u64);
        }
        // Sorted crossing positions -> run lengths, merging zero-length runs.
        starts.push((h * w) as u64);
        starts.sort_unstable();
        let mut prev = 0;
        for s in starts.iter_mut() {
            (*s, prev) = (*s - prev, *s);
        }
        let mut counts: Vec<u32> = vec![starts[0] as u32];
        let mut j = 1;
        while j < starts.len() {
            if starts[j] > 0 {
                counts.push(starts[j] as u32);
                j += 1;
            } else {
                j += 1;
                if j < starts.len() {
                    *counts.last_mut().expect("non-empty") += starts[j] as u32;
                    j += 1;
                }
            }
        }
        Rle {
            height,
            width,
            counts,
        }
    }
}

/// Row-major mask of a polygon (see [`Rle::from_polygon`]).
pub fn polygon_mask(xy: &[f64], height: usize, width: usize) -> Vec<u8> {
    Rle::from_polygon(xy, height, width)
        .decode()
        .expect("polygon runs cover the image exactly")
}
