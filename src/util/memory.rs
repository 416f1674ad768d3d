//! How much memory and disk the machine has to give, so that a size that drives an allocation
//! (sample counts, batch sizes, model widths, store sizes) is refused with a clear error before
//! anything is allocated, instead of aborting in the allocator or swapping for hours.
use crate::{Error, Result};
use std::path::Path;

/// Bytes of memory available to a new allocation (`MemAvailable` of /proc/meminfo); None where
/// the system does not say.
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes free for an unprivileged user on the file system of `dir` (or of its closest existing
/// ancestor); None where the system does not say.
pub fn free_disk(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut d = dir;
    while !d.exists() {
        d = d.parent()?;
    }
    let d = if d.as_os_str().is_empty() {
        Path::new(".")
    } else {
        d
    };
    let c = std::ffi::CString::new(d.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn gib(b: f64) -> String {
    format!("{:.2} GiB", b / (1u64 << 30) as f64)
}

/// Fails when `bytes` (what `what` would allocate; an f64 so that products of untrusted sizes
/// cannot overflow) exceed the available memory.
pub fn check_memory(what: &str, bytes: f64) -> Result<()> {
    match available() {
        Some(av) if bytes > av as f64 => Err(Error::invalid(format!(
            "{what} would need {} of memory; {} are available",
            gib(bytes),
            gib(av as f64)
        ))),
        _ => Ok(()),
    }
}

/// Fails when `bytes` (what `what` would write) exceed the free space on the disk of `dir`.
pub fn check_disk(what: &str, bytes: f64, dir: &Path) -> Result<()> {
    match free_disk(dir) {
        Some(free) if bytes > free as f64 => Err(Error::file(
            dir,
            format!(
                "{what} would need {} of disk; {} are free",
                gib(bytes),
                gib(free as f64)
            ),
        )),
        _ => Ok(()),
    }
}
