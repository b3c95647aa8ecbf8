//! Backbone features computed once per image and geometric [`Variant`] — the mode that makes
//! training practical on a CPU, where the frozen backbone dominates the cost of an episode.
//!
//! ```text
//! (image, classes) ─ load once ─▶ for each variant: transform::apply ─▶ canvas tensor ─┐
//!                                                                     label canvas   │
//!                      backbone (all variants of one image in one batch) ◀───────────┘
//!                      ─▶ FeatureStore { image → [Features per variant], (image, class, variant) → label }
//! ```
//!
//! Labels are kept on the model canvas (`S × S`, 1 = class, 0 = other, 255 = ignore/padding).

use crate::data::{FewShotDataset, SampleRef};
use crate::transform::{self, Canvas, Variant};
use crate::Result;
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use mce_core::{AnyBackbone, Backbone, Features};
use std::collections::{BTreeMap, HashMap};

/// Cached backbone features and canvas labels.
pub struct FeatureStore {
    canvas: Canvas,
    variants: Vec<Variant>,
    features: HashMap<usize, Vec<Features>>,
    labels: HashMap<(SampleRef, usize), Vec<u8>>,
    /// Original `(height, width)` of each image.
    sizes: HashMap<usize, (usize, usize)>,
}

/// A progress bar with the project's style.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {prefix}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

impl FeatureStore {
    /// Compute features of every image referenced by `refs` (and labels of each (image, class)) at
    /// every variant, on `canvas`.
    pub fn build(
        ds: &dyn FewShotDataset,
        refs: &[SampleRef],
        backbone: &AnyBackbone,
        canvas: Canvas,
        variants: &[Variant],
        device: &Device,
    ) -> Result<Self> {
        let mut by_image: BTreeMap<usize, Vec<SampleRef>> = BTreeMap::new();
        for r in refs {
            let v = by_image.entry(r.image).or_default();
            if !v.contains(r) {
                v.push(*r);
            }
        }
        let mut store = FeatureStore {
            canvas,
            variants: variants.to_vec(),
            features: HashMap::new(),
            labels: HashMap::new(),
            sizes: HashMap::new(),
        };
        let bar = progress(by_image.len() as u64, "features");
        for (image, image_refs) in by_image {
            store.add_image(ds, image, &image_refs, backbone, device)?;
            bar.inc(1);
        }
        bar.finish();
        Ok(store)
    }

    fn add_image(
        &mut self,
        ds: &dyn FewShotDataset,
        image: usize,
        refs: &[SampleRef],
        backbone: &AnyBackbone,
        device: &Device,
    ) -> Result<()> {
        let kind = backbone.kind();
        let img = ds.sample(refs[0])?.load_image()?;
        self.sizes
            .insert(image, (img.height() as usize, img.width() as usize));
        let mut canvases = Vec::with_capacity(self.variants.len());
        for r in refs {
            let mask = ds.sample(*r)?.load_mask()?;
            for (vi, &v) in self.variants.iter().enumerate() {
                let (placed, lab) = transform::apply(&img, &mask, v, self.canvas);
                if canvases.len() < self.variants.len() {
                    canvases.push(transform::image_canvas(&placed, kind, self.canvas.size));
                }
                self.labels
                    .insert((*r, vi), transform::label_canvas(&lab, self.canvas.size));
            }
        }
        let n = canvases.len();
        let s = self.canvas.size;
        let batch = Tensor::from_vec(canvases.concat(), (n, 3, s, s), device)?;
        let feats = backbone.features(&batch)?;
        let per_variant = (0..n)
            .map(|i| feats.narrow(i, 1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.features.insert(image, per_variant);
        Ok(())
    }

    pub fn variants(&self) -> &[Variant] {
        &self.variants
    }

    /// The canvas side `S`.
    pub fn size(&self) -> usize {
        self.canvas.size
    }

    /// The canvas the images were placed on.
    pub fn canvas(&self) -> Canvas {
        self.canvas
    }

    /// Original `(height, width)` of a cached image.
    pub fn original_size(&self, image: usize) -> Option<(usize, usize)> {
        self.sizes.get(&image).copied()
    }

    /// Features `(1, C, h, w)` per level of an image at a variant.
    pub fn features(&self, image: usize, variant: usize) -> Result<&Features> {
        self.features
            .get(&image)
            .and_then(|v| v.get(variant))
            .ok_or_else(|| {
                crate::Error::Input(format!("image {image} variant {variant} not cached"))
            })
    }

    /// Canvas label (`S × S`: 1 class, 0 other, 255 ignore) of an (image, class) at a variant.
    pub fn label(&self, r: SampleRef, variant: usize) -> Result<&[u8]> {
        self.labels
            .get(&(r, variant))
            .map(Vec::as_slice)
            .ok_or_else(|| crate::Error::Input(format!("label {r:?} variant {variant} not cached")))
    }
}
