//! Checkpoints: one safetensors file holding the head's weights, the frozen backbone's weights under
//! `backbone.`, and in its metadata the format name, a format version and the [`MceConfig`] as JSON.
//!
//! Loading validates before it trusts: a truncated file, a file of another format version, a file
//! whose tensor bytes do not match the SHA-256 in its metadata (`tensors_sha256`, bit rot), or a
//! file whose tensors do not match the model its config describes fails with an error that names
//! the file and the first offending tensor. Files written before the checksum load with a warning.
//! Saving is atomic (temporary file, fsync, rename).

use crate::backbone::AnyBackbone;
use crate::config::MceConfig;
use crate::error::{Error, Result};
use crate::model::Mce;
use crate::quant::QuantVarBuilder;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `format` metadata value of every mce checkpoint.
pub const FORMAT: &str = "mce-checkpoint";
/// The version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Prefix of the backbone's tensors inside a checkpoint.
pub const BACKBONE_PREFIX: &str = "backbone.";
/// Metadata key of the SHA-256 (hex) over the file's tensor data: every byte after the header.
pub const CHECKSUM_KEY: &str = "tensors_sha256";

/// A checkpoint read from disk: validated metadata and all tensors.
pub struct CheckpointFile {
    pub path: PathBuf,
    pub config: MceConfig,
    /// Free-form metadata other than format, version and config (e.g. training step).
    pub extra: BTreeMap<String, String>,
    pub tensors: HashMap<String, Tensor>,
}

fn ckpt_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// One tensor entry of a safetensors header.
#[derive(serde::Deserialize)]
struct HeaderEntry {
    data_offsets: (usize, usize),
}

/// Check that the header is complete and that every tensor's bytes are present; name the first
/// tensor (in file order) that lies beyond the end of a truncated file.
fn check_complete(path: &Path, bytes: &[u8]) -> Result<()> {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(|| ckpt_err(path, format!("truncated: only {} bytes", bytes.len())))?;
    let header = bytes.get(8..8usize.saturating_add(n)).ok_or_else(|| {
        ckpt_err(
            path,
            format!(
                "truncated header: needs {} bytes, file has {}",
                n + 8,
                bytes.len()
            ),
        )
    })?;
    let entries: BTreeMap<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| ckpt_err(path, format!("corrupt safetensors header: {e}")))?;
    let mut spans: Vec<(usize, String)> = entries
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let e: HeaderEntry = serde_json::from_value(v)
                .map_err(|e| ckpt_err(path, format!("tensor {k}: bad header entry: {e}")))?;
            Ok((e.data_offsets.1, k))
        })
        .collect::<Result<_>>()?;
    spans.sort();
    let data_len = bytes.len() - 8 - n;
    if let Some((end, name)) = spans.iter().find(|(end, _)| *end > data_len) {
        return Err(ckpt_err(
            path,
            format!("truncated: tensor `{name}` needs {end} data bytes, the file holds {data_len}"),
        ));
    }
    Ok(())
}

/// The tensor data of a safetensors file: everything after the 8-byte length and the header.
/// `bytes` must have passed a safetensors header parse.
fn data_section(bytes: &[u8]) -> &[u8] {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    &bytes[8 + n..]
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serialise `tensors` with `meta` plus [`CHECKSUM_KEY`]. The data section does not depend on the
/// header, so it is hashed from a first serialisation and the file made with the digest added.
pub(crate) fn serialize_with_checksum<V: safetensors::View + Clone>(
    path: &Path,
    tensors: &[(&str, V)],
    mut meta: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let ser = |meta: HashMap<String, String>| {
        safetensors::serialize(tensors.iter().cloned(), Some(meta))
            .map_err(|e| ckpt_err(path, format!("cannot serialise: {e:?}")))
    };
    let digest = sha256_hex(data_section(&ser(meta.clone())?));
    meta.insert(CHECKSUM_KEY.into(), digest);
    ser(meta)
}

/// Check the tensor data against [`CHECKSUM_KEY`] (removed from `info`); a file without one
/// (written before it existed) is accepted with a warning.
fn verify_checksum(path: &Path, bytes: &[u8], info: &mut BTreeMap<String, String>) -> Result<()> {
    let Some(stored) = info.remove(CHECKSUM_KEY) else {
        tracing::warn!(
            "{}: no tensor checksum (written by an older mce); damaged weights cannot be detected. \
             Save it again to add one.",
            path.display()
        );
        return Ok(());
    };
    let computed = sha256_hex(data_section(bytes));
    if computed != stored {
        return Err(ckpt_err(
            path,
            format!(
                "the tensor data does not match its checksum (stored {stored}, computed \
                 {computed}): the file is damaged"
            ),
        ));
    }
    Ok(())
}

/// The metadata of one of our safetensors files, after checking that its `format` is `format`
/// and its `format_version` is `version`, and its tensor data against [`CHECKSUM_KEY`] (all three
/// removed from the map). `what` names the expected
/// kind of file in the error, e.g. "an mce checkpoint".
pub(crate) fn read_metadata(
    path: &Path,
    bytes: &[u8],
    format: &str,
    version: u32,
    what: &str,
) -> Result<BTreeMap<String, String>> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| ckpt_err(path, format!("corrupt safetensors file: {e:?}")))?;
    let mut info: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let found = info.remove("format");
    if found.as_deref() != Some(format) {
        return Err(ckpt_err(
            path,
            format!("not {what} (format metadata {found:?}, expected {format:?})"),
        ));
    }
    let found = info.remove("format_version").unwrap_or_default();
    if found != version.to_string() {
        return Err(ckpt_err(
            path,
            format!("format version {found:?}, this build reads version {version}"),
        ));
    }
    verify_checksum(path, bytes, &mut info)?;
    Ok(info)
}

/// Read and validate a checkpoint file (format, version, config, completeness).
pub fn read(path: &Path, device: &Device) -> Result<CheckpointFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    check_complete(path, &bytes)?;
    let mut info = read_metadata(path, &bytes, FORMAT, FORMAT_VERSION, "an mce checkpoint")?;
    let config_json = info
        .remove("config")
        .ok_or_else(|| ckpt_err(path, "no config in metadata"))?;
    let config: MceConfig = serde_json::from_str(&config_json)
        .map_err(|e| ckpt_err(path, format!("invalid config metadata: {e}")))?;
    config
        .validate()
        .map_err(|e| ckpt_err(path, e.to_string()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| ckpt_err(path, format!("cannot load tensors: {e}")))?;
    Ok(CheckpointFile {
        path: path.to_path_buf(),
        config,
        extra: info,
        tensors,
    })
}

/// Write `tensors` with the format metadata, `config` and `extra`, atomically.
pub fn write(
    path: &Path,
    config: &MceConfig,
    tensors: &BTreeMap<String, Tensor>,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let mut meta: HashMap<String, String> = extra.clone().into_iter().collect();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("format_version".into(), FORMAT_VERSION.to_string());
    meta.insert(
        "config".into(),
        serde_json::to_string(config).expect("config serialises"),
    );
    let tensors: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let bytes = serialize_with_checksum(path, &tensors, meta)?;
    write_atomic(path, &bytes)
}

/// Write a file so that a crash leaves either the old or the new content: temp file, fsync, rename,
/// fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| Error::io(path, e))
}

/// Copy the checkpoint's head tensors into `varmap` (whose variables a freshly built [`Mce`] created),
/// checking names and shapes; the first mismatch (in name order) is reported.
pub fn load_head_into(file: &CheckpointFile, varmap: &VarMap) -> Result<()> {
    let vars = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let t = file.tensors.get(name).ok_or_else(|| {
            ckpt_err(
                &file.path,
                format!("missing tensor `{name}` required by its config"),
            )
        })?;
        if t.dims() != var.dims() {
            return Err(ckpt_err(
                &file.path,
                format!(
                    "tensor `{name}` has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    if let Some(name) = head_tensors_outside(file, &vars).first() {
        return Err(ckpt_err(
            &file.path,
            format!("unexpected tensor `{name}`: not part of the model its config describes"),
        ));
    }
    Ok(())
}

/// The checkpoint's head tensors (all but `backbone.`) that are not among `vars`, in name order.
pub fn head_tensors_outside<'a>(
    file: &'a CheckpointFile,
    vars: &HashMap<String, Var>,
) -> Vec<&'a String> {
    let mut outside: Vec<&String> = file
        .tensors
        .keys()
        .filter(|k| !k.starts_with(BACKBONE_PREFIX) && !vars.contains_key(*k))
        .collect();
    outside.sort();
    outside
}

/// Build the frozen backbone from the checkpoint's `backbone.` tensors.
pub fn backbone_from(file: &CheckpointFile, device: &Device) -> Result<AnyBackbone> {
    let vb = VarBuilder::from_tensors(file.tensors.clone(), DType::F32, device);
    AnyBackbone::new(file.config.backbone, vb.pp("backbone"))
        .map_err(|e| ckpt_err(&file.path, format!("backbone: {e}")))
}

/// Build the head (tensors at the root) and the backbone (under `backbone.`) of the model `config`
/// describes from one set of tensors, with `vb`'s quantization plan if it has one.
pub fn build_model<'a>(
    config: &MceConfig,
    vb: impl Into<QuantVarBuilder<'a>>,
) -> candle_core::Result<(Mce, AnyBackbone)> {
    let vb = vb.into();
    let head = Mce::new(config, vb.clone())?;
    let backbone = AnyBackbone::new(config.backbone, vb.pp("backbone"))?;
    Ok((head, backbone))
}

/// A model loaded from a checkpoint: config, an inference head (no autograd), the same weights as
/// trainable variables in `varmap` (for fine-tuning), and the backbone.
pub struct LoadedModel {
    pub config: MceConfig,
    pub varmap: VarMap,
    pub head: Mce,
    pub backbone: AnyBackbone,
    pub extra: BTreeMap<String, String>,
}

/// Load a complete model from a checkpoint file.
pub fn load(path: &Path, device: &Device) -> Result<LoadedModel> {
    let file = read(path, device)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    Mce::new(&file.config, vb).map_err(|e| ckpt_err(path, e.to_string()))?;
    load_head_into(&file, &varmap)?;
    let head = Mce::frozen(&file.config, &varmap).map_err(|e| ckpt_err(path, e.to_string()))?;
    let backbone = backbone_from(&file, device)?;
    Ok(LoadedModel {
        config: file.config.clone(),
        varmap,
        head,
        backbone,
        extra: file.extra,
    })
}

/// Save the head's variables and the backbone's tensors (prefixed `backbone.`) as a checkpoint.
pub fn save(
    path: &Path,
    config: &MceConfig,
    head: &VarMap,
    backbone_tensors: &HashMap<String, Tensor>,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let mut all: BTreeMap<String, Tensor> = head
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    for (k, t) in backbone_tensors {
        all.insert(format!("{BACKBONE_PREFIX}{k}"), t.clone());
    }
    write(path, config, &all, extra)
}
