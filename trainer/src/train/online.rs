//! Online batches (`mce-train train --online`): every step loads the images of its episodes, gives
//! each query and each support its own PFENet augmentation ([`crate::augment`]: scale, rotation,
//! blur, flip, padded crop) and runs the frozen backbone on them.
//!
//! ```text
//! episode refs ─ load image + episode label ─ Variant::IDENTITY (longer side = S) ─ augment(rng)
//!   ─ canvases (B·(1+K), 3, S, S) ─ backbone ─ Batch { query, shots, labels }
//! ```
//!
//! This is the mode for a CUDA workstation. On a CPU the backbone dominates every step, and the
//! cached mode ([`crate::features::FeatureStore`], exact flips and scales only) is the practical one.
//! All randomness comes from the step's generator, so a resumed run draws the same augmentations.

use super::batch::Batch;
use crate::augment::{augment, AugmentConfig};
use crate::data::{Episode, FewShotDataset, SampleRef};
use crate::transform::{self, Canvas, Variant};
use crate::Result;
use candle_core::{DType, Device, Tensor};
use mce_core::backbone::Backbone;
use mce_core::{AnyBackbone, Features};
use rand_chacha::rand_core::RngCore;

/// Builds augmented training batches straight from the dataset.
pub struct OnlineBatches<'a> {
    ds: &'a dyn FewShotDataset,
    backbone: &'a AnyBackbone,
    aug: AugmentConfig,
}

/// One augmented image on the canvas and its episode label.
struct Placed {
    image: Vec<f32>,
    label: Vec<u8>,
}

impl<'a> OnlineBatches<'a> {
    /// PFENet's augmentation onto the `size × size` canvas.
    pub fn new(ds: &'a dyn FewShotDataset, backbone: &'a AnyBackbone, size: usize) -> Self {
        Self {
            ds,
            backbone,
            aug: AugmentConfig::with_crop(size),
        }
    }

    /// Use other augmentation parameters (the crop must stay the model's input size).
    pub fn with_augment(mut self, aug: AugmentConfig) -> Self {
        self.aug = aug;
        self
    }

    fn canvas(&self, r: SampleRef, rng: &mut impl RngCore) -> Result<Placed> {
        let s = self.aug.crop;
        let sample = self.ds.sample(r)?;
        let (img, label) = transform::apply(
            &sample.load_image()?,
            &sample.load_mask()?,
            Variant::IDENTITY,
            // PFENet's augmentation starts from the letterboxed image, whatever the model's fit.
            Canvas::letterbox(s),
        );
        let (img, label) = augment(&img, &label, &self.aug, rng);
        Ok(Placed {
            image: transform::image_canvas(&img, self.backbone.kind(), s),
            label: transform::label_canvas(&label, s),
        })
    }

    fn features(&self, images: Vec<Vec<f32>>, device: &Device) -> Result<Features> {
        let (b, s) = (images.len(), self.aug.crop);
        let x = Tensor::from_vec(images.concat(), (b, 3, s, s), device)?;
        Ok(self.backbone.features(&x)?)
    }

    /// The batch of `episodes` (all with the same K), each image augmented independently.
    pub fn assemble(
        &self,
        episodes: &[Episode],
        rng: &mut impl RngCore,
        device: &Device,
    ) -> Result<Batch> {
        let (b, s) = (episodes.len(), self.aug.crop);
        let k = episodes.first().map_or(0, |e| e.supports.len());
        let mut queries = Vec::with_capacity(b);
        let mut labels = Vec::with_capacity(b * s * s);
        let mut supports: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(b); k];
        let mut masks: Vec<Vec<f32>> = vec![Vec::with_capacity(b * s * s); k];
        for e in episodes {
            let q = self.canvas(e.query, rng)?;
            queries.push(q.image);
            labels.extend(q.label);
            for (shot, r) in e.supports.iter().enumerate() {
                let c = self.canvas(*r, rng)?;
                supports[shot].push(c.image);
                masks[shot].extend(c.label.iter().map(|&l| f32::from(u8::from(l == 1))));
            }
        }
        let shots = supports
            .into_iter()
            .zip(masks)
            .map(|(images, m)| {
                Ok((
                    self.features(images, device)?,
                    Tensor::from_vec(m, (b, 1, s, s), device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Batch {
            query: self.features(queries, device)?,
            shots,
            labels: Tensor::from_vec(labels, (b, s, s), device)?.to_dtype(DType::U8)?,
        })
    }
}
