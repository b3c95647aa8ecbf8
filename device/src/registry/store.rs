//! Crash-safe file operations of the registry: atomic writes (temporary file in the same folder,
//! fsync, rename, fsync of the folder), durable folder creation, removal and moves, the exclusive
//! lock on `<dir>/.lock`, SHA-256 of files, and the test hook that pauses between write steps.
//!
//! A change is a sequence of such operations in which the rename of `index.json` is the commit point
//! (see the module documentation of [`crate::registry`]).

use super::error::RegistryError;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

type Result<T> = std::result::Result<T, RegistryError>;

/// Hidden test hook: with `MCE_REGISTRY_TEST_PAUSE_MS=N` every write step prints
/// `registry-step: <name>` to stderr and then sleeps N ms, so that a test killing the process lands
/// inside the write phase often. Unset (the normal case) it costs nothing.
pub const TEST_PAUSE_ENV: &str = "MCE_REGISTRY_TEST_PAUSE_MS";

/// Marker of a temporary file: `.<name>.tmp.<pid>.<n>`.
pub(crate) const TMP_MARKER: &str = ".tmp.";

/// The test hook of [`TEST_PAUSE_ENV`]: announce a step, then pause.
pub(crate) fn step(name: &str) {
    static PAUSE: OnceLock<Option<Duration>> = OnceLock::new();
    let pause = PAUSE.get_or_init(|| {
        std::env::var(TEST_PAUSE_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
    });
    if let Some(d) = pause {
        eprintln!("registry-step: {name}");
        std::thread::sleep(*d);
    }
}

/// Lower-case hex SHA-256 of bytes.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Is this file name one of our temporary files?
pub(crate) fn is_tmp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TMP_MARKER)
}

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// fsync a folder, so that the names created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| RegistryError::io(dir, e))
}

/// Create `dir` and its missing parents, fsyncing each parent after a creation.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = parent_of(dir);
    if parent != dir {
        ensure_dir(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(RegistryError::io(dir, e)),
    }
}

/// Replace `path` by `bytes` so that a crash at any instant leaves the old or the new content.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        File::create(tmp)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| e.to_string())
    })
}

/// [`write_atomic`] for content that `write` puts into the temporary file it is given.
pub(crate) fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), String>,
) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent_of(path);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}{TMP_MARKER}{}.{n}", std::process::id()));
    let written = write(&tmp).and_then(|()| {
        OpenOptions::new()
            .write(true)
            .open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| e.to_string())
    });
    if let Err(reason) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(RegistryError::io(&tmp, std::io::Error::other(reason)));
    }
    step(&format!("wrote temporary {}", tmp.display()));
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(RegistryError::io(path, e));
    }
    sync_dir(dir)
}

/// Remove a file (absent is fine) and make the removal durable.
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(parent_of(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RegistryError::io(path, e)),
    }
}

/// Remove a folder tree (absent is fine) and make the removal durable.
pub(crate) fn remove_dir_all(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => sync_dir(parent_of(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RegistryError::io(path, e)),
    }
}

/// Move `from` (file or folder) to `to` (same file system), durably in both folders.
pub(crate) fn move_path(from: &Path, to: &Path) -> Result<()> {
    ensure_dir(parent_of(to))?;
    std::fs::rename(from, to).map_err(|e| RegistryError::io(from, e))?;
    sync_dir(parent_of(from))?;
    sync_dir(parent_of(to))
}

/// Read a whole file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| RegistryError::io(path, e))
}

/// The exclusive lock on `<dir>/.lock`, held while the registry changes; released on drop.
pub(crate) struct DirLock {
    _file: File,
}

/// Whether `e` says the file system or the file's owner does not let this process write.
pub(crate) fn is_not_writable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    )
}

/// Take the exclusive lock of a registry folder, waiting for another process that holds it.
pub(crate) fn lock(dir: &Path) -> Result<DirLock> {
    let path: PathBuf = dir.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| RegistryError::io(&path, e))?;
    file.lock().map_err(|e| RegistryError::io(&path, e))?;
    Ok(DirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_and_read_only_errors_mean_not_writable() {
        use std::io::{Error, ErrorKind};
        assert!(is_not_writable(&Error::from(ErrorKind::PermissionDenied)));
        assert!(is_not_writable(&Error::from(ErrorKind::ReadOnlyFilesystem)));
        assert!(is_not_writable(&Error::from_raw_os_error(30))); // EROFS
        assert!(is_not_writable(&Error::from_raw_os_error(13))); // EACCES
        assert!(!is_not_writable(&Error::from(ErrorKind::NotFound)));
        assert!(!is_not_writable(&Error::from_raw_os_error(28))); // ENOSPC
    }
}
