//! Every file the project writes goes through [`write_atomic`]: the bytes go to a hidden sibling
//! (`.NAME.tmp-PID`), which is renamed over the destination once complete, so a crash or a kill
//! at any moment leaves either the old file or the new one, never half of one. What sits at the
//! destination must be a regular file (or nothing): a symlink, a FIFO, a device or a folder is
//! refused rather than silently replaced, and `-` writes to standard output instead. A failed
//! write removes its temporary file; [`sweep_stale_temps`] removes those a killed process left.
//!
//! Commands check their outputs up front with [`check_output`], which also refuses an output that
//! is one of the command's inputs (writing it would destroy the input).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The path meaning standard output.
pub const STDOUT: &str = "-";

/// Whether `path` means standard output (`-`).
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == STDOUT
}

/// What a non-regular file at `path` is, in words (`None` for a regular file or nothing).
fn special_kind(path: &Path) -> Option<&'static str> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let kind = meta.file_type();
    if kind.is_file() {
        return None;
    }
    if kind.is_symlink() {
        return Some("a symbolic link");
    }
    if kind.is_dir() {
        return Some("a folder");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return Some("a FIFO");
        }
        if kind.is_char_device() || kind.is_block_device() {
            return Some("a device");
        }
        if kind.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a regular file")
}

/// The same file, by identity (device and inode on Unix; canonical paths elsewhere).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Checks, before any work is done, that `output` (given as option `option`) can be written:
/// not one of `inputs`, and not something other than a regular file. `-` (standard output) is
/// always fine.
pub fn check_output(option: &str, output: &Path, inputs: &[&Path]) -> Result<()> {
    if is_stdout(output) {
        return Ok(());
    }
    if let Some(input) = inputs.iter().find(|input| same_file(output, input)) {
        return Err(Error::file(
            output,
            format!(
                "{option} is the input {}: writing it would destroy the input; choose another path",
                input.display()
            ),
        ));
    }
    if let Some(kind) = special_kind(output) {
        return Err(Error::file(
            output,
            format!(
                "{option} is {kind}; refusing to replace it (give a regular file path, or `-` for standard output)"
            ),
        ));
    }
    if output.file_name().is_none() {
        return Err(Error::file(output, format!("{option} is not a file path")));
    }
    Ok(())
}

/// The hidden sibling `path` is written to before the rename.
pub fn temp_path(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| Error::file(path, "not a file path"))?;
    Ok(parent_dir(path).join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id())))
}

fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Writes `bytes` to `path` atomically (a sibling temporary file, then a rename), or to standard
/// output when `path` is `-`. Refuses to replace anything but a regular file. Errors name `path`
/// (not the temporary file), and a failed write leaves no temporary file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if is_stdout(path) {
        let mut out = std::io::stdout().lock();
        return out.write_all(bytes).and_then(|_| out.flush()).map_err(|e| Error::file("<stdout>", e));
    }
    if let Some(kind) = special_kind(path) {
        return Err(Error::file(
            path,
            format!("is {kind}; refusing to replace it (give a regular file path, or `-` for standard output)"),
        ));
    }
    let tmp = temp_path(path)?;
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.flush()?;
        drop(file);
        crash_point(path);
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(path, e)
    })
}

/// Renames `from` over `to` (both in the same folder), refusing to replace a non-regular file.
pub fn publish(from: &Path, to: &Path) -> Result<()> {
    if let Some(kind) = special_kind(to) {
        return Err(Error::file(to, format!("is {kind}; refusing to replace it")));
    }
    crash_point(to);
    std::fs::rename(from, to).map_err(|e| Error::file(to, e))
}

/// Whether the process with this id is still running (on systems without `/proc`, assumed so).
pub fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc_root = Path::new("/proc");
    if !proc_root.join("self").exists() {
        return true;
    }
    proc_root.join(pid.to_string()).exists()
}

/// Removes the temporary files (`.NAME.tmp-PID`) in `dir` whose writer is no longer running:
/// what a kill or a full disk left behind. Returns the removed paths.
pub fn sweep_stale_temps(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")).map(|(_, pid)| pid) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && !process_alive(pid) && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// A test hook for the crash-consistency tests: with `MOBILENET_CRASH_AT=N` in the environment
/// the process exits at once (as after `kill -9`: no unwinding, no cleanup; exit code 86) at the N-th file operation, just
/// before a temporary file is renamed into place (counted from 1 over the process's life).
fn crash_point(path: &Path) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static AT: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let at = *AT.get_or_init(|| std::env::var("MOBILENET_CRASH_AT").ok().and_then(|v| v.parse().ok()));
    if let Some(at) = at {
        let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
        if n == at {
            eprintln!("MOBILENET_CRASH_AT={at}: dying before {}", path.display());
            std::process::exit(86);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_special_files_and_inputs_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("mobilenet-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.bin");
        write_atomic(&target, b"one").unwrap();
        write_atomic(&target, b"two").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        // A folder at the path is refused, not replaced.
        let sub = dir.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        assert!(write_atomic(&sub, b"x").unwrap_err().to_string().contains("a folder"));
        #[cfg(unix)]
        {
            let link = dir.join("link");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link).unwrap();
            let err = write_atomic(&link, b"x").unwrap_err().to_string();
            assert!(err.contains("symbolic link"), "{err}");
            assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        }
        let err = check_output("--output", &target, &[&target]).unwrap_err().to_string();
        assert!(err.contains("is the input"), "{err}");
        // A write into a missing folder fails naming the path, leaving nothing behind.
        let err = write_atomic(&dir.join("missing/x.bin"), b"x").unwrap_err().to_string();
        assert!(err.contains("missing/x.bin") && !err.contains(".tmp-"), "{err}");
        // Stale temporaries of dead processes are swept; live ones stay.
        let stale = dir.join(".last.ckpt.tmp-4000000000");
        let live = dir.join(format!(".last.ckpt.tmp-{}", std::process::id()));
        std::fs::write(&stale, b"x").unwrap();
        std::fs::write(&live, b"x").unwrap();
        let removed = sweep_stale_temps(&dir);
        assert_eq!(removed, vec![stale.clone()]);
        assert!(live.exists() && !stale.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
