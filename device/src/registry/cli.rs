//! The registry's subcommands: `register`, `list`, `show`, `remove`.

use super::validate::{
    check_class_name, check_existing_class_name, prepare_input, DEFAULT_MAX_PIXELS,
};
use super::{ExemplarInput, PreparedInput, RegisterOptions, Registry, RegistryError};
use crate::model::ModelArgs;
use anyhow::Result;
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::{Path, PathBuf};

/// `--registry DIR`.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryDir {
    /// The registry folder. Default: $STATE_DIRECTORY, else /var/lib/mce as root, else
    /// ~/.local/share/mce (XDG data dir).
    #[arg(long = "registry", value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

impl RegistryDir {
    pub fn path(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(Registry::default_dir)
    }
}

/// Arguments of `register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// Class name: 1 to 64 of a-z, 0-9, '_', '-'. An existing class gets the new exemplars appended.
    pub class: String,
    /// An exemplar image (repeat; the n-th --image goes with the n-th --mask).
    #[arg(long = "image", value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Its mask: binary PNG (0/255 or 0/1), or a class-index map with --mask-class.
    #[arg(long = "mask", value_name = "MASK")]
    pub masks: Vec<PathBuf>,
    /// Read masks as class-index PNGs and take this class as foreground (255 = ignore).
    #[arg(long)]
    pub mask_class: Option<u8>,
    /// Resize a mask of another size than its image (nearest neighbour) instead of refusing it.
    #[arg(long)]
    pub resize_mask: bool,
    /// Refuse images and masks with more pixels than this (decompression bombs).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub registry: RegistryDir,
}

/// Arguments of `list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub registry: RegistryDir,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The class.
    pub class: String,
    #[command(flatten)]
    pub registry: RegistryDir,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `remove`.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The class.
    pub class: String,
    /// Remove only this exemplar (0-based, as `show` numbers them) instead of the whole class.
    #[arg(long, value_name = "N")]
    pub exemplar: Option<usize>,
    #[command(flatten)]
    pub registry: RegistryDir,
}

/// Open a registry and print what its open moved to quarantine.
fn open(dir: &Path) -> Result<Registry> {
    let registry = Registry::open(dir)?;
    for q in registry.quarantined() {
        eprintln!("warning: quarantined {q}");
    }
    Ok(registry)
}

pub fn run_register(a: &RegisterArgs) -> Result<()> {
    check_class_name(&a.class)?;
    if a.images.len() != a.masks.len() {
        return Err(RegistryError::CountMismatch {
            images: a.images.len(),
            masks: a.masks.len(),
        }
        .into());
    }
    if a.images.is_empty() {
        return Err(RegistryError::NoInputs {
            class: a.class.clone(),
        }
        .into());
    }
    let opts = RegisterOptions {
        mask_class: a.mask_class,
        resize_mask: a.resize_mask,
        max_pixels: a.max_pixels,
    };
    // Validate every input before loading the model or touching the registry.
    let prepared = a
        .images
        .iter()
        .zip(&a.masks)
        .map(|(image, mask)| {
            let input = ExemplarInput {
                image: image.clone(),
                mask: mask.clone(),
            };
            prepare_input(&input, &opts)
        })
        .collect::<Result<Vec<PreparedInput>, _>>()?;
    for p in prepared.iter().filter(|p| p.mask_resized_from.is_some()) {
        let (w, h) = p.mask_resized_from.expect("filtered");
        eprintln!(
            "note: {} resized from {w}x{h} to {}x{} (nearest neighbour)",
            p.source.mask.display(),
            p.image.width(),
            p.image.height()
        );
    }
    let mut registry = open(&a.registry.path())?;
    let segmenter = a.model.load(&Device::Cpu)?;
    let pb = ProgressBar::new(prepared.len() as u64).with_style(
        ProgressStyle::with_template("computing features {bar:30} {pos}/{len} [{elapsed}]")
            .expect("valid template"),
    );
    let summary = registry.register_prepared(&a.class, &prepared, &segmenter, Some(&pb))?;
    pb.finish_and_clear();
    println!(
        "registered {} exemplar(s) of class `{}`: {} in total, features cached for backbone {} in {}",
        prepared.len(),
        summary.name,
        summary.exemplars,
        segmenter.backbone_identity(),
        registry.dir().display()
    );
    Ok(())
}

pub fn run_list(a: &ListArgs) -> Result<()> {
    let registry = open(&a.registry.path())?;
    let classes = registry.classes();
    if a.json {
        let out = json!({
            "registry": registry.dir(),
            "classes": classes,
            "quarantined": registry.quarantined(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "registry {}: {} class(es)",
        registry.dir().display(),
        classes.len()
    );
    for c in &classes {
        println!("  {:<24} {} exemplar(s)", c.name, c.exemplars);
    }
    Ok(())
}

pub fn run_show(a: &ShowArgs) -> Result<()> {
    check_existing_class_name(&a.class)?;
    let registry = open(&a.registry.path())?;
    let class = registry.class(&a.class)?;
    let rows: Vec<_> = class
        .exemplars
        .iter()
        .enumerate()
        .map(|(n, e)| {
            let (image, mask) = registry.exemplar_files(&a.class, e.id);
            (
                n,
                e,
                image,
                mask,
                registry.cached_identities(&a.class, e.id),
            )
        })
        .collect();
    if a.json {
        let exemplars: Vec<_> = rows
            .iter()
            .map(|(n, e, image, mask, ids)| {
                json!({
                    "index": n, "id": e.id, "created_unix": e.created_unix,
                    "source_image": e.source_image, "source_mask": e.source_mask,
                    "width": e.width, "height": e.height,
                    "foreground_pixels": e.foreground_pixels,
                    "mask_resized_from": e.mask_resized_from,
                    "image_file": image, "image_sha256": e.image.sha256,
                    "mask_file": mask, "mask_sha256": e.mask.sha256,
                    "feature_caches": ids,
                })
            })
            .collect();
        let out = json!({
            "class": a.class, "created_unix": class.created_unix, "exemplars": exemplars,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "class `{}`: {} exemplar(s), created at unix time {}",
        a.class,
        class.exemplars.len(),
        class.created_unix
    );
    for (n, e, image, _, ids) in &rows {
        let fg = 100.0 * e.foreground_pixels as f64 / (f64::from(e.width) * f64::from(e.height));
        println!(
            "  [{n}] id {}: {} + {}, {}x{}, {fg:.1}% foreground, stored as {}, features cached for: {}",
            e.id,
            e.source_image,
            e.source_mask,
            e.width,
            e.height,
            image.display(),
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.join(", ")
            }
        );
    }
    Ok(())
}

pub fn run_remove(a: &RemoveArgs) -> Result<()> {
    check_existing_class_name(&a.class)?;
    let mut registry = open(&a.registry.path())?;
    match a.exemplar {
        None => {
            let n = registry.class(&a.class)?.exemplars.len();
            registry.remove_class(&a.class)?;
            println!("removed class `{}` and its {n} exemplar(s)", a.class);
        }
        Some(index) => {
            registry.remove_exemplar(&a.class, index)?;
            let left = registry
                .classes()
                .into_iter()
                .find(|c| c.name == a.class)
                .map_or(0, |c| c.exemplars);
            println!(
                "removed exemplar {index} of class `{}`; {left} left{}",
                a.class,
                if left == 0 {
                    " (the class is removed)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}
