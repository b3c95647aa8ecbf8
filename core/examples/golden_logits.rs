//! Writes `core/tests/data/golden/head_logits.json`: grid logits of the shipped fold-0 model (float
//! checkpoint and int8 artifact) and of a seeded, untrained paper head, on two bundled MSRC photos
//! with a fixed box mask. The file was made by the code before heads were types (commit fbfe370);
//! `core/tests/head_parity.rs` checks today's code against it.
//!
//! `cargo run --release -p mce-core --example golden_logits -- <out.json>`

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use mce_core::inference::{load_model_file, Segmenter};
use mce_core::model::init::seeded_varbuilder;
use mce_core::model::Mode;
use mce_core::{Features, Mce, MceConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A foreground box over the middle of an `s × s` mask: `(1, 1, s, s)`.
pub fn box_mask(s: usize, dev: &Device) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = (0..s * s)
        .map(|k| {
            let (y, x) = (k / s, k % s);
            f32::from(u8::from(
                (s / 4..3 * s / 4).contains(&y) && (s / 5..4 * s / 5).contains(&x),
            ))
        })
        .collect();
    Tensor::from_vec(v, (1, 1, s, s), dev)
}

pub fn feats(seg: &Segmenter, name: &str) -> anyhow::Result<Features> {
    let img = image::open(root().join("assets/msrc").join(name))?.to_rgb8();
    Ok(seg.features(&seg.prepare(&img)?)?)
}

/// Grid logits for K = 1 (support A) and K = 2 (supports A, B), query C.
pub fn logits(seg: &Segmenter, head: &Mce) -> anyhow::Result<[Vec<f32>; 2]> {
    let s = seg.config().image_size;
    let mask = box_mask(s, &Device::Cpu)?;
    let q = head.encode_query(&feats(seg, "16_10_s.png")?, Mode::Eval)?;
    let shot = |n: &str| -> anyhow::Result<_> {
        Ok(head.encode_support(&feats(seg, n)?, &mask, Mode::Eval)?)
    };
    let (a, b) = (shot("16_12_s.png")?, shot("4_12_s.png")?);
    let run = |shots: &[_]| -> anyhow::Result<Vec<f32>> {
        Ok(head
            .decode_grid(&q, shots)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    Ok([run(std::slice::from_ref(&a))?, run(&[a, b])?])
}

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .expect("usage: golden_logits <out.json>");
    let dev = Device::Cpu;
    let mut golden: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for (key, file) in [
        ("shipped_float", "models/mce_edge_msrc_fold0.safetensors"),
        (
            "shipped_int8",
            "models/mce_edge_msrc_fold0.int8.safetensors",
        ),
    ] {
        let seg = Segmenter::from_model(load_model_file(&root().join(file), &dev)?, &dev);
        let [k1, k2] = logits(&seg, seg.head())?;
        golden.insert(format!("{key}_k1"), k1);
        golden.insert(format!("{key}_k2"), k2);
    }
    // A seeded paper head on the shipped backbone.
    let cfg = MceConfig::edge_lite0();
    let vm = VarMap::new();
    Mce::new(&cfg, seeded_varbuilder(&vm, 7, DType::F32, &dev))?;
    let head = Mce::frozen(&cfg, &vm)?;
    let seg = Segmenter::from_model(
        load_model_file(&root().join("models/mce_edge_msrc_fold0.safetensors"), &dev)?,
        &dev,
    );
    let [k1, k2] = logits(&seg, &head)?;
    golden.insert("paper_seeded7_k1".into(), k1);
    golden.insert("paper_seeded7_k2".into(), k2);
    std::fs::write(&out, serde_json::to_string(&golden)?)?;
    println!("wrote {out}");
    Ok(())
}
