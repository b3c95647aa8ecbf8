//! The scan: decode every label once and record, per image, how many pixels each class covers.
//! Runs on all cores; [`super::Catalog::scan`] caches the result. An unreadable label does not
//! stop the scan: the image gets no class and its error is kept for `check_data`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use mce_core::metrics::IGNORE;
use mce_core::preprocess::{load_mask, MaskEncoding};

use super::catalog::{Catalog, LabelSource};
use super::labels::label_histogram;
use super::ClassId;

/// The scan result of one image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageScan {
    /// `(width, height)` of the label, when it could be read.
    pub label_size: Option<(u32, u32)>,
    /// Pixels per class present (at least one pixel), ascending by class.
    pub class_pixels: Vec<(ClassId, u64)>,
    /// Label values that are neither a class of the dataset, 0 (when 0 is not a class) nor 255.
    pub unknown_values: Vec<u8>,
    /// Why the label could not be read (names the file).
    pub error: Option<String>,
}

impl ImageScan {
    /// Pixels of `class` (0 when absent).
    pub fn pixels(&self, class: ClassId) -> u64 {
        self.class_pixels
            .binary_search_by_key(&class, |&(c, _)| c)
            .map_or(0, |i| self.class_pixels[i].1)
    }
}

/// Per-image class pixel counts of a whole catalog, in entry order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub images: Vec<ImageScan>,
}

impl Scan {
    /// Scan every entry of `catalog` (in parallel).
    pub fn run(catalog: &Catalog) -> Scan {
        let started = std::time::Instant::now();
        let ids = catalog.class_ids();
        let images = par_map(catalog.entries(), |e| scan_label(&e.label, &ids));
        tracing::info!(
            dataset = catalog.name(),
            images = images.len(),
            seconds = started.elapsed().as_secs_f64(),
            "scanned labels"
        );
        Scan { images }
    }
}

fn scan_label(label: &LabelSource, ids: &[ClassId]) -> ImageScan {
    let mut out = ImageScan::default();
    match label {
        LabelSource::ClassIndex(path) => match label_histogram(path) {
            Ok(h) => {
                out.label_size = Some((h.width, h.height));
                for (v, &n) in h.counts.iter().enumerate() {
                    if n == 0 || v == IGNORE as usize {
                        continue;
                    }
                    if ids.binary_search(&v).is_ok() {
                        out.class_pixels.push((v, n));
                    } else if v != 0 {
                        out.unknown_values.push(v as u8);
                    }
                }
            }
            Err(e) => out.error = Some(e.to_string()),
        },
        LabelSource::Binary { path, class } => match load_mask(path, MaskEncoding::Binary) {
            Ok(m) => {
                out.label_size = Some((m.width as u32, m.height as u32));
                let n = m.foreground_count() as u64;
                if n > 0 {
                    out.class_pixels.push((*class, n));
                }
            }
            Err(e) => out.error = Some(e.to_string()),
        },
        LabelSource::Decoded(label) => out = label.scan(),
    }
    out
}

/// `items.iter().map(f)` on all available cores, results in input order.
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len().max(1));
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.expect("every index is processed once"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::par_map;

    #[test]
    fn par_map_keeps_order() {
        let v: Vec<usize> = (0..1000).collect();
        assert_eq!(
            par_map(&v, |x| x * 2),
            v.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
        assert!(par_map(&[] as &[u8], |x| *x).is_empty());
    }
}
