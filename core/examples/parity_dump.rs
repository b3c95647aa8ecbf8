//! Reference tensors for the PyTorch side-by-side benchmark (`bench/side_by_side.py`, not CI).
//!
//! Writes into `<out_dir>`:
//!
//! * `edge_paper.safetensors`: an mce checkpoint of the edge preset with the **paper** head (seeded
//!   random init, LayerNorm affine parameters perturbed so that they are exercised) on the bundled
//!   ImageNet EfficientNet-Lite0 weights, written by `checkpoint::save`.
//! * `edge_paper_ref.safetensors`: inputs (prepared images `(1, 3, S, S)`, model masks `(1, 1, S, S)`)
//!   of bundled MSRC photos, the backbone levels and head intermediates of the query, and the logits
//!   of the checkpoint re-loaded from disk, for the cases `k1` (one shot), `k5` (five shots) and
//!   `tiny` (one shot whose mask is a 6×6 box, so the level masks take the fallbacks).
//! * with `--paper`: the same for the paper preset (ResNet-50 with random weights under torchvision's
//!   names) at a reduced input size (`--paper-size`, default 225), as `paper_rn50.safetensors` and
//!   `paper_rn50_ref.safetensors` (cases `k1`, `k5`).
//!
//! `cargo run --release -p mce-core --example parity_dump -- <out_dir> [--paper] [--paper-size N]`

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use mce_core::backbone::{resnet, Backbone};
use mce_core::checkpoint;
use mce_core::inference::{lite0_weights_path, Segmenter};
use mce_core::model::init::seeded_varbuilder;
use mce_core::model::{Mode, QueryEncoding, SupportEncoding};
use mce_core::preprocess::{self, MaskEncoding};
use mce_core::{Features, Mce, MceConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/msrc")
        .join(name)
}

/// Query, then support shots `(photo stem, MSRC class id)`; `k5` uses all five shots.
const QUERY: &str = "8_10_s";
const SHOTS: [(&str, u8); 5] = [
    ("8_11_s", 12),
    ("8_13_s", 12),
    ("8_14_s", 12),
    ("4_12_s", 8),
    ("16_12_s", 20),
];

/// Perturb every LayerNorm's weight and bias (the init makes them 1 and 0, which would hide a
/// swapped or missing affine).
fn perturb_norms(vm: &VarMap, dev: &Device) -> Result<()> {
    let vars = vm.data().lock().expect("varmap lock");
    for (name, var) in vars.iter() {
        if name.contains("_norm.") {
            let noise = Tensor::randn(0f32, 0.2, var.dims(), dev)?;
            let base = if name.ends_with(".weight") { 1.0 } else { 0.0 };
            var.set(&(noise + base)?)?;
        }
    }
    Ok(())
}

/// Random ResNet-50 weights under torchvision's names (BN variance around 1, gamma 0.3–0.7), so
/// that the activations neither vanish nor explode through 16 blocks.
fn random_resnet(dev: &Device) -> Result<HashMap<String, Tensor>> {
    let mut map = HashMap::new();
    for (name, shape) in resnet::expected_tensors() {
        let t = if name.ends_with("running_var") {
            Tensor::rand(0.5f32, 1.5, shape, dev)?
        } else if name.ends_with("running_mean") || name.ends_with("bias") {
            Tensor::randn(0f32, 0.05, shape, dev)?
        } else if shape.len() == 1 {
            Tensor::rand(0.3f32, 0.7, shape, dev)?
        } else {
            let fan_in: usize = shape[1..].iter().product();
            Tensor::randn(0f32, (2.0 / fan_in as f32).sqrt(), shape, dev)?
        };
        map.insert(name, t);
    }
    Ok(map)
}

/// Write a checkpoint of `cfg` with a seeded paper head on `backbone` tensors.
fn write_checkpoint(
    path: &Path,
    cfg: &MceConfig,
    backbone: &HashMap<String, Tensor>,
    dev: &Device,
) -> Result<()> {
    let vm = VarMap::new();
    Mce::new(cfg, seeded_varbuilder(&vm, 7, DType::F32, dev))?;
    perturb_norms(&vm, dev)?;
    let extra = BTreeMap::from([(
        "note".to_string(),
        "untrained paper head for the PyTorch parity check (core/examples/parity_dump.rs)"
            .to_string(),
    )]);
    checkpoint::save(path, cfg, &vm, backbone, &extra)?;
    Ok(())
}

/// Prepared image `(1, 3, S, S)` and model mask `(1, 1, S, S)` of a bundled photo.
fn load_pair(seg: &Segmenter, stem: &str, class: u8) -> Result<(Tensor, Tensor)> {
    let img = preprocess::load_rgb(asset(&format!("{stem}.png")))?;
    let mask = preprocess::load_mask(
        asset(&format!("{stem}_GT.png")),
        MaskEncoding::ClassIndex(class),
    )?;
    let prepared = seg.prepare(&img)?;
    let resize = seg.config().input_resize();
    let m = preprocess::prepare_mask(&mask, resize, seg.device())?;
    let m = preprocess::mask_tensor_for_model(&m)?.unsqueeze(0)?;
    Ok((prepared.tensor.unsqueeze(0)?, m))
}

/// A `(1, 1, S, S)` mask with a `side × side` foreground box at `(y0, x0)`.
fn box_mask(s: usize, y0: usize, x0: usize, side: usize, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..s * s)
        .map(|k| {
            let (y, x) = (k / s, k % s);
            f32::from(u8::from(
                (y0..y0 + side).contains(&y) && (x0..x0 + side).contains(&x),
            ))
        })
        .collect();
    Ok(Tensor::from_vec(v, (1, 1, s, s), dev)?)
}

fn put_features(out: &mut HashMap<String, Tensor>, prefix: &str, f: &Features) {
    for (l, t) in [2, 3, 4].into_iter().zip(f.levels()) {
        out.insert(format!("{prefix}.level{l}"), t.clone());
    }
}

/// Logits and intermediates of one case: `shots` as (features, mask).
fn dump_case(
    out: &mut HashMap<String, Tensor>,
    case: &str,
    head: &Mce,
    qfeat: &Features,
    query: &QueryEncoding,
    shots: &[(Features, Tensor)],
) -> Result<()> {
    let enc: Vec<SupportEncoding> = shots
        .iter()
        .map(|(f, m)| head.encode_support(f, m, Mode::Eval))
        .collect::<candle_core::Result<_>>()?;
    let x = head.decoder_input(query, &enc)?;
    let parts = [
        ("query", &x.query),
        ("prototype", &x.prototype),
        ("cross", &x.cross),
        ("similarity", &x.similarity),
    ];
    let grid = x.query.as_ref().map(|q| q.dims4()).transpose()?;
    for (name, t) in parts {
        // V_s is kept as a vector; X (and the reference) tile it over the grid.
        let t = match (t, grid) {
            (Some(t), Some((b, _, h, w))) if name == "prototype" => {
                Some(t.broadcast_as((b, t.dim(1)?, h, w))?.contiguous()?)
            }
            (t, _) => t.clone(),
        };
        if let Some(t) = t {
            out.insert(format!("{case}.x.{name}"), t);
        }
    }
    if let SupportEncoding::Paper(p) = &enc[0] {
        out.insert(format!("{case}.shot0.prototype"), p.prototype.clone());
    }
    // Per-level cross encodings of the first shot, before the merge.
    if let Some(cross) = head.cross_encoding() {
        let (qlev, slev) = (qfeat.levels(), shots[0].0.levels());
        for (l, e) in cross.levels() {
            let q = e.encode_query(qlev[l - 2])?;
            let s = e.encode_support(slev[l - 2], &shots[0].1)?;
            out.insert(format!("{case}.shot0.cross_level{l}"), e.forward(&q, &s)?);
        }
    }
    let grid = head.decode_input(&x)?;
    out.insert(format!("{case}.logits_grid"), grid);
    out.insert(format!("{case}.logits"), head.decode(query, &enc)?);
    Ok(())
}

/// Load `ckpt` from disk and dump inputs, features, intermediates and logits to `ref_path`.
fn dump_reference(ckpt: &Path, ref_path: &Path, with_tiny: bool, dev: &Device) -> Result<()> {
    let seg = Segmenter::from_checkpoint(ckpt, dev)?;
    let s = seg.config().image_size;
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let (qimg, qmask) = load_pair(&seg, QUERY, 12)?;
    out.insert("query.image".into(), qimg.clone());
    out.insert("query.mask".into(), qmask);
    let qfeat = seg.backbone().features(&qimg)?;
    put_features(&mut out, "query", &qfeat);
    let query = seg.head().encode_query(&qfeat, Mode::Eval)?;
    if let QueryEncoding::Paper(q) = &query {
        out.insert("query.mid".into(), q.mid.clone());
    }
    let mut shots = Vec::new();
    for (k, (stem, class)) in SHOTS.iter().enumerate() {
        let (img, mask) = load_pair(&seg, stem, *class)?;
        out.insert(format!("support.{k}.image"), img.clone());
        out.insert(format!("support.{k}.mask"), mask.clone());
        let f = seg.backbone().features(&img)?;
        put_features(&mut out, &format!("support.{k}"), &f);
        shots.push((f, mask));
    }
    dump_case(&mut out, "k1", seg.head(), &qfeat, &query, &shots[..1])?;
    dump_case(&mut out, "k5", seg.head(), &qfeat, &query, &shots)?;
    if with_tiny {
        let tiny = box_mask(s, s / 2, s / 3, 6, dev)?;
        out.insert("tiny.mask".into(), tiny.clone());
        let shot = [(shots[0].0.clone(), tiny)];
        dump_case(&mut out, "tiny", seg.head(), &qfeat, &query, &shot)?;
    }
    candle_core::safetensors::save(&out, ref_path)?;
    println!(
        "wrote {} ({} tensors, config {})",
        ref_path.display(),
        out.len(),
        serde_json::to_string(seg.config())?
    );
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut out_dir: Option<PathBuf> = None;
    let (mut paper, mut paper_size) = (false, 225usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--paper" => paper = true,
            "--paper-size" => {
                paper_size = args.next().context("--paper-size needs a value")?.parse()?
            }
            _ if out_dir.is_none() => out_dir = Some(a.into()),
            other => bail!("unexpected argument {other:?}"),
        }
    }
    let out_dir = out_dir.context("usage: parity_dump <out_dir> [--paper] [--paper-size N]")?;
    std::fs::create_dir_all(&out_dir)?;
    let dev = Device::Cpu;

    let cfg = MceConfig::edge_lite0();
    let lite0 = candle_core::safetensors::load(lite0_weights_path(), &dev)?;
    let ckpt = out_dir.join("edge_paper.safetensors");
    write_checkpoint(&ckpt, &cfg, &lite0, &dev)?;
    println!("wrote {}", ckpt.display());
    dump_reference(
        &ckpt,
        &out_dir.join("edge_paper_ref.safetensors"),
        true,
        &dev,
    )?;

    if paper {
        let cfg = MceConfig {
            image_size: paper_size,
            ..MceConfig::paper_resnet50()
        };
        let ckpt = out_dir.join("paper_rn50.safetensors");
        write_checkpoint(&ckpt, &cfg, &random_resnet(&dev)?, &dev)?;
        println!("wrote {}", ckpt.display());
        dump_reference(
            &ckpt,
            &out_dir.join("paper_rn50_ref.safetensors"),
            false,
            &dev,
        )?;
    }
    Ok(())
}
