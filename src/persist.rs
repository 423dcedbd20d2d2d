//! Atomic writes for everything the router keeps on disk (identity key,
//! IPAM ring and allocations): write a temp file beside the target, fsync it,
//! rename it over the target, fsync the directory. A reader after kill -9
//! sees either the old file or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `bytes` to `path` atomically, with the given file mode (e.g. 0o600).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The permission bits of `path` that give group or others any access, if
/// there are any (DESIGN.md "Security model": key files are 0600).
pub fn exposed_mode(path: &Path) -> io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    Ok((mode & 0o077 != 0).then_some(mode))
}

/// Warns, with the one-line fix, when `what` at `path` is readable or
/// writable by group or others; says nothing when it cannot be checked.
pub fn warn_if_exposed(path: &Path, what: &str) {
    if let Ok(Some(mode)) = exposed_mode(path) {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{mode:o}"),
            "the {what} is accessible to group or others; fix: chmod 600 {}",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_file_open_to_group_or_others_is_reported_with_its_mode() {
        let dir = std::env::temp_dir().join(format!("weft-exposed-{}", std::process::id()));
        ensure_private_dir(&dir).expect("mkdir");
        let path = dir.join("secret");
        write_atomic(&path, b"x", 0o600).expect("write");
        assert_eq!(exposed_mode(&path).expect("stat"), None);
        for mode in [0o640, 0o604, 0o644, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(exposed_mode(&path).expect("stat"), Some(mode));
        }
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn write_atomic_replaces_content_and_sets_mode() {
        let dir = std::env::temp_dir().join(format!("weft-persist-{}", std::process::id()));
        ensure_private_dir(&dir).expect("mkdir");
        let path = dir.join("state");
        write_atomic(&path, b"one", 0o600).expect("first write");
        write_atomic(&path, b"two", 0o600).expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .expect("readdir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "temp files left behind");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
