//! File writes that never leave a half-written file under the final name.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;

/// Writes `bytes` to `path` atomically: a temporary file in the same folder is
/// written, synced and renamed over `path`, so a reader (or a resumed run)
/// reads either the old content or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(parent_dir(path))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // tempfile creates files readable by the owner only.
    tmp.as_file().set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Permissions of result files: readable by everyone, like files made by `>`.
const FILE_MODE: u32 = 0o644;

/// Runs `write` on a temporary path in the folder of `path`, then renames the
/// result over `path`. It serves writers that take a path, such as libtorch's.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = parent_dir(path);
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(&format!("-{file_name}"))
        .tempfile_in(dir)
        .with_context(|| format!("failed to create a temporary file in {}", dir.display()))?
        .into_temp_path();
    write(&tmp)?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(FILE_MODE)))
        .with_context(|| format!("failed to sync {}", tmp.display()))?;
    tmp.persist(path).with_context(|| format!("failed to rename into {}", path.display()))?;
    Ok(())
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let mut json = serde_json::to_vec_pretty(value)?;
    json.push(b'\n');
    write_atomic(path, &json).with_context(|| format!("failed to write {}", path.display()))
}

/// Creates `dir` and checks that a file can be written in it.
pub fn ensure_writable_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| {
        format!("output folder {} cannot be created; choose another with --out", dir.display())
    })?;
    tempfile::tempfile_in(dir).with_context(|| {
        format!("output folder {} is not writable; choose another with --out", dir.display())
    })?;
    Ok(())
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temporary files left behind");
    }

    #[test]
    fn unwritable_dir_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        fs::write(&file, b"x").unwrap();
        let err = ensure_writable_dir(&file.join("sub")).unwrap_err();
        assert!(format!("{err:#}").contains("--out"), "{err:#}");
    }
}
