//! The versioned index (`<dir>/index.json`) and the registry's file layout.
//!
//! The index is the registry's only source of truth and its commit point: a class or exemplar exists
//! exactly when the index lists it. Every stored file is named from its class and numeric id alone
//! (never from user input), and the index records each file's size and SHA-256.
//!
//! ```text
//! <dir>/index.json                                     schema version, next id, classes -> exemplars
//! <dir>/.lock                                          exclusive lock while the registry changes
//! <dir>/exemplars/<class>/<id>.png                     the image, re-encoded as RGB PNG
//! <dir>/exemplars/<class>/<id>.mask.png                its mask, 8-bit 0/255, same size
//! <dir>/features/<identity>/<class>/<id>.safetensors   backbone features (cache, per backbone identity)
//! <dir>/quarantine/<unix time>-<what>/                 corrupt entries moved aside, with reason.txt
//! ```

use super::error::RegistryError;
use super::store;
use super::validate::check_existing_class_name;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The schema version this build writes and reads. Older versions do not exist yet; a newer one is
/// refused with [`RegistryError::NewerSchema`] and left untouched.
pub const SCHEMA_VERSION: u32 = 1;

/// The whole index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub schema_version: u32,
    /// The id the next exemplar gets; ids are never reused.
    pub next_id: u64,
    pub classes: BTreeMap<String, ClassEntry>,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            next_id: 1,
            classes: BTreeMap::new(),
        }
    }
}

/// One class: its exemplars in registration order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassEntry {
    /// Seconds since the Unix epoch when the class was first registered.
    pub created_unix: u64,
    pub exemplars: Vec<ExemplarEntry>,
}

/// One stored exemplar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExemplarEntry {
    /// Unique within the registry, never reused; names the stored files.
    pub id: u64,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    /// The file names (without folders) the image and mask were registered from.
    pub source_image: String,
    pub source_mask: String,
    /// Image size in pixels (the stored mask has the same size).
    pub width: u32,
    pub height: u32,
    /// Foreground pixels of the stored mask.
    pub foreground_pixels: u64,
    /// The mask's original size when `--resize-mask` resized it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_resized_from: Option<(u32, u32)>,
    pub image: FileRecord,
    pub mask: FileRecord,
}

/// Size and checksum of a stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// File names and paths of a registry folder.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn index(&self) -> PathBuf {
        self.root.join("index.json")
    }
    pub fn exemplars_dir(&self) -> PathBuf {
        self.root.join("exemplars")
    }
    pub fn class_dir(&self, class: &str) -> PathBuf {
        self.exemplars_dir().join(class)
    }
    pub fn image(&self, class: &str, id: u64) -> PathBuf {
        self.class_dir(class).join(image_name(id))
    }
    pub fn mask(&self, class: &str, id: u64) -> PathBuf {
        self.class_dir(class).join(mask_name(id))
    }
    pub fn features_root(&self) -> PathBuf {
        self.root.join("features")
    }
    pub fn features(&self, identity: &str, class: &str, id: u64) -> PathBuf {
        self.features_root()
            .join(identity)
            .join(class)
            .join(features_name(id))
    }
    pub fn quarantine_dir(&self) -> PathBuf {
        self.root.join("quarantine")
    }
}

pub(crate) fn image_name(id: u64) -> String {
    format!("{id:06}.png")
}
pub(crate) fn mask_name(id: u64) -> String {
    format!("{id:06}.mask.png")
}
pub(crate) fn features_name(id: u64) -> String {
    format!("{id:06}.safetensors")
}

/// What reading the index found.
pub(crate) enum Loaded {
    /// No index yet: a new, empty registry.
    Missing,
    Valid(Index),
    /// Unreadable or inconsistent; the reason names the problem.
    Corrupt(String),
}

/// Read and check `index.json`. Errors: I/O other than "not found", and a newer schema.
pub(crate) fn load(path: &Path) -> Result<Loaded, RegistryError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) => return Err(RegistryError::io(path, e)),
    };
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return Ok(Loaded::Corrupt(format!("not valid JSON: {e}"))),
    };
    let Some(version) = value.get("schema_version").and_then(|v| v.as_u64()) else {
        return Ok(Loaded::Corrupt("no numeric `schema_version`".into()));
    };
    if version > u64::from(SCHEMA_VERSION) {
        return Err(RegistryError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < u64::from(SCHEMA_VERSION) {
        return Ok(Loaded::Corrupt(format!(
            "schema version {version} never existed (this build writes {SCHEMA_VERSION})"
        )));
    }
    let index: Index = match serde_json::from_value(value) {
        Ok(i) => i,
        Err(e) => return Ok(Loaded::Corrupt(format!("unexpected content: {e}"))),
    };
    Ok(match check(&index) {
        Ok(()) => Loaded::Valid(index),
        Err(reason) => Loaded::Corrupt(reason),
    })
}

/// Consistency rules no index written by this code breaks.
fn check(index: &Index) -> Result<(), String> {
    let mut ids = BTreeSet::new();
    for (class, entry) in &index.classes {
        check_existing_class_name(class).map_err(|e| e.to_string())?;
        for e in &entry.exemplars {
            if e.id == 0 || e.id >= index.next_id || !ids.insert(e.id) {
                return Err(format!(
                    "class `{class}`: exemplar id {} is duplicated or not below next_id {}",
                    e.id, index.next_id
                ));
            }
            for rec in [&e.image, &e.mask] {
                let hex = rec
                    .sha256
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                if rec.sha256.len() != 64 || !hex {
                    return Err(format!(
                        "class `{class}`: exemplar {} has a malformed checksum {:?}",
                        e.id, rec.sha256
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Write the index atomically: this is the commit point of every change.
pub(crate) fn save(path: &Path, index: &Index) -> Result<(), RegistryError> {
    let mut bytes = serde_json::to_vec_pretty(index).expect("the index serialises");
    bytes.push(b'\n');
    store::step("commit index");
    store::write_atomic(path, &bytes)?;
    store::step("committed index");
    Ok(())
}
