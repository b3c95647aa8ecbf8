//! Model selection on a validation split of the TRAINING classes (never the test fold).
//!
//! Every image of the training pool whose hash falls in `1/every` goes to validation. Validation
//! episodes take their query from those images and their supports from the remaining training
//! images of the same class; they are scored on the model canvas (mIoU over the training classes).

use crate::data::{ClassPool, Episode, SampleRef};
use crate::features::FeatureStore;
use crate::train::batch::assemble;
use crate::Result;
use candle_core::Device;
use mce_core::metrics::IouAccumulator;
use mce_core::model::Mode;
use mce_core::ops::splitmix64;
use mce_core::Mce;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// A training pool split into the images trained on and the validation queries.
pub struct Split {
    pub train: ClassPool,
    pub val: ClassPool,
}

/// Hold out about `1/every` of the pool's images (by a hash of the image index) for validation.
pub fn split(pool: &ClassPool, every: u64, seed: u64) -> Split {
    let is_val = |image: usize| every > 1 && splitmix64(seed ^ image as u64).is_multiple_of(every);
    let part = |want: bool| ClassPool {
        classes: pool
            .classes
            .iter()
            .map(|(c, imgs)| {
                (
                    *c,
                    imgs.iter()
                        .copied()
                        .filter(|&i| is_val(i) == want)
                        .collect(),
                )
            })
            .collect(),
    };
    Split {
        train: part(false),
        val: part(true),
    }
}

/// `n` validation episodes: query from `val`, `shots` distinct supports from `train`.
pub fn episodes(split: &Split, shots: usize, n: usize, seed: u64) -> Vec<Episode> {
    let classes: Vec<_> = split
        .val
        .classes
        .iter()
        .filter(|(c, v)| !v.is_empty() && split.train.images(**c).len() >= shots)
        .map(|(c, _)| *c)
        .collect();
    if classes.is_empty() {
        return Vec::new();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut below = |n: usize| (rng.next_u64() % n as u64) as usize;
    (0..n)
        .map(|_| {
            let class = classes[below(classes.len())];
            let queries = split.val.images(class);
            let mut pool = split.train.images(class).to_vec();
            let query = queries[below(queries.len())];
            let supports = (0..shots)
                .map(|_| {
                    let image = pool.swap_remove(below(pool.len()));
                    SampleRef { image, class }
                })
                .collect();
            Episode {
                class,
                query: SampleRef {
                    image: query,
                    class,
                },
                supports,
            }
        })
        .collect()
}

/// Validation scores.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ValScore {
    pub miou: f64,
    pub fb_iou: f64,
    pub episodes: usize,
    pub class_iou: BTreeMap<usize, f64>,
}

/// Score `head` (in eval mode) on `episodes` at the identity variant, on the canvas.
pub fn score(
    head: &Mce,
    store: &FeatureStore,
    episodes: &[Episode],
    device: &Device,
) -> Result<ValScore> {
    let mut acc = IouAccumulator::new();
    for e in episodes {
        // variant 0 is the identity (the test transform)
        let batch = assemble(store, std::slice::from_ref(e), || 0, device)?;
        let logits = head.forward(&batch.query, &batch.shots, Mode::Eval)?;
        let pred: Vec<u8> = logits
            .argmax(1)?
            .flatten_all()?
            .to_dtype(candle_core::DType::U8)?
            .to_vec1()?;
        let label: Vec<u8> = batch.labels.flatten_all()?.to_vec1()?;
        acc.add(e.class, &pred, &label)?;
    }
    Ok(ValScore {
        miou: acc.miou().unwrap_or(0.0),
        fb_iou: acc.fb_iou().unwrap_or(0.0),
        episodes: episodes.len(),
        class_iou: acc.class_iou(),
    })
}
