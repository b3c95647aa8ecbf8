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
            let counts = if h * w > 0 {
                vec![(h * w) as u32]
            } else {
                vec![]
            };
            return Rle {
                height,
                width,
                counts,
            };
        }
        let scale = 5.0;
        // `as i64` truncates toward zero like C's `(int)`.
        let mut x: Vec<i64> = (0..k).map(|j| (scale * xy[2 * j] + 0.5) as i64).collect();
        let mut y: Vec<i64> = (0..k)
            .map(|j| (scale * xy[2 * j + 1] + 0.5) as i64)
            .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Row-major 0/1 mask from rows of '0'/'1' characters.
    fn grid(rows: &[&str]) -> Vec<u8> {
        rows.iter()
            .flat_map(|r| r.bytes().map(|b| b - b'0'))
            .collect()
    }

    #[test]
    fn compressed_strings_hand_checked() -> Result<(), String> {
        // 3x3, column-major runs 1 zero, 2 ones, 3 zeros, 1 one, 2 zeros. From the 4th count on
        // the code stores differences to the count two before: 1 - 2 = -1 and 2 - 3 = -1, and -1
        // is 0x1f with the sign bit 0x10 set -> '0' + 31 = 'O'. (pycocotools agrees: "123OO".)
        let rle = Rle::from_compressed("123OO", 3, 3)?;
        assert_eq!(rle.counts, [1, 2, 3, 1, 2]);
        assert_eq!(rle.decode()?, grid(&["001", "100", "100"]));
        assert_eq!(rle.to_compressed(), "123OO");
        assert_eq!(Rle::from_mask(&rle.decode()?, 3, 3), rle);
        // Two characters for 40: 40 = 8 + (1 << 5): 'X' = '0' + (8 | 0x20 more), then '1'.
        let rle = Rle::from_compressed("5X15", 50, 1)?;
        assert_eq!(rle.counts, [5, 40, 5]);
        let mask = rle.decode()?;
        assert_eq!(mask.iter().filter(|&&v| v == 1).count(), 40);
        assert!(mask[5] == 1 && mask[44] == 1 && mask[4] == 0 && mask[45] == 0);
        Ok(())
    }

    #[test]
    fn uncompressed_and_compressed_agree() -> Result<(), String> {
        // A 30x40 mask with two boxes, string from pycocotools' encode.
        let (h, w) = (30, 40);
        let mut mask = vec![0u8; h * w];
        for y in 0..h {
            for x in 0..w {
                let a = (3..20).contains(&y) && (5..33).contains(&x);
                let b = (22..28).contains(&y) && (1..4).contains(&x);
                mask[y * w + x] = u8::from(a || b);
            }
        }
        let s = "d16h0000;;ZO00000000000000000000000000000000000000000000000000000_6";
        let rle = Rle::from_compressed(s, h, w)?;
        assert_eq!(rle.decode()?, mask);
        assert_eq!(Rle::from_mask(&mask, h, w).to_compressed(), s);
        let plain = Rle {
            height: h,
            width: w,
            counts: rle.counts.clone(),
        };
        assert_eq!(plain.decode()?, mask);
        Ok(())
    }

    #[test]
    fn polygons_match_pycocotools() -> Result<(), String> {
        // Expected strings from pycocotools' frPyObjects (rleFrPoly).
        let square = Rle::from_polygon(&[1., 1., 4., 1., 4., 4., 1., 4.], 6, 6);
        assert_eq!(square.to_compressed(), "733000;");
        assert_eq!(
            square.decode()?,
            grid(&["000000", "011100", "011100", "011100", "000000", "000000"])
        );
        let quad = [0.5, 0.2, 7.3, 1.1, 5.2, 6.8, 1.0, 5.5];
        assert_eq!(
            Rle::from_polygon(&quad, 8, 9).to_compressed(),
            "86201O01OO1Mb0"
        );
        let concave = [2., 0., 8., 3., 2., 7., 5., 3.5];
        let rle = Rle::from_polygon(&concave, 8, 10);
        assert_eq!(rle.to_compressed(), "f01201001NO420Og0");
        assert_eq!(rle.decode()?.iter().filter(|&&v| v == 1).count(), 11);
        Ok(())
    }

    #[test]
    fn round_trip_and_errors() {
        let (h, w) = (7, 5);
        let mut state = 99u32;
        for _ in 0..50 {
            let mask: Vec<u8> = (0..h * w)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    u8::from(state >> 29 == 0)
                })
                .collect();
            let s = Rle::from_mask(&mask, h, w).to_compressed();
            assert_eq!(
                Rle::from_compressed(&s, h, w).and_then(|r| r.decode()),
                Ok(mask)
            );
        }
        assert!(Rle::from_compressed("12 3", 3, 3).is_err());
        assert!(
            Rle::from_compressed("X", 3, 3).is_err(),
            "ends inside a value"
        );
        let too_long = Rle {
            height: 2,
            width: 2,
            counts: vec![1, 4],
        };
        assert!(too_long.decode().unwrap_err().contains("more than"));
        let short = Rle {
            height: 2,
            width: 2,
            counts: vec![1, 1],
        };
        assert_eq!(short.decode(), Ok(vec![0, 0, 1, 0]));
    }
}
