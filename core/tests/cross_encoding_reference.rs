//! An independent check of one masked cross-image encoding level (Eqs. 4–9 and the fusion conv),
//! written directly from the equations with plain loops in f64, against the candle implementation.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use mce_core::{Mce, MceConfig};
use std::collections::HashMap;

type Mat = Vec<Vec<f64>>; // [row][col]

/// erf to ~1e-7 (Numerical Recipes' erfc Chebyshev fit).
fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807
                            + t * (-1.13520398
                                + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        1.0 - r
    } else {
        r - 1.0
    }
}

struct Weights(HashMap<String, Vec<f64>>, HashMap<String, Vec<usize>>);

impl Weights {
    fn mat(&self, name: &str) -> Mat {
        let dims = &self.1[name];
        let (rows, cols) = (dims[0], dims[1..].iter().product::<usize>());
        self.0[name]
            .chunks(cols)
            .take(rows)
            .map(|r| r.to_vec())
            .collect()
    }
    fn vec(&self, name: &str) -> Vec<f64> {
        self.0[name].clone()
    }
}

/// tokens[n] -> W tokens[n] + b, for `[N][in]` tokens and a `(out, in)` weight.
fn affine(x: &Mat, w: &Mat, b: &[f64]) -> Mat {
    x.iter()
        .map(|t| {
            w.iter()
                .zip(b)
                .map(|(row, bias)| bias + row.iter().zip(t).map(|(a, c)| a * c).sum::<f64>())
                .collect()
        })
        .collect()
}

/// One head's attention: out[i] = Σ_j softmax_j(a[i]·b[j] / √d_h, allowed j) v[j], over columns `cols`.
fn attention(a: &Mat, b: &Mat, v: &Mat, allowed: &[bool], heads: usize) -> Mat {
    let n = a.len();
    let d = a[0].len();
    let dh = d / heads;
    let mut out = vec![vec![0.0; d]; n];
    for h in 0..heads {
        let cols = h * dh..(h + 1) * dh;
        for i in 0..n {
            let logits: Vec<f64> = (0..n)
                .map(|j| cols.clone().map(|c| a[i][c] * b[j][c]).sum::<f64>() / (dh as f64).sqrt())
                .collect();
            let max = (0..n)
                .filter(|&j| allowed[j])
                .map(|j| logits[j])
                .fold(f64::MIN, f64::max);
            let w: Vec<f64> = (0..n)
                .map(|j| {
                    if allowed[j] {
                        (logits[j] - max).exp()
                    } else {
                        0.0
                    }
                })
                .collect();
            let z: f64 = w.iter().sum();
            for c in cols.clone() {
                out[i][c] = (0..n).map(|j| w[j] / z * v[j][c]).sum();
            }
        }
    }
    out
}

fn layer_norm(x: &Mat, g: &[f64], b: &[f64]) -> Mat {
    x.iter()
        .map(|t| {
            let m = t.iter().sum::<f64>() / t.len() as f64;
            let var = t.iter().map(|v| (v - m).powi(2)).sum::<f64>() / t.len() as f64;
            t.iter()
                .enumerate()
                .map(|(c, v)| (v - m) / (var + 1e-5).sqrt() * g[c] + b[c])
                .collect()
        })
        .collect()
}

fn mlp(x: &Mat, w: &Weights, p: &str) -> Mat {
    let h = affine(
        x,
        &w.mat(&format!("{p}.fc1.weight")),
        &w.vec(&format!("{p}.fc1.bias")),
    );
    let h: Mat = h
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| 0.5 * v * (1.0 + erf(v / 2f64.sqrt())))
                .collect()
        })
        .collect();
    affine(
        &h,
        &w.mat(&format!("{p}.fc2.weight")),
        &w.vec(&format!("{p}.fc2.bias")),
    )
}

#[test]
fn level_encoder_matches_a_loop_reference() -> Result<()> {
    let dev = Device::Cpu;
    let mut cfg = MceConfig {
        image_size: 24, // level-2 grid 3×3
        ..MceConfig::edge_lite0()
    };
    let p = cfg.paper_mut().unwrap();
    (p.reduce_dim, p.d_model, p.heads, p.mlp_ratio) = (8, 8, 2, 2);
    (p.decoder.dim, p.levels) = (8, vec![2]);
    let (d_model, heads) = (p.d_model, p.heads);
    let vm = VarMap::new();
    let m = Mce::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
    let enc = &m.cross_encoding().unwrap().levels().next().unwrap().1;

    let (c, g) = (40, cfg.level_grid(2));
    let n = g * g;
    let fs = Tensor::randn(0f32, 1f32, (1, c, g, g), &dev)?;
    let fq = Tensor::randn(0f32, 1f32, (1, c, g, g), &dev)?;
    let fg = [false, true, true, false, true, false, false, false, true];
    let mask_v: Vec<f32> = fg.iter().map(|&b| f32::from(u8::from(b))).collect();
    let mask = Tensor::from_vec(mask_v, (1, 1, g, g), &dev)?;
    let ours = enc.forward(&enc.encode_query(&fq)?, &enc.encode_support(&fs, &mask)?)?;
    let ours = ours.reshape((d_model, n))?.to_vec2::<f32>()?;

    // ---- reference ----
    let vars = vm.data().lock().unwrap();
    let mut vals = HashMap::new();
    let mut dims = HashMap::new();
    for (k, v) in vars.iter().filter(|(k, _)| k.starts_with("cross.0.")) {
        let key = k.trim_start_matches("cross.0.").to_string();
        let data = v
            .as_tensor()
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        vals.insert(key.clone(), data);
        dims.insert(key, v.dims().to_vec());
    }
    let w = Weights(vals, dims);
    let tokens = |f: &Tensor| -> Result<Mat> {
        let x = f
            .reshape((c, n))?
            .t()?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?; // [N][C]
        Ok(affine(&x, &w.mat("proj.weight"), &w.vec("proj.bias")))
    };
    let (s, q) = (tokens(&fs)?, tokens(&fq)?);
    let lin = |x: &Mat, name: &str| {
        affine(
            x,
            &w.mat(&format!("{name}.weight")),
            &w.vec(&format!("{name}.bias")),
        )
    };
    let (s_q, s_k, s_v) = (
        lin(&s, "support_q"),
        lin(&s, "support_k"),
        lin(&s, "support_v"),
    );
    let (q_q, q_k, q_v) = (lin(&q, "query_q"), lin(&q, "query_k"), lin(&q, "query_v"));

    // support branch (5-6): background support keys excluded
    let r_s = attention(&s_q, &s_k, &q_v, &fg, heads);
    // query branch (7-8): all query keys, support values times the mask
    let sv_masked: Mat = s_v
        .iter()
        .zip(fg)
        .map(|(r, keep)| r.iter().map(|v| if keep { *v } else { 0.0 }).collect())
        .collect();
    let r_q = attention(&q_q, &q_k, &sv_masked, &[true; 9], heads);
    // (9)
    let f_s = mlp(
        &layer_norm(
            &r_s,
            &w.vec("support_norm.weight"),
            &w.vec("support_norm.bias"),
        ),
        &w,
        "support_mlp",
    );
    let f_q = mlp(
        &layer_norm(&r_q, &w.vec("query_norm.weight"), &w.vec("query_norm.bias")),
        &w,
        "query_mlp",
    );
    // fusion: Conv1×1(cat(f'_Q, f'_S))
    let cat: Mat = f_q
        .iter()
        .zip(&f_s)
        .map(|(a, b)| [a.clone(), b.clone()].concat())
        .collect();
    let fused = affine(&cat, &w.mat("fuse.weight"), &w.vec("fuse.bias")); // [N][d]

    let mut worst = 0f64;
    for (i, row) in fused.iter().enumerate() {
        for (ch, v) in row.iter().enumerate() {
            worst = worst.max((v - ours[ch][i] as f64).abs());
        }
    }
    assert!(worst < 1e-4, "max abs difference {worst}");
    Ok(())
}
