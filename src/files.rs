//! Files keel writes so that a crash never leaves a half-written one under its final name, and the
//! one rule for every output folder: new or empty, because keel never overwrites results.

use crate::InputError;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written file under the final name.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    // A temporary name per process and call, so concurrent writers of one file never collide.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = PathBuf::from(path);
    let name =
        format!(".{}.{}.{call}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("out"), std::process::id());
    tmp.set_file_name(name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Hex sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut File::open(path)?, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// Flushes a folder's entries (a rename into it) to disk, where the platform allows.
pub fn fsync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Creates `dir` for a new run (or prepared data): it must not exist or be empty, and be writable.
pub fn new_output_dir(dir: &Path) -> Result<(), InputError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .map_err(|e| InputError(format!("cannot read run directory {}: {e}", dir.display())))?;
        if entries.next().is_some() {
            return Err(InputError(format!(
                "run directory {} already holds files; keel does not overwrite results\n  choose another --out or run.name, or remove the directory",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        InputError(format!(
            "cannot create run directory {}: {e}\n  choose a writable --out or run.out_dir",
            dir.display()
        ))
    })?;
    check_writable(dir)
}

/// Fails early, as bad input, when nothing can be written into `dir`.
pub fn check_writable(dir: &Path) -> Result<(), InputError> {
    let probe = dir.join(".keel-write-test");
    std::fs::write(&probe, b"").and_then(|()| std::fs::remove_file(&probe)).map_err(|e| {
        InputError(format!(
            "cannot write into {}: {e}\n  choose a writable --out or run.out_dir (or fix the folder's permissions)",
            dir.display()
        ))
    })
}
