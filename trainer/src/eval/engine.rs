//! The episode loop shared by the model and the baselines.
//!
//! ```text
//! lists[seed][episode] ─ group by query image (BTreeMap: ascending image, then seed, episode)
//!   per group: model.encode_query(image) once; labels of the group loaded once per SampleRef
//!     per episode: model.logits ─ predict_original ─▶ Prediction (orig_h × orig_w, 0/1)
//!                  ─ IouAccumulator[seed].add(class, prediction, original label)
//! ```
//!
//! Every episode of a query image lies in one group, so each original label is decoded exactly
//! once per run and dropped after its group. Scores are integer sums, so the result does not
//! depend on the order of the episodes; [`Grouping::PerEpisode`] (encode the query and load the
//! label for every episode, in list order) exists to check that.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use indicatif::ProgressBar;
use mce_core::metrics::{intersection_union, IouAccumulator};
use mce_core::preprocess::{logits_to_original_size, Mask};

use super::{CanvasView, EpisodeModel};
use crate::data::{Episode, FewShotDataset, SampleRef};
use crate::{Error, Result};

/// How the episode loop visits the episodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// Encode each distinct query image once and run all its episodes (all seeds) against it.
    ByQuery,
    /// Encode the query for every episode, in list order (reference for tests).
    PerEpisode,
}

/// A binary prediction at the original resolution of the query image, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prediction {
    pub height: usize,
    pub width: usize,
    /// 1 = foreground, 0 = background.
    pub data: Vec<u8>,
}

/// The scores of one seed's episode list.
#[derive(Debug, Clone)]
pub struct SeedScores {
    pub accumulator: IouAccumulator,
    /// Per episode, in list order: `[(I, U) background, (I, U) foreground]`.
    pub episodes: Vec<[(u64, u64); 2]>,
}

/// The model's prediction for `episode`, mapped from the canvas back to the query's original size
/// exactly as the device does (`preprocess::logits_to_original_size`).
pub fn predict_original<M: EpisodeModel + ?Sized>(
    view: &CanvasView,
    model: &M,
    query: &M::Query,
    episode: &Episode,
) -> Result<Prediction> {
    let (height, width) = view.original_size(episode.query.image)?;
    let logits = model.logits(view, query, episode)?;
    let data = logits_to_original_size(&logits, view.resize(), height, width)?;
    Ok(Prediction {
        height,
        width,
        data,
    })
}

/// The episode label of `r` at its original resolution; [`Error::Format`] naming the label file
/// when its size is not `(height, width)` (the image's size).
pub fn load_label(
    ds: &dyn FewShotDataset,
    r: SampleRef,
    (height, width): (usize, usize),
) -> Result<Mask> {
    let sample = ds.sample(r)?;
    let mask = sample.load_mask()?;
    if (mask.height, mask.width) != (height, width) {
        return Err(Error::format(
            sample.mask.path(),
            format!(
                "label is {}x{} but its image {} is {width}x{height}",
                mask.width,
                mask.height,
                sample.image.display()
            ),
        ));
    }
    Ok(mask)
}

/// Visit every episode of `lists` with its encoded query and original-resolution label:
/// `visit(seed_index, episode_index, episode, query, label)`.
pub fn visit_episodes<M, F>(
    ds: &dyn FewShotDataset,
    view: &CanvasView,
    model: &M,
    lists: &[Vec<Episode>],
    grouping: Grouping,
    mut visit: F,
) -> Result<()>
where
    M: EpisodeModel + ?Sized,
    F: FnMut(usize, usize, &Episode, &M::Query, &Mask) -> Result<()>,
{
    match grouping {
        Grouping::ByQuery => {
            let mut groups: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
            for (s, list) in lists.iter().enumerate() {
                for (e, ep) in list.iter().enumerate() {
                    groups.entry(ep.query.image).or_default().push((s, e));
                }
            }
            for (image, members) in groups {
                let query = model.encode_query(view, image)?;
                let size = view.original_size(image)?;
                let mut labels: HashMap<SampleRef, Mask> = HashMap::new();
                for (s, e) in members {
                    let ep = &lists[s][e];
                    let label = match labels.entry(ep.query) {
                        Entry::Occupied(o) => o.into_mut(),
                        Entry::Vacant(v) => v.insert(load_label(ds, ep.query, size)?),
                    };
                    visit(s, e, ep, &query, label)?;
                }
            }
        }
        Grouping::PerEpisode => {
            for (s, list) in lists.iter().enumerate() {
                for (e, ep) in list.iter().enumerate() {
                    let query = model.encode_query(view, ep.query.image)?;
                    let size = view.original_size(ep.query.image)?;
                    let label = load_label(ds, ep.query, size)?;
                    visit(s, e, ep, &query, &label)?;
                }
            }
        }
    }
    Ok(())
}

/// Predict and score every episode of every seed's list; one [`SeedScores`] per list.
pub fn score_episodes<M: EpisodeModel + ?Sized>(
    ds: &dyn FewShotDataset,
    view: &CanvasView,
    model: &M,
    lists: &[Vec<Episode>],
    grouping: Grouping,
    bar: &ProgressBar,
) -> Result<Vec<SeedScores>> {
    let mut scores: Vec<SeedScores> = lists
        .iter()
        .map(|l| SeedScores {
            accumulator: IouAccumulator::new(),
            episodes: vec![[(0, 0); 2]; l.len()],
        })
        .collect();
    visit_episodes(
        ds,
        view,
        model,
        lists,
        grouping,
        |s, e, ep, query, label| {
            let pred = predict_original(view, model, query, ep)?;
            scores[s]
                .accumulator
                .add(ep.class, &pred.data, &label.data)?;
            scores[s].episodes[e] = intersection_union(&pred.data, &label.data);
            bar.inc(1);
            Ok(())
        },
    )?;
    Ok(scores)
}
