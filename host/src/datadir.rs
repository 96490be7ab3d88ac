//! The data directory is the server's alone.
//!
//! It holds every tenant's settings, key hashes, ledger and logs, and the
//! admin key, so nobody but the user glia runs as may read it: the
//! directory and every directory in it are created with mode 0700, the
//! databases and blobs with 0600, from the start (SQLite gives its `-wal`
//! and `-shm` files the mode of their database). [`prepare`] also repairs
//! what an earlier version, a restore or an operator left more open, on
//! every start, before anything is opened.

use std::io;
use std::path::Path;

/// Mode of directories in the data directory.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;
/// Mode of files in the data directory.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) private to this user, and makes
/// everything already in it private too. Symbolic links are left as they
/// are, and not followed.
pub fn prepare(dir: &Path) -> io::Result<()> {
    create_dir(dir)?;
    repair(dir)
}

/// Creates a directory (and its missing parents) with mode 0700.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(dir)
}

/// Opens options that create a file with mode 0600.
pub fn file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    options
}

/// Makes sure `path` exists as a file of mode 0600 before a database is
/// opened on it, so SQLite does not create it with the default 0644.
pub fn private_file(path: &Path) -> io::Result<()> {
    match file_options().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => set_mode(path, false),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn repair(dir: &Path) -> io::Result<()> {
    set_mode(dir, true)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            repair(&entry.path())?;
        } else if kind.is_file() {
            set_mode(&entry.path(), false)?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn repair(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, dir: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let want = if dir { DIR_MODE } else { FILE_MODE };
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() || meta.permissions().mode() & 0o777 == want {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _dir: bool) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn new_and_existing_entries_end_up_private() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = temp.path().join("a/data");
        prepare(&data).expect("prepare");
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&temp.path().join("a")), 0o700, "created parents too");

        private_file(&data.join("glia.db")).expect("new file");
        assert_eq!(mode(&data.join("glia.db")), 0o600);

        // What an older version left: 0755 directories, 0644 files.
        let open = |path: &Path, m: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        std::fs::create_dir_all(data.join("sources/sha256")).expect("mkdir");
        std::fs::write(data.join("sources/sha256/x.wasm"), b"x").expect("write");
        std::fs::write(data.join("ledger.db"), b"").expect("write");
        open(&data, 0o755);
        open(&data.join("sources"), 0o755);
        open(&data.join("sources/sha256/x.wasm"), 0o644);
        open(&data.join("ledger.db"), 0o644);
        open(&data.join("glia.db"), 0o666);
        // A link to a file outside is neither followed nor changed.
        let outside = temp.path().join("outside");
        std::fs::write(&outside, b"o").expect("write");
        open(&outside, 0o644);
        std::os::unix::fs::symlink(&outside, data.join("link")).expect("symlink");

        prepare(&data).expect("repair");
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("sources")), 0o700);
        assert_eq!(mode(&data.join("sources/sha256")), 0o700);
        assert_eq!(mode(&data.join("sources/sha256/x.wasm")), 0o600);
        assert_eq!(mode(&data.join("ledger.db")), 0o600);
        private_file(&data.join("glia.db")).expect("existing file");
        assert_eq!(mode(&data.join("glia.db")), 0o600);
        assert_eq!(mode(&outside), 0o644);
    }
}
