//! `mce-device segment`: segment one query image from a few support exemplars.

use crate::model::ModelArgs;
use crate::overlay;
use anyhow::{Context, Result};
use candle_core::Device;
use mce_core::preprocess::{load_mask, load_rgb, MaskEncoding};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `segment`.
#[derive(Debug, clap::Args)]
pub struct SegmentArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A support exemplar as `image:mask` (repeat for K shots). Masks: binary PNG (0/255 or 0/1).
    #[arg(long = "support", required = true, value_parser = parse_pair)]
    pub supports: Vec<(PathBuf, PathBuf)>,
    /// The image to segment.
    #[arg(long)]
    pub query: PathBuf,
    /// Where to write the predicted mask (PNG, 0/255, query size).
    #[arg(long)]
    pub out: PathBuf,
    /// Optional overlay of the prediction on the query (PNG/JPEG).
    #[arg(long)]
    pub overlay: Option<PathBuf>,
    /// Read masks as class-index PNGs and take this class as foreground (255 = ignore).
    #[arg(long)]
    pub mask_class: Option<u8>,
}

fn parse_pair(s: &str) -> std::result::Result<(PathBuf, PathBuf), String> {
    let (img, mask) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected IMAGE:MASK, got {s:?}"))?;
    if img.is_empty() || mask.is_empty() {
        return Err(format!("expected IMAGE:MASK, got {s:?}"));
    }
    Ok((img.into(), mask.into()))
}

pub fn run(args: &SegmentArgs) -> Result<()> {
    let device = Device::Cpu;
    let segmenter = args.model.load(&device)?;
    let encoding = args
        .mask_class
        .map_or(MaskEncoding::Binary, MaskEncoding::ClassIndex);
    let exemplars = args
        .supports
        .iter()
        .map(|(img, mask)| {
            let image = load_rgb(img)?;
            let m = load_mask(mask, encoding)?;
            segmenter.exemplar(&image, &m, mask)
        })
        .collect::<mce_core::Result<Vec<_>>>()?;
    let class = segmenter.encode_class(&exemplars)?;
    let query = load_rgb(&args.query)?;
    let start = Instant::now();
    let result = segmenter
        .segment(&query, &[&class])?
        .pop()
        .context("no result")?;
    let elapsed = start.elapsed();
    let mask = result.mask();
    for path in std::iter::once(&args.out).chain(&args.overlay) {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    overlay::mask_image(result.width, result.height, &mask)
        .save(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    if let Some(path) = &args.overlay {
        let mut frame = query.clone();
        overlay::blend(&mut frame, &mask, overlay::PALETTE[0]);
        frame
            .save(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let fg = mask.iter().filter(|&&v| v > 0).count() as f64 / mask.len() as f64;
    println!(
        "segmented {} ({}x{}) from {} exemplar(s): {:.1}% foreground, {:.0} ms; mask -> {}",
        args.query.display(),
        result.width,
        result.height,
        exemplars.len(),
        100.0 * fg,
        elapsed.as_secs_f64() * 1e3,
        args.out.display()
    );
    if !segmenter.trained {
        crate::model::warn_untrained();
    }
    Ok(())
}
