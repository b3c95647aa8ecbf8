//! The quantized artifact the device runs: one safetensors file with
//!
//! * `<layer>.weight` **i8** (per-output-channel symmetric), `<layer>.weight_scale` f32 `(O,)` and
//!   `<layer>.bias` f32 for every conv / linear layer (backbone convs with BatchNorm folded in),
//! * the head's remaining f32 tensors (LayerNorm parameters),
//! * metadata `format = "mce-quantized"`, `format_version`, `config` (the [`MceConfig`] JSON) and
//!   `quantization` (the [`QuantSpec`] JSON: per layer its kind, input scale and execution choice).
//!
//! Loading dequantizes every weight once, builds the usual [`Mce`] head and backbone, and on CPU runs
//! the layers marked [`Exec::QMatMul`] through candle's Q8_0 quantized matmul.

use super::builder::QuantVarBuilder;
use super::layers::QuantPlan;
use super::layers::{cpu_exec, q8_matmul, Exec, LayerHook, LayerInfo, LayerKind};
use super::plan::{LayerRecord, RecordPlan};
use super::scale::{Method, QuantizedWeight};
use super::timing::{ExecTimings, LayerTiming};
use crate::backbone::AnyBackbone;
use crate::checkpoint::{
    build_model, read_metadata, serialize_with_checksum, write_atomic, CheckpointFile,
    BACKBONE_PREFIX,
};
use crate::config::MceConfig;
use crate::error::{Error, Result};
use crate::model::Mce;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use safetensors::{Dtype, View};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// `format` metadata of a quantized artifact.
pub const FORMAT: &str = "mce-quantized";
/// The artifact version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Quantization of one layer, as recorded in the artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    pub kind: LayerKind,
    pub weight_shape: Vec<usize>,
    /// Calibrated per-tensor int8 scale of the layer's input.
    pub input_scale: f32,
    /// How the layer runs on a CPU device.
    pub exec: Exec,
    /// `i8` (per-channel) or `f32` (a layer kept in float, see [`SENSITIVE_LITE0`]).
    pub weight_dtype: String,
    /// What decided `exec` when it was measured ([`super::timing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<LayerTiming>,
}

/// Lite0 layers kept in f32 by default: int8 weights in these two depthwise convs alone (stride 2,
/// 160² and 80² maps, weights amplified by BatchNorm) bring the feature SQNR down to 18–22 dB on the
/// bundled image, every other layer alone stays at ≥ 30 dB. They hold 1 152 of Lite0's weights.
pub const SENSITIVE_LITE0: [&str; 2] = [
    "backbone._blocks.0._depthwise_conv",
    "backbone._blocks.1._depthwise_conv",
];

/// The `quantization` metadata of an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantSpec {
    pub weights: String,
    pub activations: String,
    /// Calibration method of the input scales.
    pub method: Method,
    pub layers: BTreeMap<String, LayerSpec>,
}

fn err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A tensor as raw little-endian bytes (safetensors `View`), for dtypes candle lacks (i8).
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn raw_f32(t: &Tensor) -> Result<Raw> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(Raw {
        dtype: Dtype::F32,
        shape: t.dims().to_vec(),
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    })
}

/// The layers of the model `file` describes, as built (backbone BN folded), in construction order.
pub fn record_layers(file: &CheckpointFile, device: &Device) -> Result<Vec<LayerRecord>> {
    let plan = Arc::new(RecordPlan::new());
    let vb = VarBuilder::from_tensors(file.tensors.clone(), DType::F32, device);
    build_model(&file.config, QuantVarBuilder::new(vb, plan.clone()))
        .map_err(|e| err(&file.path, e.to_string()))?;
    Ok(plan.records())
}

/// Quantize the float checkpoint `file` with the input `scales` (per layer name) into an artifact
/// at `path`. Layers without a scale are left out: allowed for backbone layers the features never
/// run (EfficientNet's classifier head), an error for head layers. Returns the spec written.
/// Layers named in `keep_float` keep f32 weights (mixed precision, recorded per layer). With
/// `timings` ([`super::timing::measure`]) a layer runs as `QMatMul` only where that measured faster;
/// without, by the rule of [`cpu_exec`].
#[allow(clippy::too_many_arguments)]
pub fn write_from_checkpoint(
    path: &Path,
    file: &CheckpointFile,
    scales: &HashMap<String, f32>,
    method: Method,
    keep_float: &[String],
    timings: Option<&ExecTimings>,
    extra: &BTreeMap<String, String>,
    device: &Device,
) -> Result<QuantSpec> {
    let records = record_layers(file, device)?;
    let mut raws: BTreeMap<String, Raw> = BTreeMap::new();
    let mut layers = BTreeMap::new();
    for r in &records {
        let Some(&input_scale) = scales.get(&r.name) else {
            if r.name.starts_with(BACKBONE_PREFIX) {
                continue;
            }
            return Err(err(
                &file.path,
                format!("head layer `{}` has no calibrated input scale", r.name),
            ));
        };
        let float = keep_float.contains(&r.name);
        if float {
            raws.insert(format!("{}.weight", r.name), raw_f32(&r.weight)?);
        } else {
            let q = QuantizedWeight::quantize(&r.weight)?;
            raws.insert(
                format!("{}.weight", r.name),
                Raw {
                    dtype: Dtype::I8,
                    shape: q.shape.clone(),
                    data: q.data.iter().map(|&v| v as u8).collect(),
                },
            );
            raws.insert(
                format!("{}.weight_scale", r.name),
                raw_f32(&Tensor::new(q.scales.as_slice(), &Device::Cpu)?)?,
            );
        }
        if let Some(b) = &r.bias {
            raws.insert(format!("{}.bias", r.name), raw_f32(b)?);
        }
        let timing = timings.and_then(|t| t.get(&r.name)).copied();
        layers.insert(
            r.name.clone(),
            LayerSpec {
                kind: r.kind,
                weight_shape: r.weight.dims().to_vec(),
                input_scale,
                exec: match (float, timing) {
                    (true, _) => Exec::Dequantized,
                    (false, Some(t)) => t.choice(),
                    (false, None) => cpu_exec(r.kind, r.in_features()),
                },
                weight_dtype: if float { "f32" } else { "i8" }.into(),
                timing,
            },
        );
    }
    // The head's other tensors (LayerNorm) stay f32.
    for (name, t) in &file.tensors {
        let layer = name
            .rsplit_once('.')
            .is_some_and(|(l, _)| layers.contains_key(l));
        if !name.starts_with(BACKBONE_PREFIX) && !layer {
            raws.insert(name.clone(), raw_f32(t)?);
        }
    }
    let spec = QuantSpec {
        weights: "int8 symmetric per output channel (dim 0)".into(),
        activations: "int8 symmetric per tensor at each layer input".into(),
        method,
        layers,
    };
    let mut meta: HashMap<String, String> = extra.clone().into_iter().collect();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("format_version".into(), FORMAT_VERSION.to_string());
    meta.insert(
        "config".into(),
        serde_json::to_string(&file.config).expect("serialises"),
    );
    meta.insert(
        "quantization".into(),
        serde_json::to_string(&spec).expect("serialises"),
    );
    let raws: Vec<(&str, _)> = raws.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let bytes = serialize_with_checksum(path, &raws, meta)?;
    write_atomic(path, &bytes)?;
    Ok(spec)
}

/// The `format` metadata of a safetensors file, reading only its header.
pub fn file_format(path: &Path) -> Result<Option<String>> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 {
        return Err(err(path, "not a safetensors file (header length)"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| err(path, format!("not a safetensors file: {e}")))?;
    Ok(json["__metadata__"]["format"].as_str().map(str::to_string))
}

/// Whether `path` is a quantized artifact (by its `format` metadata).
pub fn is_quantized(path: &Path) -> Result<bool> {
    Ok(file_format(path)?.as_deref() == Some(FORMAT))
}

/// How a loaded artifact runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Run [`Exec::QMatMul`] layers through the quantized matmul (CPU only; elsewhere f32).
    pub quantized_matmul: bool,
    /// Fake-quantize every layer input with its calibrated scale (simulates a static-int8 runtime).
    pub simulate_activations: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            quantized_matmul: true,
            simulate_activations: false,
        }
    }
}

/// A loaded artifact.
pub struct QuantizedModel {
    pub config: MceConfig,
    pub spec: QuantSpec,
    pub head: Mce,
    pub backbone: AnyBackbone,
    /// Metadata other than format, version, config and quantization.
    pub extra: BTreeMap<String, String>,
}

/// Gives each layer the hook its spec asks for; unknown layers are an error.
struct LoadPlan {
    spec: QuantSpec,
    opts: LoadOptions,
}

impl QuantPlan for LoadPlan {
    fn hook(&self, layer: &LayerInfo) -> candle_core::Result<Option<LayerHook>> {
        let Some(s) = self.spec.layers.get(&layer.name) else {
            candle_core::bail!(
                "layer `{}` is not in the artifact's quantization table",
                layer.name
            )
        };
        let matmul = (self.opts.quantized_matmul && s.exec == Exec::QMatMul)
            .then(|| q8_matmul(layer.weight))
            .transpose()?;
        Ok(Some(LayerHook {
            name: layer.name.clone(),
            input_scale: self.opts.simulate_activations.then_some(s.input_scale),
            matmul,
            ..Default::default()
        }))
    }
}

/// Load an artifact written by [`write_from_checkpoint`].
pub fn load(path: &Path, device: &Device, opts: LoadOptions) -> Result<QuantizedModel> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| err(path, format!("corrupt safetensors file: {e:?}")))?;
    let mut info = read_metadata(
        path,
        &bytes,
        FORMAT,
        FORMAT_VERSION,
        "a quantized mce artifact",
    )?;
    let config: MceConfig = serde_json::from_str(&info.remove("config").unwrap_or_default())
        .map_err(|e| err(path, format!("invalid config metadata: {e}")))?;
    config.validate().map_err(|e| err(path, e.to_string()))?;
    let spec: QuantSpec = serde_json::from_str(&info.remove("quantization").unwrap_or_default())
        .map_err(|e| err(path, format!("invalid quantization metadata: {e}")))?;
    let tensors = dequantized_tensors(path, &st, device)?;

    let plan = Arc::new(LoadPlan {
        spec: spec.clone(),
        opts: LoadOptions {
            quantized_matmul: opts.quantized_matmul && device.is_cpu(),
            ..opts
        },
    });
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let (head, backbone) = build_model(&config, QuantVarBuilder::new(vb, plan))
        .map_err(|e| err(path, e.to_string()))?;
    Ok(QuantizedModel {
        config,
        spec,
        head,
        backbone,
        extra: info,
    })
}

/// All tensors as f32: i8 weights times their `weight_scale`, f32 tensors as they are.
fn dequantized_tensors(
    path: &Path,
    st: &safetensors::SafeTensors,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if name.ends_with(".weight_scale") {
            continue;
        }
        let t = match view.dtype() {
            Dtype::F32 => {
                let v: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Tensor::from_vec(v, view.shape(), device)?
            }
            Dtype::I8 => {
                let scale_name = format!("{name}_scale");
                let scales = st
                    .tensor(&scale_name)
                    .map_err(|_| err(path, format!("int8 tensor `{name}` lacks `{scale_name}`")))?;
                let scales: Vec<f32> = scales
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let shape = view.shape().to_vec();
                if shape.first() != Some(&scales.len()) {
                    return Err(err(
                        path,
                        format!(
                            "`{scale_name}` has {} scales for shape {shape:?}",
                            scales.len()
                        ),
                    ));
                }
                let q = QuantizedWeight {
                    shape,
                    data: view.data().iter().map(|&b| b as i8).collect(),
                    scales,
                };
                q.dequantize(device)?
            }
            other => return Err(err(path, format!("tensor `{name}` has dtype {other:?}"))),
        };
        out.insert(name, t);
    }
    Ok(out)
}
