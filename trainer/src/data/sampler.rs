//! Episodes: a class, a query image and K distinct support images of that class, never the
//! query. [`EpisodeSampler`] draws them from a [`ClassPool`] with a ChaCha8 generator seeded from
//! a `u64`, so an episode list depends only on the pool, the shots and the seed (the draws use
//! only `next_u64`, whose stream `rand_chacha` keeps stable across versions).

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::catalog::ClassPool;
use super::sample::{LoadedSample, SampleRef};
use super::{ClassId, FewShotDataset};
use crate::{Error, Result};

/// One few-shot episode (references into the dataset's entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Episode {
    pub class: ClassId,
    pub query: SampleRef,
    pub supports: Vec<SampleRef>,
}

/// Draws episodes reproducibly.
#[derive(Debug, Clone)]
pub struct EpisodeSampler {
    rng: ChaCha8Rng,
}

impl EpisodeSampler {
    /// A sampler whose draws depend only on `seed`.
    pub fn new(seed: u64) -> Self {
        EpisodeSampler {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// One episode: a class uniformly among the pool's classes with at least `shots + 1` images,
    /// then `shots + 1` distinct images of it uniformly (the first is the query).
    pub fn sample(&mut self, pool: &ClassPool, shots: usize) -> Result<Episode> {
        if shots == 0 {
            return Err(Error::Input("an episode needs at least one support".into()));
        }
        let classes = pool.eligible(shots);
        if classes.is_empty() {
            return Err(Error::Input(format!(
                "no class has {} images (a query and {shots} supports); pool sizes: {}",
                shots + 1,
                pool.classes
                    .iter()
                    .map(|(c, v)| format!("{c}: {}", v.len()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let class = classes[self.below(classes.len())];
        let images = pool.images(class);
        // Partial Fisher-Yates over the positions: the first shots + 1 are distinct.
        let mut order: Vec<usize> = (0..images.len()).collect();
        for i in 0..=shots {
            let j = i + self.below(order.len() - i);
            order.swap(i, j);
        }
        let at = |k: usize| SampleRef {
            image: images[order[k]],
            class,
        };
        Ok(Episode {
            class,
            query: at(0),
            supports: (1..=shots).map(at).collect(),
        })
    }

    /// `n` episodes in a row.
    pub fn episodes(&mut self, pool: &ClassPool, shots: usize, n: usize) -> Result<Vec<Episode>> {
        (0..n).map(|_| self.sample(pool, shots)).collect()
    }

    /// Uniform in `0..n` (`n > 0`) by rejection, independent of `rand`'s range algorithms.
    fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        // 2^64 mod n values at the top are rejected so that every residue is equally likely.
        let reject_from = u64::MAX - (u64::MAX % n + 1) % n;
        loop {
            let v = self.rng.next_u64();
            if v <= reject_from {
                return (v % n) as usize;
            }
        }
    }
}

/// The fixed test-episode list of a fold: `n_episodes` episodes drawn from the fold's test pool
/// with [`EpisodeSampler::new`]`(seed)`. The same arguments give the same list, and a longer list
/// extends a shorter one.
pub fn test_episodes<D: FewShotDataset + ?Sized>(
    dataset: &D,
    fold: usize,
    n_folds: usize,
    shots: usize,
    n_episodes: usize,
    seed: u64,
) -> Result<Vec<Episode>> {
    let pool = dataset.test_pool(fold, n_folds)?;
    EpisodeSampler::new(seed).episodes(&pool, shots, n_episodes)
}

/// A decoded episode: images and labels (1 = the class, 0 = other labelled pixels, 255 = ignore).
#[derive(Debug, Clone)]
pub struct LoadedEpisode {
    pub class: ClassId,
    pub query: LoadedSample,
    pub supports: Vec<LoadedSample>,
}

/// Decode every image and label of `episode`.
pub fn load_episode<D: FewShotDataset + ?Sized>(
    dataset: &D,
    episode: &Episode,
) -> Result<LoadedEpisode> {
    let load = |r: SampleRef| dataset.sample(r)?.load();
    Ok(LoadedEpisode {
        class: episode.class,
        query: load(episode.query)?,
        supports: episode
            .supports
            .iter()
            .map(|&r| load(r))
            .collect::<Result<_>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(sizes: &[(ClassId, usize)]) -> ClassPool {
        let mut p = ClassPool::default();
        let mut next = 0;
        for &(c, n) in sizes {
            p.classes.insert(c, (next..next + n).collect());
            next += n;
        }
        p
    }

    #[test]
    fn distinct_supports_and_eligibility() -> Result<()> {
        let p = pool(&[(1, 2), (2, 6), (3, 7)]);
        let mut s = EpisodeSampler::new(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let e = s.sample(&p, 5)?;
            assert_ne!(e.class, 1, "class 1 has too few images for 5 shots");
            seen.insert(e.class);
            let mut all: Vec<usize> = e.supports.iter().map(|r| r.image).collect();
            all.push(e.query.image);
            assert!(all.iter().all(|i| p.images(e.class).contains(i)));
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), 6);
        }
        assert_eq!(seen.len(), 2);
        assert!(s.sample(&p, 7).is_err());
        assert!(s.sample(&p, 0).is_err());
        Ok(())
    }

    #[test]
    fn below_is_uniform_enough() {
        let mut s = EpisodeSampler::new(1);
        let mut hist = [0usize; 3];
        (0..30_000).for_each(|_| hist[s.below(3)] += 1);
        assert!(
            hist.iter().all(|&h| (9_000..11_000).contains(&h)),
            "{hist:?}"
        );
    }
}
