//! Files keel writes so that a crash never leaves a half-written one under its final name, and the
//! one rule for every output folder: new or empty, because keel never overwrites results.

use crate::InputError;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written file under the final name.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = write_temp(path, contents)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Writes several files so that either all of them appear or none does (a figure's PNG and SVG,
/// several figures): each goes to a temporary file first, and only once every one is on disk are
/// they renamed into place, so a full disk half-way changes nothing.
pub fn write_all_atomic(files: &[(PathBuf, Vec<u8>)]) -> std::io::Result<()> {
    let mut temps = Vec::new();
    let remove = |temps: &[PathBuf]| {
        for t in temps {
            let _ = std::fs::remove_file(t);
        }
    };
    for (path, contents) in files {
        match write_temp(path, contents) {
            Ok(t) => temps.push(t),
            Err(e) => {
                remove(&temps);
                return Err(e);
            }
        }
    }
    for (i, ((path, _), tmp)) in files.iter().zip(&temps).enumerate() {
        if let Err(e) = std::fs::rename(tmp, path) {
            remove(&temps[i..]);
            return Err(e);
        }
    }
    Ok(())
}

/// `contents` written and synced to a temporary file beside `path` (one of keel's scratch names,
/// see [`is_keel_scratch`]); removed again if that fails.
fn write_temp(path: &Path, contents: &[u8]) -> std::io::Result<PathBuf> {
    // A temporary name per process and call, so concurrent writers of one file never collide.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = PathBuf::from(path);
    let name =
        format!(".{}.{}.{call}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("out"), std::process::id());
    tmp.set_file_name(name);
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(contents)?;
        f.sync_all()
    });
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            // A full disk must not leave a stray temporary file that makes the folder look used.
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The probe file of [`check_writable`].
const WRITE_PROBE: &str = ".keel-write-test";

/// The lock file of an output folder: `keel train` holds an exclusive OS lock on it (released on
/// any exit, kill -9 included) and writes its PID into it, so two processes never train one run
/// directory (`run_dir::RunLock`). Named here because it is one of keel's scratch files.
pub const LOCK: &str = ".keel.lock";

/// True for the names of keel's own temporary files (`write_atomic`'s `.NAME.PID.N.tmp`, the final
/// weights' `.model.safetensors.tmp`, the write probe) and its run-directory lock: a folder that
/// holds only these, left by a kill or a full disk before anything was finished, counts as empty.
pub fn is_keel_scratch(name: &str) -> bool {
    name == WRITE_PROBE || name == LOCK || (name.starts_with('.') && name.ends_with(".tmp"))
}

/// The entries of `dir` that are not keel's scratch files (see [`is_keel_scratch`]).
pub fn real_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if !e.file_name().to_str().is_some_and(is_keel_scratch) {
            out.push(e.path());
        }
    }
    Ok(out)
}

/// Removes keel's scratch files from `dir` (not the lock, which its holder keeps open).
pub fn remove_scratch(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            if name.to_str().is_some_and(|n| is_keel_scratch(n) && n != LOCK) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Why keel refuses to read a path: it is not a regular file. A FIFO would block the read
/// forever and a device never end, so every input keel reads goes through [`open_regular`].
#[derive(Debug, thiserror::Error)]
#[error("{} is {kind}, not a regular file: keel reads its inputs only from regular files\n  replace it with the file itself (a copy, not a pipe or device)", path.display())]
pub struct NotRegularFile {
    pub path: PathBuf,
    pub kind: &'static str,
}

/// True when some cause of `err` is a [`NotRegularFile`] (bad input, exit status 2).
pub fn is_not_regular(err: &(dyn std::error::Error + 'static)) -> bool {
    err.is::<NotRegularFile>()
        || err
            .downcast_ref::<std::io::Error>()
            .and_then(|e| e.get_ref())
            .is_some_and(|inner| inner.is::<NotRegularFile>())
}

/// Fails (as an `io::Error` of kind `InvalidInput` wrapping [`NotRegularFile`]) unless `path` is a
/// regular file after symbolic links; a missing path keeps its `NotFound`.
pub fn check_regular(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(());
    }
    let kind = kind_of(&meta);
    Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, NotRegularFile { path: path.to_path_buf(), kind }))
}

/// What a path is, for messages: "a regular file", "a folder", "a FIFO (named pipe)", ...
pub fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    if meta.is_file() {
        return "a regular file";
    }
    if meta.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        } else if t.is_socket() {
            return "a socket";
        } else if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
    }
    "not a file"
}

/// Opens an input for reading once [`check_regular`] passes.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    check_regular(path)?;
    File::open(path)
}

/// `std::fs::read` of a regular file only.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    check_regular(path)?;
    std::fs::read(path)
}

/// `std::fs::read_to_string` of a regular file only.
pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    check_regular(path)?;
    std::fs::read_to_string(path)
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// Hex sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut open_regular(path)?, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// Flushes a folder's entries (a rename into it) to disk, where the platform allows.
pub fn fsync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Creates `dir` for new output (a run, prepared data) if it does not exist.
pub fn create_output_dir(dir: &Path) -> Result<(), InputError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        InputError(format!(
            "cannot create run directory {}: {e}\n  choose a writable --out or run.out_dir",
            dir.display()
        ))
    })
}

/// Fails, as bad input, when `dir` holds anything but keel's scratch files: keel never
/// overwrites results. `resumable` is the name of the file whose presence makes the folder a run
/// to resume instead (the run directory's config), for the advice.
pub fn check_empty(dir: &Path, resumable: Option<&str>) -> Result<(), InputError> {
    let entries =
        real_entries(dir).map_err(|e| InputError(format!("cannot read run directory {}: {e}", dir.display())))?;
    if !entries.is_empty() {
        let Some(resumable) = resumable else {
            return Err(InputError(format!(
                "output folder {} already holds files; keel does not overwrite results\n  choose another --out, or empty that folder if its files are not needed",
                dir.display()
            )));
        };
        let resumable = dir.join(resumable).exists();
        return Err(InputError(format!(
            "run directory {} already holds files; keel does not overwrite results\n  {}",
            dir.display(),
            if resumable {
                format!(
                    "continue that run with `keel train --resume {}`, or choose another --out or run.name",
                    dir.display()
                )
            } else {
                "choose another --out or run.name, or remove the directory".to_string()
            }
        )));
    }
    remove_scratch(dir);
    Ok(())
}

/// Creates `dir` for new output (prepared data): it must not exist or be empty (but for keel's
/// scratch files), and be writable.
pub fn new_output_dir(dir: &Path) -> Result<(), InputError> {
    if dir.exists() {
        check_empty(dir, None)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        InputError(format!("cannot create output folder {}: {e}\n  choose a writable --out", dir.display()))
    })?;
    check_writable(dir)
}

/// Fails early, as bad input, when nothing can be written into `dir`.
pub fn check_writable(dir: &Path) -> Result<(), InputError> {
    let probe = dir.join(WRITE_PROBE);
    std::fs::write(&probe, b"").and_then(|()| std::fs::remove_file(&probe)).map_err(|e| {
        InputError(format!(
            "cannot write into {}: {e}\n  choose a writable --out or run.out_dir (or fix the folder's permissions)",
            dir.display()
        ))
    })
}
