//! Checkpoints round-trip, and every broken file fails with an error naming the file and the problem.

use candle_core::{DType, Device, Result as CResult, Tensor};
use candle_nn::{VarBuilder, VarMap};
use mce_core::checkpoint::{self, FORMAT_VERSION};
use mce_core::{Mce, MceConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mce-ckpt-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn small() -> MceConfig {
    MceConfig {
        image_size: 64,
        ..MceConfig::edge_lite0()
    }
}

fn backbone_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(mce_core::inference::lite0_weights_path(), &Device::Cpu).unwrap()
}

fn save_fresh(cfg: &MceConfig, name: &str) -> (PathBuf, VarMap) {
    let vm = VarMap::new();
    Mce::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let path = tmp(name);
    let extra = BTreeMap::from([("step".to_string(), "7".to_string())]);
    checkpoint::save(&path, cfg, &vm, &backbone_tensors(), &extra).unwrap();
    (path, vm)
}

fn err_of(path: &std::path::Path) -> String {
    match checkpoint::load(path, &Device::Cpu) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn round_trip_keeps_config_weights_and_metadata() -> CResult<()> {
    let cfg = small();
    let (path, vm) = save_fresh(&cfg, "ok.safetensors");
    let loaded = checkpoint::load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.config, cfg);
    assert_eq!(loaded.extra.get("step").map(String::as_str), Some("7"));
    let a = vm.data().lock().unwrap();
    let b = loaded.varmap.data().lock().unwrap();
    assert_eq!(a.len(), b.len());
    for (k, v) in a.iter() {
        let d = (v.as_tensor() - b[k].as_tensor())?
            .abs()?
            .flatten_all()?
            .max(0)?;
        assert_eq!(d.to_scalar::<f32>()?, 0.0, "{k} differs");
    }
    Ok(())
}

#[test]
fn truncated_file_names_the_file_and_a_tensor() {
    let (path, _) = save_fresh(&small(), "trunc.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_of(&path);
    assert!(
        e.contains("trunc.safetensors") && e.contains("truncated") && e.contains("tensor `"),
        "{e}"
    );
    std::fs::write(&path, &bytes[..20]).unwrap();
    let e = err_of(&path);
    assert!(
        e.contains("trunc.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn wrong_version_and_foreign_files_are_refused() {
    let cfg = small();
    let t = BTreeMap::from([(
        "x".to_string(),
        Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
    )]);
    // A plain safetensors file without our metadata.
    let foreign = tmp("foreign.safetensors");
    candle_core::safetensors::save(&t.clone().into_iter().collect(), &foreign).unwrap();
    let e = err_of(&foreign);
    assert!(
        e.contains("foreign.safetensors") && e.contains("not an mce checkpoint"),
        "{e}"
    );
    // Our format, another version.
    let path = tmp("v2.safetensors");
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), checkpoint::FORMAT.into());
    meta.insert("format_version".into(), (FORMAT_VERSION + 1).to_string());
    meta.insert("config".into(), serde_json::to_string(&cfg).unwrap());
    std::fs::write(&path, safetensors::serialize(t.iter(), Some(meta)).unwrap()).unwrap();
    let e = err_of(&path);
    assert!(
        e.contains("v2.safetensors") && e.contains("format version"),
        "{e}"
    );
    // Garbage.
    let junk = tmp("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!").unwrap();
    assert!(err_of(&junk).contains("junk.safetensors"));
    // Missing file.
    assert!(err_of(&tmp("absent.safetensors")).contains("absent.safetensors"));
}

#[test]
fn mismatched_tensors_are_named() {
    // Saved with d_model 128, metadata claims 64: the first shape mismatch is reported.
    let cfg = small();
    let (path, vm) = save_fresh(&cfg, "shape.safetensors");
    let mut other = cfg.clone();
    other.paper_mut().unwrap().d_model = 64;
    let tensors: BTreeMap<String, Tensor> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    checkpoint::write(&path, &other, &tensors, &BTreeMap::new()).unwrap();
    let e = err_of(&path);
    assert!(
        e.contains("shape.safetensors") && e.contains("has shape") && e.contains("tensor `cross."),
        "{e}"
    );

    // A tensor missing: named.
    let mut fewer = tensors.clone();
    fewer.remove("decoder.cls.weight");
    checkpoint::write(&path, &cfg, &fewer, &BTreeMap::new()).unwrap();
    let e = err_of(&path);
    assert!(e.contains("missing tensor `decoder.cls.weight`"), "{e}");

    // Head complete but no backbone: named as a backbone problem.
    checkpoint::write(&path, &cfg, &tensors, &BTreeMap::new()).unwrap();
    let e = err_of(&path);
    assert!(
        e.contains("shape.safetensors") && e.contains("backbone"),
        "{e}"
    );
}

/// A structurally valid checkpoint with a NaN in one bias loads (the values are not checked at
/// load), but segmenting with it is an error, not an empty mask.
#[test]
fn nan_weights_make_segmenting_an_error() {
    use mce_core::inference::Segmenter;
    use mce_core::preprocess::Mask;
    let cfg = small();
    let vm = VarMap::new();
    Mce::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let frame = image::RgbImage::from_fn(48, 40, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 6) as u8, 80])
    });
    let mask = Mask {
        width: 48,
        height: 40,
        data: (0..48 * 40).map(|i| u8::from(i % 48 < 20)).collect(),
    };
    let segment = |vm: &VarMap, name: &str| {
        let path = tmp(name);
        checkpoint::save(&path, &cfg, vm, &backbone_tensors(), &BTreeMap::new()).unwrap();
        let seg = Segmenter::from_checkpoint(&path, &Device::Cpu).unwrap();
        let ex = seg.exemplar(&frame, &mask, &path).unwrap();
        let class = seg.encode_class(&[ex]).unwrap();
        seg.segment(&frame, &[&class]).map(|maps| maps.len())
    };
    assert_eq!(segment(&vm, "finite.safetensors").unwrap(), 1);
    let bias = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with("decoder.cls.bias"))
        .map(|(_, v)| v.clone())
        .expect("classifier bias");
    bias.set(&Tensor::new(&[f32::NAN, 0.0], &Device::Cpu).unwrap())
        .unwrap();
    let e = segment(&vm, "nan.safetensors").unwrap_err().to_string();
    assert!(e.contains("non-finite logits"), "{e}");
}

/// Offset of the tensor data in a safetensors file.
fn data_start(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

#[test]
fn a_flipped_bit_in_the_tensors_is_refused() {
    let (path, _) = save_fresh(&small(), "rot.safetensors");
    checkpoint::load(&path, &Device::Cpu).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let at = data_start(&bytes) + (bytes.len() - data_start(&bytes)) / 3;
    bytes[at] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let e = err_of(&path);
    assert!(e.contains("rot.safetensors"), "{e}");
    assert!(e.contains("does not match its checksum"), "{e}");
}

#[test]
fn files_from_before_the_checksum_still_load() {
    // The same tensors and metadata, written without the checksum as older builds did.
    let (path, _) = save_fresh(&small(), "old.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    assert!(meta.remove(checkpoint::CHECKSUM_KEY).is_some());
    let old = safetensors::serialize(st.tensors(), Some(meta)).unwrap();
    let old_path = tmp("old-format.safetensors");
    std::fs::write(&old_path, old).unwrap();
    let loaded = checkpoint::load(&old_path, &Device::Cpu).unwrap();
    assert!(!loaded.extra.contains_key(checkpoint::CHECKSUM_KEY));
}
