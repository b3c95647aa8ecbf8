//! Calibration on the user's own data (`mce-calib calibrate --frames DIR --exemplars DIR`): every
//! frame is segmented exactly as the device does it — backbone and query encoding once per frame,
//! the head once per class — against every class of the exemplar folder, through the float model
//! with an observer on every layer.
//!
//! Layouts:
//!
//! * `--frames DIR`: the images (png, jpg, bmp, webp) directly in `DIR`, e.g. frames saved from the
//!   camera; no labels. `--max-frames N` takes `N` of them evenly spaced in name order.
//! * `--exemplars DIR`: the `folders` dataset layout (what `mce-train --dataset folders` reads):
//!   `DIR/<class>/images/*` with binary masks (0/255 or 0/1) in `DIR/<class>/masks/*`, matched by
//!   file stem. Each class is encoded from its first [`MAX_SHOTS`] exemplars with any foreground.

use anyhow::{bail, Context, Result};
use mce_core::inference::Segmenter;
use mce_core::preprocess::load_rgb;
use mce_train::data::folders::IMAGE_EXTENSIONS;
use mce_train::data::{FewShotDataset, Folders, Protocol};
use std::path::{Path, PathBuf};

/// Exemplars per class at most (the device's K).
pub const MAX_SHOTS: usize = 5;

/// The user's frames and exemplars.
#[derive(Debug, Clone)]
pub struct FrameSource {
    pub frames: PathBuf,
    pub exemplars: PathBuf,
    /// Use at most this many frames, evenly spaced in name order.
    pub max_frames: Option<usize>,
}

/// The image files directly in `dir`, sorted by name; an error when there are none.
pub fn list_frames(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading frames folder {}", dir.display()))?;
    let mut frames: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| IMAGE_EXTENSIONS.iter().any(|e| x.eq_ignore_ascii_case(e)))
        })
        .collect();
    frames.sort();
    if frames.is_empty() {
        bail!(
            "{}: no frames (images with extension {})",
            dir.display(),
            IMAGE_EXTENSIONS.join(", ")
        );
    }
    Ok(frames)
}

/// `n` items of `items` evenly spaced (all of them when `n` is `None` or not smaller).
fn evenly<T: Clone>(items: &[T], n: Option<usize>) -> Vec<T> {
    match n {
        Some(n) if n < items.len() => (0..n.max(1))
            .map(|i| items[i * items.len() / n.max(1)].clone())
            .collect(),
        _ => items.to_vec(),
    }
}

/// Segment every frame against every class of `src` with `seg` (whose layers observe their inputs).
/// Returns a description of what was seen, for the calibration table.
pub fn observe(seg: &Segmenter, src: &FrameSource) -> Result<String> {
    let frames = evenly(&list_frames(&src.frames)?, src.max_frames);
    let mut exemplars = Folders::open(&src.exemplars)
        .with_context(|| format!("opening exemplars {}", src.exemplars.display()))?;
    exemplars.set_protocol(Protocol {
        min_pixels: 1,
        ..Protocol::default()
    });
    let mut classes = Vec::new();
    let mut shots_total = 0;
    for class in exemplars.classes().to_vec() {
        let samples = exemplars.samples(class.id)?;
        if samples.is_empty() {
            bail!(
                "{}: class `{}` has no exemplar with a non-empty mask",
                src.exemplars.join(&class.name).display(),
                class.name
            );
        }
        let shots = samples
            .iter()
            .take(MAX_SHOTS)
            .map(|s| {
                let l = s.load()?;
                seg.exemplar(&l.image, &l.mask, &s.image)
                    .with_context(|| format!("exemplar {}", s.image.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        shots_total += shots.len();
        classes.push(seg.encode_class(&shots)?);
    }
    let refs: Vec<_> = classes.iter().collect();
    let bar = mce_train::features::progress(frames.len() as u64, "calibrate frames");
    for f in &frames {
        let img = load_rgb(f)?;
        seg.segment(&img, &refs)
            .with_context(|| format!("segmenting {}", f.display()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(format!(
        "{} frames of {} against {} classes ({shots_total} exemplars) of {}",
        frames.len(),
        src.frames.display(),
        classes.len(),
        src.exemplars.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::evenly;

    #[test]
    fn evenly_spaced_subset() {
        let v: Vec<usize> = (0..10).collect();
        assert_eq!(evenly(&v, Some(3)), vec![0, 3, 6]);
        assert_eq!(evenly(&v, None), v);
        assert_eq!(evenly(&v, Some(20)), v);
        assert_eq!(evenly(&v, Some(0)), vec![0]);
    }
}
