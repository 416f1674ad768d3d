//! How much memory and disk the machine has to give, so that a size that drives an allocation
//! (sample counts, batch sizes, model widths, store sizes) is refused with a clear error before
//! anything is allocated, instead of aborting in the allocator or swapping for hours.
use crate::{Error, Result};
use std::path::Path;

/// Bytes of memory available to a new allocation: the least of the machine's `MemAvailable`
/// (/proc/meminfo), what the process's address-space and data limits leave (`RLIMIT_AS`,
/// `RLIMIT_DATA`, as `ulimit -v` / `-d` set them, less what it maps now) and what its cgroup's
/// limit leaves (v2 `memory.max` − `memory.current`, or v1's `limit_in_bytes` − `usage_in_bytes`);
/// None where none of them says.
pub fn available() -> Option<u64> {
    let kb = |text: &str, key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    let mut least: Option<u64> = None;
    let mut take = |v: Option<u64>| {
        if let Some(v) = v {
            least = Some(least.map_or(v, |l| l.min(v)));
        }
    };
    take(
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| kb(&t, "MemAvailable:")),
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for (resource, used) in [
        (libc::RLIMIT_AS, kb(&status, "VmSize:")),
        (libc::RLIMIT_DATA, kb(&status, "VmData:")),
    ] {
        // SAFETY: getrlimit writes into the struct we own
        let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrlimit(resource, &mut r) } == 0 && r.rlim_cur != libc::RLIM_INFINITY {
            take(Some((r.rlim_cur as u64).saturating_sub(used.unwrap_or(0))));
        }
    }
    take(cgroup_left());
    least
}

/// What the process's memory cgroup still allows (v2, else v1); None without a limit.
fn cgroup_left() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |p: String| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        if controllers.is_empty() {
            let d = format!("/sys/fs/cgroup{path}");
            let max = read(format!("{d}/memory.max"))?; // "max" (no limit) does not parse
            return Some(max.saturating_sub(read(format!("{d}/memory.current")).unwrap_or(0)));
        }
        if controllers.split(',').any(|c| c == "memory") {
            let d = format!("/sys/fs/cgroup/memory{path}");
            let max = read(format!("{d}/memory.limit_in_bytes"))?;
            if max >= 1 << 62 {
                return None; // v1's "no limit"
            }
            return Some(
                max.saturating_sub(read(format!("{d}/memory.usage_in_bytes")).unwrap_or(0)),
            );
        }
    }
    None
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
