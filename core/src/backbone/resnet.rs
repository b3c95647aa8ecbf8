//! torchvision ResNet-50 (v1.5: stride on the 3×3 conv of each bottleneck), frozen, with
//! `replace_stride_with_dilation = [False, True, True]`: `layer3` and `layer4` keep stride 1 and use
//! dilation 2 and 4, so `layer2`, `layer3` and `layer4` all come out at output stride 8
//! (473×473 input -> 60×60 at every level; channels 512 / 1024 / 2048).
//!
//! Tensor names are torchvision's (`conv1.weight`, `bn1.*`, `layer1.0.conv1.weight`,
//! `layer1.0.downsample.{0,1}.*`, ...), so its ImageNet state dict, saved as safetensors, loads as is.
//! Every conv + BatchNorm pair (eps 1e-5, eval mode) is folded into one [`FrozenConvBn`]. `fc` is not
//! loaded.
//!
//! torchvision's dilation rule, reproduced by [`block_specs`]: when a layer is dilated, its FIRST block
//! uses the PREVIOUS dilation (`previous_dilation`) for its 3×3 conv and the later blocks the new one;
//! padding always equals dilation. So `layer3.0.conv2` has dilation 1, `layer3.{1..5}.conv2` dilation 2,
//! `layer4.0.conv2` dilation 2, `layer4.{1,2}.conv2` dilation 4.

use std::collections::HashMap;
use std::path::Path;

use super::{Backbone, BackboneKind, Features};
use crate::ops::epilogue::Activation;
use crate::ops::frozen::{ConvGeometry, FrozenConvBn};
use crate::quant::QuantVarBuilder;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// BatchNorm epsilon of torchvision's ResNet.
pub const BN_EPS: f64 = 1e-5;
/// Output channels of a bottleneck = `planes * EXPANSION`.
pub const EXPANSION: usize = 4;
/// Per layer: (number of blocks, planes, stride, replace stride with dilation).
const LAYERS: [(usize, usize, usize, bool); 4] = [
    (3, 64, 1, false),
    (4, 128, 2, false),
    (6, 256, 2, true),
    (3, 512, 2, true),
];

/// Geometry of one bottleneck block, as torchvision's `_make_layer` builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpec {
    /// 1..=4 (`layerN`).
    pub layer: usize,
    /// Block index inside the layer.
    pub index: usize,
    pub in_channels: usize,
    /// Channels of the 1×1 reduce and 3×3 convs (`planes`).
    pub width: usize,
    /// `planes * 4`.
    pub out_channels: usize,
    /// Stride of `conv2` (3×3) and of the downsample 1×1 conv.
    pub stride: usize,
    /// Dilation (= padding) of `conv2`.
    pub dilation: usize,
    /// Whether the block has `downsample.{0,1}` (projection shortcut).
    pub downsample: bool,
}

impl BlockSpec {
    /// The VarBuilder / state-dict prefix, e.g. `layer3.0`.
    pub fn prefix(&self) -> String {
        format!("layer{}.{}", self.layer, self.index)
    }
}

/// All 16 bottleneck specs in order, following torchvision's `_make_layer` exactly.
pub fn block_specs() -> Vec<BlockSpec> {
    let mut specs = Vec::new();
    let (mut in_c, mut dilation) = (64, 1);
    for (l, &(blocks, planes, stride, dilate)) in LAYERS.iter().enumerate() {
        let previous_dilation = dilation;
        let mut stride = stride;
        if dilate {
            dilation *= stride;
            stride = 1;
        }
        let out_c = planes * EXPANSION;
        for index in 0..blocks {
            let first = index == 0;
            specs.push(BlockSpec {
                layer: l + 1,
                index,
                in_channels: in_c,
                width: planes,
                out_channels: out_c,
                stride: if first { stride } else { 1 },
                dilation: if first { previous_dilation } else { dilation },
                downsample: first && (stride != 1 || in_c != out_c),
            });
            in_c = out_c;
        }
    }
    specs
}

/// Every tensor the model reads, with its shape (torchvision names; BN as weight/bias/mean/var).
pub fn expected_tensors() -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let mut conv_bn = |conv: String, bn: String, o: usize, i: usize, k: usize| {
        out.push((format!("{conv}.weight"), vec![o, i, k, k]));
        for p in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{bn}.{p}"), vec![o]));
        }
    };
    conv_bn("conv1".into(), "bn1".into(), 64, 3, 7);
    for s in block_specs() {
        let p = s.prefix();
        let (i, w, o) = (s.in_channels, s.width, s.out_channels);
        conv_bn(format!("{p}.conv1"), format!("{p}.bn1"), w, i, 1);
        conv_bn(format!("{p}.conv2"), format!("{p}.bn2"), w, w, 3);
        conv_bn(format!("{p}.conv3"), format!("{p}.bn3"), o, w, 1);
        if s.downsample {
            conv_bn(
                format!("{p}.downsample.0"),
                format!("{p}.downsample.1"),
                o,
                i,
                1,
            );
        }
    }
    out
}

/// One torchvision `Bottleneck`, BN folded.
#[derive(Debug, Clone)]
struct Bottleneck {
    conv1: FrozenConvBn,
    conv2: FrozenConvBn,
    conv3: FrozenConvBn,
    downsample: Option<FrozenConvBn>,
}

fn conv_bn(
    vb: &QuantVarBuilder,
    conv: &str,
    bn: &str,
    shape: (usize, usize, usize),
    g: ConvGeometry,
) -> Result<FrozenConvBn> {
    FrozenConvBn::new(vb.pp(conv), vb.pp(bn), shape, g, BN_EPS)
}

impl Bottleneck {
    fn new(vb: QuantVarBuilder, s: &BlockSpec) -> Result<Self> {
        let (i, w, o) = (s.in_channels, s.width, s.out_channels);
        let one = ConvGeometry::new(1, 0, 1, 1);
        let three = ConvGeometry::new(s.stride, s.dilation, s.dilation, 1);
        let downsample = if s.downsample {
            let g = ConvGeometry::new(s.stride, 0, 1, 1);
            Some(conv_bn(&vb, "downsample.0", "downsample.1", (o, i, 1), g)?)
        } else {
            None
        };
        Ok(Self {
            conv1: conv_bn(&vb, "conv1", "bn1", (w, i, 1), one)?,
            conv2: conv_bn(&vb, "conv2", "bn2", (w, w, 3), three)?,
            conv3: conv_bn(&vb, "conv3", "bn3", (o, w, 1), one)?,
            downsample,
        })
    }
}

impl Module for Bottleneck {
    /// `(B, in, H, W)` -> `(B, out, H/stride, W/stride)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = self.conv1.forward_act(xs, Activation::Relu, None)?;
        let ys = self.conv2.forward_act(&ys, Activation::Relu, None)?;
        let identity = match &self.downsample {
            Some(d) => d.forward(xs)?,
            None => xs.clone(),
        };
        self.conv3
            .forward_act(&ys, Activation::Relu, Some(&identity))
    }
}

/// Frozen, dilated ResNet-50 (output stride 8).
#[derive(Debug, Clone)]
pub struct ResNet50 {
    stem: FrozenConvBn,
    /// `layer1` .. `layer4`.
    layers: [Vec<Bottleneck>; 4],
}

impl ResNet50 {
    /// Build from a VarBuilder holding torchvision's ResNet-50 tensors at its root.
    pub fn new<'a>(vb: impl Into<QuantVarBuilder<'a>>) -> Result<Self> {
        let vb = vb.into();
        let stem = conv_bn(
            &vb,
            "conv1",
            "bn1",
            (64, 3, 7),
            ConvGeometry::new(2, 3, 1, 1),
        )?;
        let mut layers: [Vec<Bottleneck>; 4] = Default::default();
        for s in block_specs() {
            layers[s.layer - 1].push(Bottleneck::new(vb.pp(s.prefix()), &s)?);
        }
        Ok(Self { stem, layers })
    }

    /// Load torchvision's ResNet-50 weights from a safetensors file (any float dtype; converted to
    /// f32). An unreadable file is [`crate::Error::Io`]; bad contents, missing tensors (listed by name)
    /// or wrong shapes are [`crate::Error::Checkpoint`].
    pub fn load(path: impl AsRef<Path>, device: &Device) -> crate::Result<Self> {
        let path = path.as_ref();
        let fail = |reason: String| crate::Error::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| crate::Error::io(path, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| fail(format!("not a readable safetensors file: {e}")))?;
        if let Some(reason) = missing_report(&tensors) {
            return Err(fail(reason));
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::new(vb).map_err(|e| fail(format!("ResNet-50 weights do not fit: {e}")))
    }

    /// `(B, 3, H, W)` -> `(B, 64, H/4, W/4)`: conv 7×7/2, ReLU, max-pool 3×3/2 pad 1.
    fn stem_forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = self.stem.forward_act(xs, Activation::Relu, None)?;
        // After ReLU every value is >= 0 and each 3×3 window holds at least one real pixel, so zero
        // padding gives exactly the result of PyTorch's -inf padding.
        let ys = ys.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        ys.max_pool2d_with_stride(3, 2)
    }

    /// Geometry of `layer{layer}.{index}.conv2` (for tests and diagnostics).
    #[cfg(test)]
    fn conv2(&self, layer: usize, index: usize) -> &FrozenConvBn {
        &self.layers[layer - 1][index].conv2
    }
}

/// `None` when every expected tensor is present, else a message naming the missing ones.
fn missing_report(tensors: &HashMap<String, Tensor>) -> Option<String> {
    let expected = expected_tensors();
    let missing: Vec<&str> = expected
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !tensors.contains_key(*n))
        .collect();
    if missing.is_empty() {
        return None;
    }
    const SHOWN: usize = 12;
    let mut msg = format!(
        "{} of {} ResNet-50 tensors missing (torchvision names expected): {}",
        missing.len(),
        expected.len(),
        missing[..missing.len().min(SHOWN)].join(", ")
    );
    if missing.len() > SHOWN {
        msg += &format!(", ... and {} more", missing.len() - SHOWN);
    }
    if missing.len() == expected.len() {
        let mut keys: Vec<&String> = tensors.keys().collect();
        keys.sort();
        let first: Vec<&str> = keys.iter().take(5).map(|k| k.as_str()).collect();
        msg += &format!(
            "; the file holds e.g. [{}] (a prefix such as `module.`?)",
            first.join(", ")
        );
    }
    Some(msg)
}

impl Backbone for ResNet50 {
    fn kind(&self) -> BackboneKind {
        BackboneKind::Resnet50
    }

    /// `(B, 3, H, W)` normalised -> level2 `(B, 512, h, w)`, level3 `(B, 1024, h, w)`,
    /// level4 `(B, 2048, h, w)` with `h = grid(H, 8)`, all detached.
    fn features(&self, images: &Tensor) -> Result<Features> {
        let xs = self.stem_forward(images)?;
        let l1 = super::apply_all(&xs, &self.layers[0])?;
        let l2 = super::apply_all(&l1, &self.layers[1])?;
        let l3 = super::apply_all(&l2, &self.layers[2])?;
        let l4 = super::apply_all(&l3, &self.layers[3])?;
        Ok(Features {
            level2: l2.detach(),
            level3: l3.detach(),
            level4: l4.detach(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small random weights under the exact torchvision names; BN var 1, gamma > 0.
    fn random_weights() -> Result<HashMap<String, Tensor>> {
        let dev = Device::Cpu;
        let mut map = HashMap::new();
        for (name, shape) in expected_tensors() {
            let t = if name.ends_with("running_var") {
                Tensor::ones(shape, DType::F32, &dev)?
            } else if name.ends_with("running_mean") || name.ends_with("bias") {
                Tensor::randn(0f32, 0.05, shape, &dev)?
            } else if shape.len() == 1 {
                Tensor::rand(0.3f32, 0.7, shape, &dev)? // BN gamma
            } else {
                let fan_in: usize = shape[1..].iter().product();
                Tensor::randn(0f32, (2.0 / fan_in as f32).sqrt(), shape, &dev)?
            };
            map.insert(name, t);
        }
        Ok(map)
    }

    fn model() -> Result<ResNet50> {
        ResNet50::new(VarBuilder::from_tensors(
            random_weights()?,
            DType::F32,
            &Device::Cpu,
        ))
    }

    fn check_shapes(size: usize) -> Result<()> {
        let m = model()?;
        let x = Tensor::randn(0f32, 1.0, (1, 3, size, size), &Device::Cpu)?;
        let f = m.features(&x)?;
        let g = BackboneKind::Resnet50.grid(size, 8);
        for (t, c) in f
            .levels()
            .into_iter()
            .zip(BackboneKind::Resnet50.channels())
        {
            assert_eq!(t.dims4()?, (1, c, g, g));
            let s = t.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(s.is_finite() && s > 0.0, "max |x| = {s}");
        }
        Ok(())
    }

    #[test]
    fn small_input_shapes() -> Result<()> {
        assert_eq!(BackboneKind::Resnet50.grid(97, 8), 13);
        check_shapes(97)
    }

    /// The paper's 473×473 -> 60×60 (about 8 s on 2 CPU cores).
    #[test]
    fn full_size_shapes() -> Result<()> {
        assert_eq!(BackboneKind::Resnet50.grid(473, 8), 60);
        check_shapes(473)
    }

    #[test]
    fn specs_follow_torchvision_dilation_rule() {
        let specs = block_specs();
        assert_eq!(specs.len(), 16);
        let get = |l: usize, i: usize| specs.iter().find(|s| s.layer == l && s.index == i).unwrap();
        // (layer, index) -> (stride, dilation, downsample, in, out)
        let want = [
            ((1, 0), (1, 1, true, 64, 256)),
            ((1, 1), (1, 1, false, 256, 256)),
            ((2, 0), (2, 1, true, 256, 512)),
            ((2, 3), (1, 1, false, 512, 512)),
            ((3, 0), (1, 1, true, 512, 1024)),
            ((3, 1), (1, 2, false, 1024, 1024)),
            ((3, 5), (1, 2, false, 1024, 1024)),
            ((4, 0), (1, 2, true, 1024, 2048)),
            ((4, 1), (1, 4, false, 2048, 2048)),
            ((4, 2), (1, 4, false, 2048, 2048)),
        ];
        for ((l, i), (st, d, ds, ic, oc)) in want {
            let s = get(l, i);
            assert_eq!(
                (s.stride, s.dilation, s.downsample),
                (st, d, ds),
                "layer{l}.{i}"
            );
            assert_eq!((s.in_channels, s.out_channels), (ic, oc), "layer{l}.{i}");
        }
        // 53 conv+BN pairs (1 stem + 48 block convs + 4 downsamples), 5 tensors each.
        assert_eq!(expected_tensors().len(), 53 * 5);
    }

    /// Positions of `conv2(impulse) - bias` that are non-zero: the impulse spreads to offsets
    /// {-d, 0, d}² around the centre, which reveals the dilation actually used.
    fn impulse_offsets(conv: &FrozenConvBn) -> Result<Vec<(i64, i64)>> {
        let (_, in_c, _, _) = conv.weight.dims4()?;
        let (n, c) = (9usize, 4i64);
        let mut v = vec![0f32; in_c * n * n];
        v[(c as usize) * n + c as usize] = 1.0; // channel 0, centre
        let x = Tensor::from_vec(v, (1, in_c, n, n), &Device::Cpu)?;
        let base = conv.forward(&x.zeros_like()?)?; // = bias everywhere
        let y = (conv.forward(&x)? - base)?.abs()?.max(1)?.squeeze(0)?;
        let y = y.to_vec2::<f32>()?;
        let mut out = Vec::new();
        for (r, row) in y.iter().enumerate() {
            for (col, val) in row.iter().enumerate() {
                if *val > 1e-4 {
                    out.push((r as i64 - c, col as i64 - c));
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn built_convs_use_previous_dilation_in_first_block() -> Result<()> {
        let m = model()?;
        let grid = |d: i64| -> Vec<(i64, i64)> {
            let o = [-d, 0, d];
            o.iter()
                .flat_map(|&a| o.iter().map(move |&b| (a, b)))
                .collect()
        };
        assert_eq!(impulse_offsets(m.conv2(3, 0))?, grid(1));
        assert_eq!(impulse_offsets(m.conv2(3, 1))?, grid(2));
        assert_eq!(impulse_offsets(m.conv2(4, 0))?, grid(2));
        assert_eq!(impulse_offsets(m.conv2(4, 2))?, grid(4));
        assert_eq!(m.conv2(3, 1).geometry, ConvGeometry::new(1, 2, 2, 1));
        assert_eq!(m.conv2(2, 0).geometry, ConvGeometry::new(2, 1, 1, 1));
        Ok(())
    }

    #[test]
    fn missing_tensor_is_named() -> Result<()> {
        let mut w = random_weights()?;
        w.remove("layer3.2.bn2.running_var");
        let err = ResNet50::new(VarBuilder::from_tensors(
            w.clone(),
            DType::F32,
            &Device::Cpu,
        ))
        .expect_err("missing tensor must fail");
        assert!(
            err.to_string().contains("layer3.2.bn2.running_var"),
            "{err}"
        );
        let report = missing_report(&w).expect("reported");
        assert!(report.contains("1 of 265") && report.contains("layer3.2.bn2.running_var"));
        Ok(())
    }

    #[test]
    fn load_reports_missing_names_and_bad_files() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("mce-resnet-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut w = random_weights()?;
        w.retain(|k, _| !k.starts_with("layer4.2.conv3") && k != "bn1.bias");
        let file = dir.join("partial.safetensors");
        candle_core::safetensors::save(&w, &file)?;
        let msg = ResNet50::load(&file, &Device::Cpu)
            .expect_err("must fail")
            .to_string();
        assert!(
            msg.contains("partial.safetensors") && msg.contains("2 of 265"),
            "{msg}"
        );
        assert!(
            msg.contains("bn1.bias") && msg.contains("layer4.2.conv3.weight"),
            "{msg}"
        );

        let junk = dir.join("junk.safetensors");
        std::fs::write(&junk, b"definitely not safetensors")?;
        let err = ResNet50::load(&junk, &Device::Cpu).expect_err("must fail");
        assert!(matches!(err, crate::Error::Checkpoint { .. }), "{err}");
        let err = ResNet50::load(dir.join("absent.safetensors"), &Device::Cpu).unwrap_err();
        assert!(matches!(err, crate::Error::Io { .. }) && err.to_string().contains("absent"));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
