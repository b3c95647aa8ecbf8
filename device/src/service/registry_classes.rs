//! The exemplar registry as a [`ClassSource`]: the registry folder is opened (verified and
//! repaired) on every load, so a reload (SIGHUP) sees classes registered since; exemplar features
//! come from the registry's cache for this backbone.

use super::classes::{check_class_count, select, ClassSource, LoadedClass};
use crate::registry::Registry;
use anyhow::{Context, Result};
use mce_core::inference::Segmenter;
use std::path::PathBuf;
use std::time::Instant;

/// Classes of a registry folder, optionally only those named (in that order).
#[derive(Debug, Clone)]
pub struct RegistryClasses {
    pub dir: PathBuf,
    pub filter: Option<Vec<String>>,
}

impl ClassSource for RegistryClasses {
    fn describe(&self) -> String {
        format!("registry {}", self.dir.display())
    }

    fn load(&self, segmenter: &Segmenter) -> Result<Vec<LoadedClass>> {
        let t = Instant::now();
        let registry = Registry::open(&self.dir)
            .with_context(|| format!("opening the registry {}", self.dir.display()))?;
        for q in registry.quarantined() {
            tracing::warn!("registry {}: quarantined {q}", self.dir.display());
        }
        let available: Vec<(String, usize)> = registry
            .classes()
            .into_iter()
            .map(|c| (c.name, c.exemplars))
            .collect();
        let chosen = select(
            available,
            self.filter.as_deref(),
            &format!("the registry {}", self.dir.display()),
        )?;
        check_class_count(chosen.len())?;
        if chosen.is_empty() {
            tracing::warn!(
                "the registry {} has no classes: frames are passed through unsegmented \
                 (register some with `mce-device register`, then send SIGHUP)",
                self.dir.display()
            );
        }
        let mut out = Vec::with_capacity(chosen.len());
        for (name, _) in chosen {
            let exemplars = registry
                .exemplars(&name, segmenter)
                .with_context(|| format!("loading the exemplars of class {name:?}"))?;
            let encoding = segmenter
                .encode_class(&exemplars)
                .with_context(|| format!("encoding class {name:?}"))?;
            out.push(LoadedClass {
                name,
                exemplars: exemplars.len(),
                encoding,
            });
        }
        tracing::info!(
            "loaded {} class(es) from {} in {:.0} ms",
            out.len(),
            self.describe(),
            t.elapsed().as_secs_f64() * 1e3
        );
        Ok(out)
    }
}
