//! The one way files are replaced: a temporary file in the target's directory, written and
//! fsynced, renamed (or linked) into place, then the directory fsynced so the rename itself
//! survives a power cut. A reader sees the old content or the new, never a mix; a failure at any
//! step leaves the old file as it was (the temporary file is removed when it is dropped).

use std::fs::{File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What to do when the target exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it (rename over it).
    Replace,
    /// Refuse, leaving it untouched ([`WriteError::already_exists`] says so).
    Refuse,
}

/// A step of an atomic write failed; the target is unchanged.
#[derive(Debug, thiserror::Error)]
#[error("cannot {operation} {}", path.display())]
pub struct WriteError {
    /// The step, e.g. "write a temporary file for".
    pub operation: &'static str,
    /// The target (or, for the directory fsync, its directory).
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

impl WriteError {
    /// Whether the write was refused because the target exists ([`Existing::Refuse`]).
    pub fn already_exists(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::AlreadyExists
    }
}

/// Writes `bytes` to `path` atomically with `mode` (the umask may narrow it). `prepare` runs on
/// the temporary file before anything is written, for callers that set owner or exact mode, so
/// the target never appears with the wrong ones.
pub fn write(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    existing: Existing,
    prepare: impl FnOnce(&File) -> std::io::Result<()>,
) -> Result<(), WriteError> {
    let fail = |operation| {
        move |source| WriteError {
            operation,
            path: path.to_path_buf(),
            source,
        }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))
        .map_err(fail("name a file at"))?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut file = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(fail("create a temporary file for"))?;
    prepare(file.as_file()).map_err(fail("set owner and mode of the temporary file for"))?;
    file.write_all(bytes)
        .map_err(fail("write the temporary file for"))?;
    file.as_file()
        .sync_all()
        .map_err(fail("fsync the temporary file for"))?;
    match existing {
        Existing::Replace => file
            .persist(path)
            .map(drop)
            .map_err(|e| e.error)
            .map_err(fail("rename into place")),
        Existing::Refuse => file
            .persist_noclobber(path)
            .map(drop)
            .map_err(|e| e.error)
            .map_err(fail("link into place")),
    }?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| WriteError {
            operation: "fsync directory",
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_intact_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.toml");
        write(&path, b"old", 0o640, Existing::Replace, |_| Ok(())).unwrap();
        let err = write(&path, b"new", 0o640, Existing::Replace, |_| {
            Err(std::io::Error::other("refused by the caller"))
        })
        .unwrap_err();
        assert_eq!(err.path, path);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(entries(dir.path()), ["state.toml"]);
        // A target that is a directory makes the rename itself fail.
        let taken = dir.path().join("taken");
        std::fs::create_dir(&taken).unwrap();
        std::fs::write(taken.join("inside"), "kept").unwrap();
        let err = write(&taken, b"new", 0o640, Existing::Replace, |_| Ok(())).unwrap_err();
        assert_eq!(err.operation, "rename into place");
        assert_eq!(std::fs::read(taken.join("inside")).unwrap(), b"kept");
        assert_eq!(entries(dir.path()), ["state.toml", "taken"]);
    }

    #[test]
    fn replaces_or_refuses_an_existing_file_with_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("migd.toml");
        write(&path, b"first", 0o600, Existing::Refuse, |_| Ok(())).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = write(&path, b"second", 0o600, Existing::Refuse, |_| Ok(())).unwrap_err();
        assert!(err.already_exists(), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        write(&path, b"third", 0o600, Existing::Replace, |_| Ok(())).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"third");
        assert_eq!(entries(dir.path()), ["migd.toml"]);
    }
}
