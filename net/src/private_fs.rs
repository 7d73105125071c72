//! Files and directories readable by their owner alone: directories 0700, files 0600 (on Unix;
//! elsewhere the platform's defaults apply). The client keeps its profile (the directory, small
//! state files, the CLI's configuration) and the relay its data directory (the database, the TLS
//! key, the reset key) this way.

use std::io::Write;
use std::path::Path;

/// Creates `dir` (and missing parents) as 0700, and narrows an existing `dir` to 0700, so that
/// nothing below it (databases included, whatever modes they create files with) can be read by
/// another user.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    Ok(())
}

/// Replaces the contents of `path` with `bytes` atomically (a 0600 temporary file, synced, then
/// renamed over it): a reader sees the old contents or the new ones, never a mix, and the file
/// is never readable by another user, not even for a moment.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    // A temporary file left by an earlier crash keeps its old mode: narrow it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn profile_directories_and_state_files_are_private_to_the_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/profile");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);

        let loose = tmp.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&loose).unwrap();
        assert_eq!(mode(&loose), 0o700);

        let file = dir.join("push");
        std::fs::write(file.with_extension("tmp"), b"stale").unwrap();
        std::fs::set_permissions(
            file.with_extension("tmp"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        write_atomic(&file, b"https://push.example/x").unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"https://push.example/x");
        write_atomic(&file, b"v2").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"v2");
        assert_eq!(mode(&file), 0o600);
    }
}
