//! What [`Registry::open`](super::Registry::open) does before it trusts a registry folder:
//!
//! * a corrupt `index.json` is moved, with the `exemplars/` and `features/` folders it described, into
//!   `quarantine/<unix time>-index/` (nothing is deleted, so it can be recovered by hand) and the
//!   registry starts empty; the open succeeds and reports it, so a service never crash-loops on it;
//! * every exemplar's image and mask are checked against the size and SHA-256 in the index; a missing
//!   or corrupt one is moved with its feature caches into `quarantine/<unix time>-<class>-<id>/`
//!   (with `entry.json`, its index entry, and `reason.txt`) and removed from the index; a class left
//!   without exemplars is removed too;
//! * files no committed index refers to (left by a change that was interrupted before or after its
//!   commit) are deleted.

use super::error::RegistryError;
use super::index::{self, features_name, image_name, mask_name, ExemplarEntry, Index, Layout};
use super::store;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, RegistryError>;

/// Something the last open moved aside, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quarantined {
    /// The exemplar's class; `None` when the index itself was quarantined.
    pub class: Option<String>,
    /// The exemplar's id; `None` when the index itself was quarantined.
    pub exemplar_id: Option<u64>,
    pub reason: String,
    /// The folder under `<dir>/quarantine/` that holds the moved files and `reason.txt`.
    pub moved_to: PathBuf,
}

impl std::fmt::Display for Quarantined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.class, self.exemplar_id) {
            (Some(c), Some(id)) => write!(f, "class `{c}`, exemplar id {id}")?,
            _ => write!(f, "the index")?,
        }
        write!(
            f,
            ": {} (moved to {})",
            self.reason,
            self.moved_to.display()
        )
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new, unique folder `quarantine/<unix time>-<what>[-n]`, with `reason.txt`.
fn new_folder(layout: &Layout, what: &str, reason: &str) -> Result<PathBuf> {
    let base = format!("{}-{what}", unix_now());
    let root = layout.quarantine_dir();
    let mut dir = root.join(&base);
    let mut n = 2;
    while dir.exists() {
        dir = root.join(format!("{base}-{n}"));
        n += 1;
    }
    store::ensure_dir(&dir)?;
    store::write_atomic(&dir.join("reason.txt"), format!("{reason}\n").as_bytes())?;
    Ok(dir)
}

fn move_if_present(from: &Path, to: &Path) -> Result<()> {
    if from.symlink_metadata().is_ok() {
        store::move_path(from, to)?;
    }
    Ok(())
}

/// Move a corrupt index and the data it described into quarantine.
pub(crate) fn quarantine_index(layout: &Layout, reason: &str) -> Result<Quarantined> {
    let index_path = layout.index();
    let reason = format!("{}: {reason}", index_path.display());
    let dir = new_folder(layout, "index", &reason)?;
    move_if_present(&layout.features_root(), &dir.join("features"))?;
    move_if_present(&layout.exemplars_dir(), &dir.join("exemplars"))?;
    move_if_present(&index_path, &dir.join("index.json"))?; // last: a crash before repeats all this
    tracing::warn!(
        "registry index quarantined: {reason}; the registry starts empty, the old data is in {}",
        dir.display()
    );
    Ok(Quarantined {
        class: None,
        exemplar_id: None,
        reason,
        moved_to: dir,
    })
}

/// Why a stored file does not match its record, if it does not.
fn file_problem(path: &Path, rec: &index::FileRecord) -> Result<Option<String>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Some(format!("{} is missing", path.display())))
        }
        Err(e) => return Err(RegistryError::io(path, e)),
    };
    if bytes.len() as u64 != rec.bytes {
        return Ok(Some(format!(
            "{} has {} bytes, the index recorded {}",
            path.display(),
            bytes.len(),
            rec.bytes
        )));
    }
    let sha = store::sha256_hex(&bytes);
    Ok((sha != rec.sha256).then(|| {
        format!(
            "{}: checksum mismatch (SHA-256 {sha}, the index recorded {})",
            path.display(),
            rec.sha256
        )
    }))
}

/// Every feature cache file of one exemplar, over all backbone identities.
fn feature_files(layout: &Layout, class: &str, id: u64) -> Vec<PathBuf> {
    let Ok(identities) = std::fs::read_dir(layout.features_root()) else {
        return Vec::new();
    };
    identities
        .flatten()
        .map(|d| d.path().join(class).join(features_name(id)))
        .filter(|p| p.exists())
        .collect()
}

fn quarantine_exemplar(
    layout: &Layout,
    class: &str,
    entry: &ExemplarEntry,
    reason: &str,
) -> Result<Quarantined> {
    let dir = new_folder(layout, &format!("{class}-{}", entry.id), reason)?;
    let json = serde_json::to_vec_pretty(entry).expect("entry serialises");
    store::write_atomic(&dir.join("entry.json"), &json)?;
    move_if_present(
        &layout.image(class, entry.id),
        &dir.join(image_name(entry.id)),
    )?;
    move_if_present(
        &layout.mask(class, entry.id),
        &dir.join(mask_name(entry.id)),
    )?;
    for (n, f) in feature_files(layout, class, entry.id).iter().enumerate() {
        move_if_present(f, &dir.join(format!("features-{n}.safetensors")))?;
    }
    tracing::warn!(
        "registry: class `{class}`, exemplar {} quarantined: {reason} (moved to {})",
        entry.id,
        dir.display()
    );
    Ok(Quarantined {
        class: Some(class.to_string()),
        exemplar_id: Some(entry.id),
        reason: reason.to_string(),
        moved_to: dir,
    })
}

/// Check every exemplar's files; quarantine bad ones and commit the index without them.
pub(crate) fn verify_exemplars(layout: &Layout, index: &mut Index) -> Result<Vec<Quarantined>> {
    let moved = take_bad_exemplars(layout, index)?
        .iter()
        .map(|(class, e, reason)| quarantine_exemplar(layout, class, e, reason))
        .collect::<Result<Vec<_>>>()?;
    if !moved.is_empty() {
        index::save(&layout.index(), index)?;
    }
    Ok(moved)
}

/// A read-only registry: leave out (in memory only) the exemplars whose files do not match the
/// index, moving nothing; the reasons, for the warning that repairs were skipped.
pub(crate) fn skip_bad_exemplars(layout: &Layout, index: &mut Index) -> Result<Vec<String>> {
    Ok(take_bad_exemplars(layout, index)?
        .into_iter()
        .map(|(class, e, reason)| format!("class `{class}`, exemplar {}: {reason}", e.id))
        .collect())
}

/// Remove from `index` (in memory) every exemplar whose files do not match their records, and the
/// classes left empty; each with its class and the reason.
fn take_bad_exemplars(
    layout: &Layout,
    index: &mut Index,
) -> Result<Vec<(String, ExemplarEntry, String)>> {
    let mut bad = Vec::new();
    for (class, entry) in index.classes.iter_mut() {
        let mut checked = Vec::with_capacity(entry.exemplars.len());
        for e in std::mem::take(&mut entry.exemplars) {
            let mut problems = Vec::new();
            problems.extend(file_problem(&layout.image(class, e.id), &e.image)?);
            problems.extend(file_problem(&layout.mask(class, e.id), &e.mask)?);
            checked.push((e, problems));
        }
        let survivors = checked.iter().filter(|(_, p)| p.is_empty()).count();
        for (e, problems) in checked {
            if problems.is_empty() {
                entry.exemplars.push(e);
                continue;
            }
            let mut reason = problems.join("; ");
            if survivors == 0 {
                reason.push_str(&format!(
                    "; class `{class}` has no exemplar left and is removed"
                ));
            }
            bad.push((class.clone(), e, reason));
        }
    }
    index.classes.retain(|_, c| !c.exemplars.is_empty());
    Ok(bad)
}

/// Delete what no committed index refers to; returns how many files and folders went.
pub(crate) fn clean_orphans(layout: &Layout, index: &Index) -> Result<usize> {
    let mut removed = 0;
    let mut remove = |path: &Path, is_dir: bool| -> Result<()> {
        tracing::debug!("registry: removing orphan {}", path.display());
        removed += 1;
        if is_dir {
            store::remove_dir_all(path)
        } else {
            store::remove_file(path)
        }
    };
    for (path, name, is_dir) in entries(&layout.root)? {
        if !is_dir && store::is_tmp_name(&name) {
            remove(&path, false)?;
        }
    }
    let expected = |class: &str, names: fn(u64) -> Vec<String>| -> BTreeSet<String> {
        index.classes[class]
            .exemplars
            .iter()
            .flat_map(|e| names(e.id))
            .collect()
    };
    for (path, class, is_dir) in entries(&layout.exemplars_dir())? {
        if !is_dir || !index.classes.contains_key(&class) {
            remove(&path, is_dir)?;
            continue;
        }
        let want = expected(&class, |id| vec![image_name(id), mask_name(id)]);
        for (file, name, is_dir) in entries(&path)? {
            if is_dir || !want.contains(&name) {
                remove(&file, is_dir)?;
            }
        }
    }
    for (id_path, _, is_dir) in entries(&layout.features_root())? {
        if !is_dir {
            remove(&id_path, false)?;
            continue;
        }
        for (path, class, is_dir) in entries(&id_path)? {
            if !is_dir || !index.classes.contains_key(&class) {
                remove(&path, is_dir)?;
                continue;
            }
            let want = expected(&class, |id| vec![features_name(id)]);
            for (file, name, is_dir) in entries(&path)? {
                if is_dir || !want.contains(&name) {
                    remove(&file, is_dir)?;
                }
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            "registry: removed {removed} file(s) left by an interrupted change in {}",
            layout.root.display()
        );
    }
    Ok(removed)
}

/// `(path, file name, is a folder)` of a folder's entries; an absent folder has none.
fn entries(dir: &Path) -> Result<Vec<(PathBuf, String, bool)>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RegistryError::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| RegistryError::io(dir, e))?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((entry.path(), name, is_dir));
    }
    Ok(out)
}
