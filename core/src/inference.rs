//! Inference for the device: encode each class's support exemplars once, then segment any number of
//! frames. Per frame the backbone and the query-side encoding run once; only [`Mce::decode`] runs per
//! class.
//!
//! ```text
//! exemplar image + mask ─▶ Segmenter::exemplar ─▶ Exemplar (backbone features, cacheable)
//!                                      Segmenter::encode_class ─▶ ClassEncoding (support encodings)
//! frame ─▶ Segmenter::segment(frame, classes) ─▶ per class: foreground probability at frame size
//! ```

use crate::backbone::{AnyBackbone, Backbone, Features};
use crate::checkpoint;
use crate::config::MceConfig;
use crate::error::{Error, Result};
use crate::model::{Mce, Mode, SupportEncoding};
use crate::preprocess::{self, Mask, Prepared, Resize};
use crate::quant::QuantSpec;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use image::RgbImage;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where bundled model files live: `$MCE_MODELS_DIR`, else `models/` of the source tree this binary
/// was built from.
pub fn models_dir() -> PathBuf {
    std::env::var_os("MCE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

/// The bundled ImageNet EfficientNet-Lite0 weights.
pub fn lite0_weights_path() -> PathBuf {
    models_dir().join("efficientnet_lite0.safetensors")
}

/// One support exemplar after the backbone: its three feature levels and its model-space mask.
#[derive(Debug, Clone)]
pub struct Exemplar {
    pub features: Features,
    /// `(1, 1, S, S)` f32, 1 = foreground (ignore and padding count as background).
    pub mask: Tensor,
}

impl Exemplar {
    /// Tensors for a cache file: `level2`, `level3`, `level4`, `mask`.
    pub fn to_tensors(&self) -> HashMap<String, Tensor> {
        let f = &self.features;
        HashMap::from([
            ("level2".to_string(), f.level2.clone()),
            ("level3".to_string(), f.level3.clone()),
            ("level4".to_string(), f.level4.clone()),
            ("mask".to_string(), self.mask.clone()),
        ])
    }

    /// The inverse of [`Exemplar::to_tensors`].
    pub fn from_tensors(mut t: HashMap<String, Tensor>) -> Result<Self> {
        let mut take = |k: &str| {
            t.remove(k)
                .ok_or_else(|| Error::Input(format!("exemplar cache lacks tensor `{k}`")))
        };
        Ok(Self {
            features: Features {
                level2: take("level2")?,
                level3: take("level3")?,
                level4: take("level4")?,
            },
            mask: take("mask")?,
        })
    }
}

/// The support encodings of one class (one per exemplar). Each keeps what depends on its exemplar
/// alone, the cross-encoding's support-branch weights included: on the edge preset about
/// `4 × 1,600 × n_fg × 4` bytes at level 2 for `n_fg` foreground positions of 1,600 (10 MiB for an
/// object covering a quarter of the image; at most 32 MiB per exemplar and level, above which
/// each frame recomputes them).
pub struct ClassEncoding {
    pub shots: Vec<SupportEncoding>,
}

/// A pixel is foreground where its foreground probability exceeds this: the one threshold of the
/// masks, the device's class combination and the overlays.
pub const FOREGROUND_THRESHOLD: f32 = 0.5;

/// One class's result on one frame, at the frame's own resolution.
#[derive(Debug, Clone)]
pub struct ClassMap {
    pub width: usize,
    pub height: usize,
    /// Foreground probability per pixel, row-major.
    pub probability: Vec<f32>,
}

impl ClassMap {
    /// Binary mask (1 where the foreground probability exceeds [`FOREGROUND_THRESHOLD`]).
    pub fn mask(&self) -> Vec<u8> {
        self.probability
            .iter()
            .map(|&p| u8::from(p > FOREGROUND_THRESHOLD))
            .collect()
    }
}

/// A backbone and an MCE head ready to segment frames.
pub struct Segmenter {
    config: MceConfig,
    backbone: AnyBackbone,
    head: Mce,
    device: Device,
    resize: Resize,
    /// False when the head has random weights (`--init`): callers must say so loudly.
    pub trained: bool,
    /// [`Segmenter::backbone_identity`], computed on first use.
    identity: std::sync::OnceLock<String>,
}

/// A trained model as every command loads it from a file.
pub struct ModelFile {
    pub config: MceConfig,
    pub head: Mce,
    pub backbone: AnyBackbone,
    /// The quantization of an int8 artifact; `None` for a float checkpoint.
    pub quant: Option<QuantSpec>,
}

/// Load a float checkpoint or, detected by its `format` metadata, an int8 artifact of `mce-calib`
/// (run as its per-layer execution choice says).
pub fn load_model_file(path: &Path, device: &Device) -> Result<ModelFile> {
    if crate::quant::is_quantized(path)? {
        let m = crate::quant::artifact::load(path, device, Default::default())?;
        return Ok(ModelFile {
            config: m.config,
            head: m.head,
            backbone: m.backbone,
            quant: Some(m.spec),
        });
    }
    let m = checkpoint::load(path, device)?;
    Ok(ModelFile {
        config: m.config,
        head: m.head,
        backbone: m.backbone,
        quant: None,
    })
}

impl Segmenter {
    /// Load a trained model from a checkpoint.
    pub fn from_checkpoint(path: &Path, device: &Device) -> Result<Self> {
        let m = checkpoint::load(path, device)?;
        Ok(Self::new(m.config, m.backbone, m.head, device, true))
    }

    /// A segmenter of a [`ModelFile`].
    pub fn from_model(m: ModelFile, device: &Device) -> Self {
        Self::new(m.config, m.backbone, m.head, device, true)
    }

    /// Pretrained backbone with an untrained (randomly initialised) head, for trying the pipeline
    /// without a trained checkpoint. Its masks are meaningless.
    pub fn untrained(config: &MceConfig, backbone_weights: &Path, device: &Device) -> Result<Self> {
        let backbone = load_backbone(config, backbone_weights, device)?;
        let varmap = VarMap::new();
        Mce::new(config, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        let head = Mce::frozen(config, &varmap)?;
        Ok(Self::new(config.clone(), backbone, head, device, false))
    }

    pub fn new(
        config: MceConfig,
        backbone: AnyBackbone,
        head: Mce,
        device: &Device,
        trained: bool,
    ) -> Self {
        let resize = config.input_resize();
        Self {
            config,
            backbone,
            head,
            device: device.clone(),
            resize,
            trained,
            identity: std::sync::OnceLock::new(),
        }
    }

    /// A short hex id (16 digits) of everything that decides an exemplar's backbone features: the
    /// backbone kind, the input size, the resize policy and the backbone's weights. The weights are
    /// fingerprinted by the per-channel means of all three feature levels of a fixed synthetic probe
    /// (a 64×64 colour gradient), each rounded to 4 significant digits, so the id is stable run to run.
    /// Computed once (one backbone pass), then cached. Feature caches (the device's exemplar registry)
    /// are keyed by it.
    ///
    /// The hash is std's `DefaultHasher` (fixed keys): a Rust release that changes it, or hardware
    /// whose float rounding differs in the 4th digit, only yields a new id, i.e. one recomputation of
    /// the cached features, never features of another backbone.
    pub fn backbone_identity(&self) -> &str {
        self.identity.get_or_init(|| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            format!(
                "{:?}|{}|{:?}",
                self.config.backbone, self.config.image_size, self.resize
            )
            .hash(&mut h);
            let probe = RgbImage::from_fn(64, 64, |x, y| {
                image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8])
            });
            let means = self.prepare(&probe).and_then(|p| {
                let f = self.features(&p)?;
                [&f.level2, &f.level3, &f.level4]
                    .iter()
                    .map(|t| Ok(t.mean((2, 3))?.flatten_all()?.to_vec1::<f32>()?))
                    .collect::<Result<Vec<Vec<f32>>>>()
            });
            match means {
                Ok(levels) => levels
                    .iter()
                    .flatten()
                    .for_each(|v| format!("{v:.3e}").hash(&mut h)),
                Err(e) => {
                    tracing::warn!("backbone identity: the probe image failed ({e}); the id covers the config only");
                    format!("probe failed: {e}").hash(&mut h);
                }
            }
            format!("{:016x}", h.finish())
        })
    }

    pub fn config(&self) -> &MceConfig {
        &self.config
    }
    pub fn backbone(&self) -> &AnyBackbone {
        &self.backbone
    }
    pub fn head(&self) -> &Mce {
        &self.head
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Normalised model input for an image.
    pub fn prepare(&self, image: &RgbImage) -> Result<Prepared> {
        preprocess::prepare_image(image, self.resize, self.config.backbone, &self.device)
    }

    /// Run the backbone on one prepared image.
    pub fn features(&self, prepared: &Prepared) -> Result<Features> {
        Ok(self.backbone.features(&prepared.tensor.unsqueeze(0)?)?)
    }

    /// Backbone features of one exemplar. The mask must have the image's size and some foreground.
    pub fn exemplar(&self, image: &RgbImage, mask: &Mask, source: &Path) -> Result<Exemplar> {
        if (mask.width, mask.height) != (image.width() as usize, image.height() as usize) {
            return Err(Error::Mask {
                path: source.to_path_buf(),
                reason: format!(
                    "mask is {}x{} but its image is {}x{}",
                    mask.width,
                    mask.height,
                    image.width(),
                    image.height()
                ),
            });
        }
        mask.check_nonempty(source)?;
        let prepared = self.prepare(image)?;
        let m = preprocess::prepare_mask(mask, self.resize, &self.device)?;
        let m = preprocess::mask_tensor_for_model(&m)?.unsqueeze(0)?; // (1, 1, S, S)
        Ok(Exemplar {
            features: self.features(&prepared)?,
            mask: m,
        })
    }

    /// Encode a class from its exemplars (K ≥ 1 shots).
    pub fn encode_class(&self, exemplars: &[Exemplar]) -> Result<ClassEncoding> {
        if exemplars.is_empty() {
            return Err(Error::Input("a class needs at least one exemplar".into()));
        }
        let shots = exemplars
            .iter()
            .map(|e| self.head.encode_support(&e.features, &e.mask, Mode::Eval))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(ClassEncoding { shots })
    }

    /// Segment one frame against each class: backbone and query encoding once, the head per class.
    pub fn segment(&self, frame: &RgbImage, classes: &[&ClassEncoding]) -> Result<Vec<ClassMap>> {
        let prepared = self.prepare(frame)?;
        let query = self
            .head
            .encode_query(&self.features(&prepared)?, Mode::Eval)?;
        classes
            .iter()
            .enumerate()
            .map(|(i, class)| {
                let logits = self.head.decode(&query, &class.shots)?;
                check_finite(&logits, i)?;
                Ok(ClassMap {
                    width: prepared.orig_w,
                    height: prepared.orig_h,
                    probability: preprocess::probabilities_to_original(&logits, &prepared)?,
                })
            })
            .collect()
    }
}

/// [`Error::NonFinite`] unless every logit of class `index` is finite: `0 · x` is 0 for finite
/// values and NaN otherwise, so the sum is 0 exactly when all are finite.
fn check_finite(logits: &Tensor, index: usize) -> Result<()> {
    let sum = (logits * 0.0)?.sum_all()?.to_scalar::<f32>()?;
    match sum == 0.0 {
        true => Ok(()),
        false => Err(Error::NonFinite(format!("class {index} of the frame"))),
    }
}

/// Load the backbone `config` names from a weight file with its original tensor names.
pub fn load_backbone(config: &MceConfig, path: &Path, device: &Device) -> Result<AnyBackbone> {
    let tensors = candle_core::safetensors::load(path, device).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("cannot read backbone weights: {e}"),
    })?;
    AnyBackbone::new(
        config.backbone,
        VarBuilder::from_tensors(tensors, DType::F32, device),
    )
    .map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
