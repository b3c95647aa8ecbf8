//! The feature cache: one safetensors file per exemplar and backbone identity,
//! `features/<identity>/<class>/<id>.safetensors`, holding the tensors of
//! [`Exemplar::to_tensors`] plus a `meta` tensor.
//!
//! `meta` is a u8 tensor with a JSON object ([`CacheMeta`]): format name and version, the backbone
//! identity, class, exemplar id, the SHA-256 of the stored image and mask the features were computed
//! from, and a SHA-256 over the other tensors (names, shapes, f32 values). candle's safetensors
//! writer has no header metadata, hence the tensor. A cache file is thus self-verifying: truncation,
//! bit flips, a file of another backbone or of another exemplar are all detected on load, and the
//! caller recomputes.

use super::error::RegistryError;
use super::store;
use candle_core::{DType, Device, Tensor};
use mce_core::inference::Exemplar;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// `format` of every cache file.
pub const FORMAT: &str = "mce-exemplar-features";
/// The cache format this build writes and reads (others are recomputed).
pub const FORMAT_VERSION: u32 = 1;
const META: &str = "meta";

/// What a cache file says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMeta {
    pub format: String,
    pub format_version: u32,
    pub identity: String,
    pub class: String,
    pub id: u64,
    pub image_sha256: String,
    pub mask_sha256: String,
    /// Set by [`write`](fn@write); ignored when comparing expectations.
    #[serde(default)]
    pub payload_sha256: String,
}

impl CacheMeta {
    pub fn new(identity: &str, class: &str, id: u64, image_sha: &str, mask_sha: &str) -> Self {
        Self {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            identity: identity.into(),
            class: class.into(),
            id,
            image_sha256: image_sha.into(),
            mask_sha256: mask_sha.into(),
            payload_sha256: String::new(),
        }
    }
}

/// The result of reading a cache file.
pub enum CacheRead {
    Missing,
    Hit(Exemplar),
    /// Unreadable, corrupt or stale; the reason says which.
    Invalid(String),
}

/// SHA-256 over tensor names, shapes and f32 values, in name order.
fn payload_sha(tensors: &BTreeMap<&String, &Tensor>) -> candle_core::Result<String> {
    let mut h = Sha256::new();
    for (name, t) in tensors {
        h.update(name.as_bytes());
        for d in t.dims() {
            h.update((*d as u64).to_le_bytes());
        }
        for v in t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
            h.update(v.to_le_bytes());
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Write the cache file of one exemplar atomically.
pub fn write(path: &Path, exemplar: &Exemplar, meta: &CacheMeta) -> Result<(), RegistryError> {
    let cache_err = |e: candle_core::Error| RegistryError::corrupt(path, e.to_string());
    let tensors = exemplar.to_tensors();
    let mut meta = meta.clone();
    meta.payload_sha256 = payload_sha(&tensors.iter().collect()).map_err(cache_err)?;
    let json = serde_json::to_vec(&meta).expect("cache metadata serialises");
    let mut all: HashMap<String, Tensor> = tensors;
    let len = json.len();
    let meta_tensor = Tensor::from_vec(json, len, &Device::Cpu).map_err(cache_err)?;
    all.insert(META.into(), meta_tensor);
    if let Some(dir) = path.parent() {
        store::ensure_dir(dir)?;
    }
    store::write_atomic_with(path, |tmp| {
        candle_core::safetensors::save(&all, tmp).map_err(|e| e.to_string())
    })
}

/// Read and verify a cache file against what it must be.
pub fn read(path: &Path, expect: &CacheMeta, device: &Device) -> CacheRead {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return CacheRead::Missing,
        Err(e) => return CacheRead::Invalid(format!("cannot read: {e}")),
    };
    match decode(&bytes, expect, device) {
        Ok(ex) => CacheRead::Hit(ex),
        Err(reason) => CacheRead::Invalid(reason),
    }
}

fn decode(bytes: &[u8], expect: &CacheMeta, device: &Device) -> Result<Exemplar, String> {
    let mut tensors =
        candle_core::safetensors::load_buffer(bytes, device).map_err(|e| e.to_string())?;
    let meta = tensors
        .remove(META)
        .ok_or("no `meta` tensor")?
        .to_vec1::<u8>()
        .map_err(|e| format!("bad `meta` tensor: {e}"))?;
    let meta: CacheMeta =
        serde_json::from_slice(&meta).map_err(|e| format!("bad `meta` JSON: {e}"))?;
    let stored_payload = meta.payload_sha256.clone();
    let comparable = CacheMeta {
        payload_sha256: String::new(),
        ..meta
    };
    if &comparable != expect {
        return Err(format!(
            "stale: written for {comparable:?}, expected {expect:?}"
        ));
    }
    let actual = payload_sha(&tensors.iter().collect()).map_err(|e| e.to_string())?;
    if actual != stored_payload {
        return Err(format!(
            "checksum mismatch: tensors hash to {actual}, the file recorded {stored_payload}"
        ));
    }
    Exemplar::from_tensors(tensors).map_err(|e| e.to_string())
}
