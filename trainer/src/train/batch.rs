//! Episode batches from the feature cache: B episodes of one K, each image at a random variant.

use crate::data::{ClassPool, Episode, EpisodeSampler};
use crate::features::FeatureStore;
use crate::Result;
use candle_core::{DType, Device, Tensor};
use mce_core::Features;
use rand_chacha::rand_core::RngCore;

/// The tensors of one training step.
pub struct Batch {
    /// Query features, batch of B.
    pub query: Features,
    /// Per shot: support features (batch of B) and masks `(B, 1, S, S)` f32 0/1.
    pub shots: Vec<(Features, Tensor)>,
    /// Query labels `(B, S, S)` u8: 1 class, 0 other, 255 ignore.
    pub labels: Tensor,
}

fn cat_features(parts: &[&Features]) -> candle_core::Result<Features> {
    let level = |f: fn(&Features) -> &Tensor| -> candle_core::Result<Tensor> {
        Tensor::cat(&parts.iter().map(|p| f(p)).collect::<Vec<_>>(), 0)
    };
    Ok(Features {
        level2: level(|f| &f.level2)?,
        level3: level(|f| &f.level3)?,
        level4: level(|f| &f.level4)?,
    })
}

/// Draw `batch` episodes with `shots` supports from `pool`.
pub fn sample_episodes(
    pool: &ClassPool,
    shots: usize,
    batch: usize,
    seed: u64,
) -> Result<Vec<Episode>> {
    EpisodeSampler::new(seed).episodes(pool, shots, batch)
}

/// Draw variants uniformly from `rng`.
pub fn random_variants<'a>(
    store: &FeatureStore,
    rng: &'a mut impl RngCore,
) -> impl FnMut() -> usize + 'a {
    let n = store.variants().len() as u64;
    move || (rng.next_u64() % n) as usize
}

/// Assemble a batch; `pick` chooses the cached variant of each image in turn.
pub fn assemble(
    store: &FeatureStore,
    episodes: &[Episode],
    mut pick: impl FnMut() -> usize,
    device: &Device,
) -> Result<Batch> {
    let s = store.size();
    let shots = episodes[0].supports.len();
    let mut query = Vec::new();
    let mut labels = Vec::with_capacity(episodes.len() * s * s);
    let mut support: Vec<Vec<&Features>> = vec![Vec::new(); shots];
    let mut masks: Vec<Vec<f32>> = vec![Vec::new(); shots];
    for e in episodes {
        let v = pick();
        query.push(store.features(e.query.image, v)?);
        labels.extend_from_slice(store.label(e.query, v)?);
        for (k, r) in e.supports.iter().enumerate() {
            let v = pick();
            support[k].push(store.features(r.image, v)?);
            masks[k].extend(
                store
                    .label(*r, v)?
                    .iter()
                    .map(|&l| f32::from(u8::from(l == 1))),
            );
        }
    }
    let b = episodes.len();
    let shots = support
        .iter()
        .zip(masks)
        .map(|(f, m)| Ok((cat_features(f)?, Tensor::from_vec(m, (b, 1, s, s), device)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Batch {
        query: cat_features(&query)?,
        shots,
        labels: Tensor::from_vec(labels, (b, s, s), device)?.to_dtype(DType::U8)?,
    })
}
