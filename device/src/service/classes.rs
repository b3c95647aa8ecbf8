//! Where the service's classes come from, encoded for a given model: a [`ClassSource`] turns
//! (source, [`Segmenter`]) into [`LoadedClass`]es. It is asked again on every reload (SIGHUP).
//!
//! * [`ExemplarFiles`]: image + mask files named directly (tests, tools).
//! * `RegistryClasses` (in [`super::registry_classes`]): the exemplar registry, optionally
//!   filtered by `--classes`.

use anyhow::{bail, Context, Result};
use mce_core::inference::{ClassEncoding, Segmenter};
use mce_core::preprocess::{load_mask, load_rgb, MaskEncoding};
use serde::Serialize;
use std::path::PathBuf;

/// One class ready for inference.
pub struct LoadedClass {
    pub name: String,
    /// Number of exemplars (shots) behind the encoding.
    pub exemplars: usize,
    pub encoding: ClassEncoding,
}

/// What `/classes` shows of a class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassInfo {
    pub name: String,
    pub exemplars: usize,
    /// Overlay colour (RGB).
    pub colour: [u8; 3],
}

/// The most classes one frame can be segmented against: labels are one byte, 0 is background and
/// 255 is kept free.
pub const MAX_CLASSES: usize = 254;

/// Refuse more than [`MAX_CLASSES`] classes: the one check every class source makes.
pub fn check_class_count(n: usize) -> Result<()> {
    if n > MAX_CLASSES {
        bail!("{n} classes: at most {MAX_CLASSES} are supported");
    }
    Ok(())
}

/// A provider of encoded classes.
pub trait ClassSource: Send {
    /// For logs, e.g. "registry /var/lib/mce/registry".
    fn describe(&self) -> String;
    /// Load and encode every class for `segmenter`.
    fn load(&self, segmenter: &Segmenter) -> Result<Vec<LoadedClass>>;
}

/// `/classes` entries for loaded classes (colours follow [`crate::overlay::PALETTE`]).
pub fn infos(classes: &[LoadedClass]) -> Vec<ClassInfo> {
    classes
        .iter()
        .enumerate()
        .map(|(i, c)| ClassInfo {
            name: c.name.clone(),
            exemplars: c.exemplars,
            colour: crate::overlay::PALETTE[i % crate::overlay::PALETTE.len()],
        })
        .collect()
}

/// Keep the classes named in `filter` (in that order), or all when there is none. An unknown name
/// is an error that lists what is available.
pub fn select<T>(
    mut available: Vec<(String, T)>,
    filter: Option<&[String]>,
    origin: &str,
) -> Result<Vec<(String, T)>> {
    let Some(filter) = filter else {
        return Ok(available);
    };
    let mut out = Vec::with_capacity(filter.len());
    for want in filter {
        if out.iter().any(|(n, _): &(String, T)| n == want) {
            bail!("class {want:?} is named twice in --classes");
        }
        match available.iter().position(|(n, _)| n == want) {
            Some(i) => out.push(available.swap_remove(i)),
            None => {
                let mut names: Vec<&str> = available.iter().map(|(n, _)| n.as_str()).collect();
                names.sort_unstable();
                bail!(
                    "unknown class {want:?}: {origin} has {}",
                    if names.is_empty() {
                        "no classes".to_string()
                    } else {
                        names.join(", ")
                    }
                );
            }
        }
    }
    Ok(out)
}

/// One exemplar file pair.
#[derive(Debug, Clone)]
pub struct ExemplarFile {
    pub image: PathBuf,
    pub mask: PathBuf,
    pub encoding: MaskEncoding,
}

/// Classes given as image + mask files, encoded on every load.
#[derive(Debug, Clone, Default)]
pub struct ExemplarFiles {
    pub classes: Vec<(String, Vec<ExemplarFile>)>,
}

impl ClassSource for ExemplarFiles {
    fn describe(&self) -> String {
        format!("{} class(es) from exemplar files", self.classes.len())
    }

    fn load(&self, segmenter: &Segmenter) -> Result<Vec<LoadedClass>> {
        check_class_count(self.classes.len())?;
        self.classes
            .iter()
            .map(|(name, shots)| {
                let exemplars = shots
                    .iter()
                    .map(|s| {
                        let image = load_rgb(&s.image)?;
                        let mask = load_mask(&s.mask, s.encoding)?;
                        segmenter.exemplar(&image, &mask, &s.mask)
                    })
                    .collect::<mce_core::Result<Vec<_>>>()
                    .with_context(|| format!("class {name:?}"))?;
                Ok(LoadedClass {
                    name: name.clone(),
                    exemplars: exemplars.len(),
                    encoding: segmenter
                        .encode_class(&exemplars)
                        .with_context(|| format!("encoding class {name:?}"))?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_keeps_order_and_names_unknown_classes() {
        let avail = || vec![("dog".to_string(), 1), ("bicycle".to_string(), 2)];
        assert_eq!(select(avail(), None, "x").unwrap().len(), 2);
        let s = select(avail(), Some(&["bicycle".into(), "dog".into()]), "x").unwrap();
        assert_eq!(s[0], ("bicycle".to_string(), 2));
        let e = select(avail(), Some(&["zebra".into()]), "registry /r")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("\"zebra\"") && e.contains("registry /r has bicycle, dog"),
            "{e}"
        );
        let e = select(avail(), Some(&["dog".into(), "dog".into()]), "x")
            .err()
            .unwrap();
        assert!(e.to_string().contains("twice"));
        let e = select(
            Vec::<(String, u8)>::new(),
            Some(&["a".into()]),
            "registry /r",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("no classes"));
    }
}
