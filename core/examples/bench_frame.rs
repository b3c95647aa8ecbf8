//! The mce side of `bench/side_by_side.py` (not CI): times one case in this process and prints one
//! JSON line `{"case", "samples_ms", "median_ms", "stages_ms"}` on stdout.
//!
//! Cases (edge = the checkpoint given by `--checkpoint`, normally the paper-head checkpoint that
//! `parity_dump` writes; inputs = the prepared MSRC photos and masks of its reference file):
//!
//! | case | what one sample is |
//! |---|---|
//! | `backbone` | EfficientNet-Lite0 features of one 320×320 image |
//! | `head_k1` | `encode_query` + `decode` (K = 1) on cached query features |
//! | `frame_k1`, `frame_k5` | query backbone + `encode_query` + `decode` (supports encoded once, cached) |
//! | `frame_paper_k1` | the same for the paper preset (473×473, ResNet-50 with zero weights, random head) |
//! | `eval_paper_k5` | one paper-preset evaluation episode at K = 5 (the memory case: `peak_rss_mib`) |
//! | `classes_1`, `classes_3` | backbone + `encode_query` once + `decode` per class (K = 1 each) |
//! | `train_step_b8` | edge paper head, batch 8, 1-shot: forward (train mode), CE, backward, SGD step |
//! | `eval_k1`, `eval_k5` | one evaluation episode on cached features: K support encodings, query, decode, argmax |
//!
//! With `--stages`, the frame cases also report per-stage medians the way `mce-device bench` splits
//! a frame (backbone, cross-encoding per level, decoder, head total).
//!
//! `cargo run --release -p mce-core --example bench_frame -- --case frame_k1 --runs 5 \
//!     --checkpoint <dir>/edge_paper.safetensors --inputs <dir>/edge_paper_ref.safetensors`

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mce_core::backbone::{AnyBackbone, Backbone};
use mce_core::checkpoint;
use mce_core::model::loss::LossKind;
use mce_core::model::{Mode, SupportEncoding};
use mce_core::{Features, Mce, MceConfig};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

// The bench's mask is the golden example's box (as `tests/head_parity.rs` uses it).
#[path = "golden_logits.rs"]
#[allow(dead_code)]
mod golden;

// As the device and trainer binaries (with `mce_core::alloc::retain_freed_memory` first in `main`):
// big short-lived tensors are not page-faulted in each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    case: String,
    runs: usize,
    warmup: usize,
    checkpoint: Option<PathBuf>,
    inputs: Option<PathBuf>,
    stages: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        case: String::new(),
        runs: 5,
        warmup: 1,
        checkpoint: None,
        inputs: None,
        stages: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--case" => a.case = value()?,
            "--runs" => a.runs = value()?.parse()?,
            "--warmup" => a.warmup = value()?.parse()?,
            "--checkpoint" => a.checkpoint = Some(value()?.into()),
            "--inputs" => a.inputs = Some(value()?.into()),
            "--stages" => a.stages = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    if a.case.is_empty() {
        bail!("--case is required");
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// `warmup` untimed runs, then `runs` timed ones (milliseconds).
fn sample(runs: usize, warmup: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(ms(t))
        })
        .collect()
}

/// The edge model and the bench inputs: query image, 5 support images and masks.
struct Edge {
    cfg: MceConfig,
    backbone: AnyBackbone,
    head: Mce,
    varmap: VarMap,
    query: Tensor,
    query_mask: Tensor,
    supports: Vec<(Tensor, Tensor)>,
}

fn load_edge(args: &Args, dev: &Device) -> Result<Edge> {
    let ckpt = args
        .checkpoint
        .as_ref()
        .context("--checkpoint is required")?;
    let inputs = args.inputs.as_ref().context("--inputs is required")?;
    let m = checkpoint::load(ckpt, dev)?;
    let t = candle_core::safetensors::load(inputs, dev)?;
    let get = |k: &str| {
        t.get(k)
            .cloned()
            .with_context(|| format!("{k} not in inputs"))
    };
    let supports = (0..5)
        .map(|k| {
            Ok((
                get(&format!("support.{k}.image"))?,
                get(&format!("support.{k}.mask"))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Edge {
        cfg: m.config,
        backbone: m.backbone,
        head: m.head,
        varmap: m.varmap,
        query: get("query.image")?,
        query_mask: get("query.mask")?,
        supports,
    })
}

/// Support encodings of shots `idx` of the edge inputs (done once, as the device caches them).
fn encode_shots(e: &Edge, idx: &[usize]) -> Result<Vec<SupportEncoding>> {
    idx.iter()
        .map(|&k| {
            let (img, mask) = &e.supports[k];
            let f = e.backbone.features(img)?;
            Ok(e.head.encode_support(&f, mask, Mode::Eval)?)
        })
        .collect()
}

/// One frame: backbone, query encoding once, decode per class.
fn frame(
    backbone: &AnyBackbone,
    head: &Mce,
    image: &Tensor,
    classes: &[&[SupportEncoding]],
) -> Result<()> {
    let f = backbone.features(image)?;
    let q = head.encode_query(&f, Mode::Eval)?;
    for shots in classes {
        head.decode(&q, shots)?;
    }
    Ok(())
}

/// Per-stage medians of a frame, split as `mce-device bench` does.
fn stages(
    backbone: &AnyBackbone,
    head: &Mce,
    image: &Tensor,
    support_feats: &Features,
    mask: &Tensor,
    shots: &[SupportEncoding],
    runs: usize,
) -> Result<BTreeMap<String, f64>> {
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in 0..=runs {
        let mut t: BTreeMap<String, f64> = BTreeMap::new();
        let t0 = Instant::now();
        let feats = backbone.features(image)?;
        t.insert("backbone".into(), ms(t0));
        if let Some(cross) = head.cross_encoding() {
            let (ql, sl) = (feats.levels(), support_feats.levels());
            for (l, enc) in cross.levels() {
                let st = enc.encode_support(sl[l - 2], mask)?;
                let t0 = Instant::now();
                let q = enc.encode_query(ql[l - 2])?;
                for _ in 0..shots.len() {
                    enc.forward(&q, &st)?;
                }
                t.insert(format!("mce_level{l}"), ms(t0));
            }
        }
        let t0 = Instant::now();
        let q = head.encode_query(&feats, Mode::Eval)?;
        let encode_query = ms(t0);
        let x = head.decoder_input(&q, shots)?;
        let t0 = Instant::now();
        head.decode_input(&x)?;
        t.insert("decoder".into(), ms(t0));
        let t0 = Instant::now();
        head.decode(&q, shots)?;
        t.insert("head_total".into(), encode_query + ms(t0));
        t.insert("encode_query".into(), encode_query);
        if run > 0 {
            for (k, v) in t {
                samples.entry(k).or_default().push(v);
            }
        }
    }
    Ok(samples.into_iter().map(|(k, v)| (k, median(v))).collect())
}

/// Batch `n` images by cycling through `items` (starting at `offset`).
fn cycle_cat(items: &[Tensor], n: usize, offset: usize) -> Result<Tensor> {
    let picked: Vec<&Tensor> = (0..n).map(|i| &items[(i + offset) % items.len()]).collect();
    Ok(Tensor::cat(&picked, 0)?)
}

fn features_cat(items: &[Features], n: usize, offset: usize) -> Result<Features> {
    let level = |l: usize| {
        let ts: Vec<Tensor> = items.iter().map(|f| f.levels()[l].clone()).collect();
        cycle_cat(&ts, n, offset)
    };
    Ok(Features {
        level2: level(0)?,
        level3: level(1)?,
        level4: level(2)?,
    })
}

/// SGD with momentum 0.9 and weight decay 1e-4, PyTorch semantics (as mce-train's optimizer).
struct Sgd {
    vars: Vec<(Var, Option<Tensor>)>,
    lr: f64,
}

impl Sgd {
    fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        for (var, buf) in &mut self.vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = (g + (var.as_tensor() * 1e-4)?)?;
            let b = match buf.take() {
                Some(b) => ((b * 0.9)? + g)?,
                None => g,
            };
            var.set(&(var.as_tensor() - (&b * self.lr)?)?)?;
            *buf = Some(b);
        }
        Ok(())
    }
}

/// The paper preset (473×473, ResNet-50 with zero weights, random head): one frame at K = 1, or
/// one evaluation episode at K = 5 (support encodings, query, decode, argmax).
fn paper_case(args: &Args, dev: &Device) -> Result<(Vec<f64>, BTreeMap<String, f64>)> {
    let (runs, warmup) = (args.runs, args.warmup);
    let cfg = MceConfig::paper_resnet50();
    let backbone = AnyBackbone::new(cfg.backbone, VarBuilder::zeros(DType::F32, dev))?;
    let vm = VarMap::new();
    Mce::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, dev))?;
    let head = Mce::frozen(&cfg, &vm)?;
    let s = cfg.image_size;
    let image = Tensor::randn(0f32, 1f32, (1, 3, s, s), dev)?;
    let sfeat = backbone.features(&Tensor::randn(0f32, 1f32, (1, 3, s, s), dev)?)?;
    let mask = golden::box_mask(s, dev)?;
    if args.case == "eval_paper_k5" {
        let qf = backbone.features(&image)?;
        let samples = sample(runs, warmup, || {
            let shots = (0..5)
                .map(|_| head.encode_support(&sfeat, &mask, Mode::Eval))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let q = head.encode_query(&qf, Mode::Eval)?;
            head.decode(&q, &shots)?.argmax(1)?;
            Ok(())
        })?;
        return Ok((samples, BTreeMap::new()));
    }
    let shots = vec![head.encode_support(&sfeat, &mask, Mode::Eval)?];
    let samples = sample(runs, warmup, || frame(&backbone, &head, &image, &[&shots]))?;
    let st = match args.stages {
        true => stages(&backbone, &head, &image, &sfeat, &mask, &shots, runs)?,
        false => BTreeMap::new(),
    };
    Ok((samples, st))
}

/// Peak resident memory of this process so far (VmHWM), MiB; `None` off Linux.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn run_case(args: &Args, dev: &Device) -> Result<(Vec<f64>, BTreeMap<String, f64>)> {
    let (runs, warmup) = (args.runs, args.warmup);
    let none = BTreeMap::new();
    if args.case == "frame_paper_k1" || args.case == "eval_paper_k5" {
        return paper_case(args, dev);
    }
    let e = load_edge(args, dev)?;
    Ok(match args.case.as_str() {
        "backbone" => (
            sample(runs, warmup, || {
                e.backbone.features(&e.query)?;
                Ok(())
            })?,
            none,
        ),
        "head_k1" => {
            let shots = encode_shots(&e, &[0])?;
            let f = e.backbone.features(&e.query)?;
            let samples = sample(runs, warmup, || {
                let q = e.head.encode_query(&f, Mode::Eval)?;
                e.head.decode(&q, &shots)?;
                Ok(())
            })?;
            (samples, none)
        }
        "frame_k1" | "frame_k5" => {
            let idx: &[usize] = if args.case == "frame_k1" {
                &[0]
            } else {
                &[0, 1, 2, 3, 4]
            };
            let shots = encode_shots(&e, idx)?;
            let samples = sample(runs, warmup, || {
                frame(&e.backbone, &e.head, &e.query, &[&shots])
            })?;
            let st = if args.stages {
                let (img, mask) = &e.supports[0];
                let sf = e.backbone.features(img)?;
                stages(&e.backbone, &e.head, &e.query, &sf, mask, &shots, runs)?
            } else {
                none
            };
            (samples, st)
        }
        "classes_1" | "classes_3" => {
            let n = if args.case == "classes_1" { 1 } else { 3 };
            let classes: Vec<Vec<SupportEncoding>> = [0usize, 3, 4][..n]
                .iter()
                .map(|&k| encode_shots(&e, &[k]))
                .collect::<Result<_>>()?;
            let refs: Vec<&[SupportEncoding]> = classes.iter().map(|c| c.as_slice()).collect();
            (
                sample(runs, warmup, || {
                    frame(&e.backbone, &e.head, &e.query, &refs)
                })?,
                none,
            )
        }
        "train_step_b8" => {
            let b = 8;
            let images: Vec<Tensor> = std::iter::once(e.query.clone())
                .chain(e.supports.iter().map(|(i, _)| i.clone()))
                .collect();
            let masks: Vec<Tensor> = std::iter::once(e.query_mask.clone())
                .chain(e.supports.iter().map(|(_, m)| m.clone()))
                .collect();
            let feats = images
                .iter()
                .map(|i| Ok(e.backbone.features(i)?))
                .collect::<Result<Vec<_>>>()?;
            let qf = features_cat(&feats, b, 0)?;
            let sf = features_cat(&feats, b, 1)?;
            let smask = cycle_cat(&masks, b, 1)?;
            let labels = cycle_cat(&masks, b, 0)?.squeeze(1)?.to_dtype(DType::U8)?;
            // The checkpoint's head as trainable variables.
            let head = Mce::new(&e.cfg, VarBuilder::from_varmap(&e.varmap, DType::F32, dev))?;
            let mut opt = Sgd {
                vars: e.varmap.all_vars().into_iter().map(|v| (v, None)).collect(),
                lr: 1e-3,
            };
            let shots = [(sf, smask)];
            let mut step = 0u64;
            let samples = sample(runs, warmup, || {
                step += 1;
                let logits = head.forward(&qf, &shots, Mode::Train { seed: step })?;
                let loss = LossKind::CrossEntropy.loss(&logits, &labels)?;
                opt.step(&loss.backward()?)?;
                Ok(())
            })?;
            (samples, none)
        }
        "eval_k1" | "eval_k5" => {
            let k = if args.case == "eval_k1" { 1 } else { 5 };
            let qf = e.backbone.features(&e.query)?;
            let sf = e.supports[..k]
                .iter()
                .map(|(i, m)| Ok((e.backbone.features(i)?, m.clone())))
                .collect::<Result<Vec<_>>>()?;
            let samples = sample(runs, warmup, || {
                let shots = sf
                    .iter()
                    .map(|(f, m)| e.head.encode_support(f, m, Mode::Eval))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let q = e.head.encode_query(&qf, Mode::Eval)?;
                let logits = e.head.decode(&q, &shots)?;
                logits.argmax(1)?;
                Ok(())
            })?;
            (samples, none)
        }
        other => bail!("unknown case {other:?}"),
    })
}

fn main() -> Result<()> {
    mce_core::alloc::retain_freed_memory();
    let args = parse_args()?;
    let dev = Device::Cpu;
    let t = Instant::now();
    let (samples, stages) = run_case(&args, &dev)?;
    let out = serde_json::json!({
        "side": "mce",
        "case": args.case,
        "samples_ms": samples,
        "median_ms": median(samples.clone()),
        "stages_ms": stages,
        // candle's CPU thread count (RAYON_NUM_THREADS / CANDLE_NUM_THREADS, else the cores).
        "threads": candle_core::utils::get_num_threads(),
        "process_ms": ms(t),
        "peak_rss_mib": peak_rss_mib(),
    });
    println!("{out}");
    Ok(())
}
