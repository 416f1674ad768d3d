//! File helpers: every write goes to a temporary name in the same folder and is renamed when
//! complete, so a crash never leaves a half-written file under the final name; an output never
//! replaces what is not a regular file, nor a command's own input ([`check_io`]); files are read
//! only when they are regular files (a FIFO or a device would block or never end); a folder a
//! run writes into is held by one run at a time ([`FolderLock`]).
use crate::{Error, Result};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// How many symbolic links an output path may pass through (Linux's own limit, `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// The file an output path writes: `path` itself, or, where `path` is a symbolic link, the file
/// it points to (followed to the end, also when that file does not exist yet), so that the link
/// is kept and its target replaced atomically. Refuses a path that exists and is not a regular
/// file — a folder, a device node, a FIFO or a socket — since replacing it would destroy
/// something dsno did not make.
pub fn output_file(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..=MAX_LINKS {
        let meta = match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(Error::file(&p, format!("cannot inspect the output: {e}"))),
            Ok(m) => m,
        };
        let t = meta.file_type();
        if t.is_symlink() {
            let target = std::fs::read_link(&p)
                .map_err(|e| Error::file(&p, format!("cannot read the symbolic link: {e}")))?;
            p = match p.parent() {
                Some(dir) => dir.join(target),
                None => target,
            };
            continue;
        }
        if t.is_file() {
            return Ok(p);
        }
        let what = if t.is_dir() {
            "a folder"
        } else {
            "not a regular file (a device, FIFO or socket)"
        };
        let named = if p == path {
            String::new()
        } else {
            format!(" (where {} points)", path.display())
        };
        return Err(Error::file(
            &p,
            format!("exists and is {what}{named}: dsno writes regular files only and does not replace it"),
        ));
    }
    Err(Error::file(
        path,
        format!("more than {MAX_LINKS} symbolic links in a row: not written"),
    ))
}

/// Checks an output folder: absent (it will be created) or a folder (through links too).
pub fn output_dir(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::file(
            path,
            format!("cannot inspect the output folder: {e}"),
        )),
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::file(
            path,
            "exists and is not a folder: an output folder was asked for here",
        )),
    }
}

/// Where a path leads, for comparing paths: absolute, every symbolic link of its existing part
/// resolved, `.` and `..` of the part that does not exist yet applied by name.
pub fn resolved(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    // the longest prefix that exists, resolved by the file system; the rest by name
    let mut head = abs.clone();
    let mut tail: Vec<std::ffi::OsString> = vec![];
    let mut base = loop {
        if let Ok(c) = std::fs::canonicalize(&head) {
            break c;
        }
        match (head.file_name(), head.parent()) {
            (Some(n), Some(p)) => {
                tail.push(n.to_os_string());
                head = p.to_path_buf();
            }
            // `..` or the root: leave the rest to the lexical pass below
            _ => break head,
        }
    };
    for c in tail.iter().rev() {
        base.push(c);
    }
    let mut out = PathBuf::new();
    for c in base.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// Refuses a command whose outputs would destroy its inputs or each other: an output that is,
/// or lies inside, one of the inputs (a model, a store, a data or diffusers folder), two outputs
/// naming the same file; and an output that exists and is not what it should be
/// ([`output_file`], [`output_dir`]). Every path
/// is `(what, path)`, `what` naming the flag in errors; `folders` lists the outputs that are
/// folders. Paths are compared where they lead (links resolved, see [`resolved`]).
pub fn check_io(
    inputs: &[(&str, &Path)],
    outputs: &[(&str, &Path)],
    folders: &[&str],
) -> Result<()> {
    let mut seen: Vec<(&str, &Path, PathBuf)> = vec![];
    for &(what, path) in outputs {
        let target = if folders.contains(&what) {
            output_dir(path)?;
            path.to_path_buf()
        } else {
            output_file(path)?
        };
        let out = resolved(&target);
        for &(input, ipath) in inputs {
            let inp = resolved(ipath);
            if out == inp || out.starts_with(&inp) {
                let how = if out == inp { "is" } else { "lies inside" };
                return Err(Error::file(
                    path,
                    format!(
                        "{what} {how} an input, {input} ({}): it would be destroyed; write elsewhere",
                        ipath.display()
                    ),
                ));
            }
        }
        for (other, opath, o) in &seen {
            if *o == out {
                return Err(Error::file(
                    path,
                    format!(
                        "{what} and {other} name the same file ({}): give each its own",
                        opath.display()
                    ),
                ));
            }
        }
        seen.push((what, path, out));
    }
    Ok(())
}

/// Opens a file for reading, refusing what is not a regular file: a FIFO would block the
/// command for ever, a device never end, a folder fail obscurely.
pub fn open_input(path: &Path) -> Result<std::fs::File> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a folder"
        } else {
            "not a regular file (a FIFO, device or socket)"
        };
        return Err(Error::file(
            path,
            format!("is {what}: a file was expected here"),
        ));
    }
    std::fs::File::open(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))
}

/// Reads a whole file, which must be a regular file ([`open_input`]).
pub fn read(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = open_input(path)?;
    let mut bytes = vec![];
    f.read_to_end(&mut bytes)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    Ok(bytes)
}

/// The temporary name used while `path` is being written: `.<name>.tmp` beside it.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Writes `path` atomically through `fill`, which writes the content into the temporary file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    // a link is kept and its target replaced; a device, FIFO or folder is refused
    let path = &output_file(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::file(dir, format!("cannot create folder: {e}")))?;
    }
    let tmp = temp_path(path);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::file(path, format!("cannot write: {e}")));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(
            path,
            format!("cannot rename the finished file into place: {e}"),
        )
    })
}

/// The largest text file read (configs, manifests): 64 MiB.
pub const MAX_TEXT_BYTES: u64 = 64 << 20;

/// Reads a text file (a config, a manifest) of at most [`MAX_TEXT_BYTES`]; errors name the file.
pub fn read_text(path: &Path) -> Result<String> {
    let f = open_input(path)?;
    let len = f
        .metadata()
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?
        .len();
    if len > MAX_TEXT_BYTES {
        return Err(Error::file(
            path,
            format!("{len} bytes: a config or manifest is at most {MAX_TEXT_BYTES} bytes"),
        ));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut { f }, &mut text)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    Ok(text)
}

/// The file in a locked folder that names the run holding it.
pub const LOCK_NOTE: &str = ".dsno-lock";

/// A folder held by one run: an exclusive advisory lock (`flock`) on the folder itself, taken
/// for as long as the value lives. The kernel drops the lock when the process ends in any way,
/// so a run that was killed leaves nothing stale behind; a second run asking for the folder is
/// refused at once, with the holder's process, host and command read from the note
/// ([`LOCK_NOTE`]) that the holder keeps in the folder while it runs.
#[derive(Debug)]
pub struct FolderLock {
    dir: PathBuf,
    _fd: std::fs::File,
}

impl FolderLock {
    /// Creates `dir` if needed and takes its lock, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<FolderLock> {
        use std::os::unix::io::AsRawFd;
        output_dir(dir)?;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::file(dir, format!("cannot create folder: {e}")))?;
        let fd = std::fs::File::open(dir)
            .map_err(|e| Error::file(dir, format!("cannot open the folder to lock it: {e}")))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Error::file(dir, format!("cannot lock the folder: {e}")));
            }
            let holder = std::fs::read_to_string(dir.join(LOCK_NOTE))
                .ok()
                .map(|s| s.trim().chars().take(500).collect::<String>())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "another process".into());
            return Err(Error::file(
                dir,
                format!("is in use by another dsno run ({holder}): wait for it to end, or write elsewhere"),
            ));
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let cmd: Vec<String> = std::env::args().collect();
        let note = format!("pid {} on {host}: {}\n", std::process::id(), cmd.join(" "));
        // the note only names the holder; the lock is the flock
        let _ = write_atomic(&dir.join(LOCK_NOTE), note.as_bytes());
        Ok(FolderLock {
            dir: dir.to_path_buf(),
            _fd: fd,
        })
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // the note goes while the lock is still held; the lock goes with the descriptor
        let _ = std::fs::remove_file(self.dir.join(LOCK_NOTE));
    }
}

/// Several files written all or none: each output is written under a staging name beside its
/// target ([`Outputs::stage`] returns it; any writer may fill it) and [`Outputs::commit`] renames
/// every one into place at the end. Dropped without a commit (an error part-way), it removes the
/// staged files and the folders it created, so a command that fails leaves no part of its
/// outputs behind.
#[derive(Debug, Default)]
pub struct Outputs {
    staged: Vec<(PathBuf, PathBuf)>,
    created: Vec<PathBuf>,
}

impl Outputs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates `dir` (and its missing parents), removed again if the outputs are not committed
    /// and it is empty.
    pub fn folder(&mut self, dir: &Path) -> Result<()> {
        output_dir(dir)?;
        let mut missing = vec![];
        let mut d = Some(dir);
        while let Some(p) = d.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
            missing.push(p.to_path_buf());
            d = p.parent();
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::file(dir, format!("cannot create folder: {e}")))?;
        self.created.extend(missing); // innermost first
        Ok(())
    }

    /// The name to write output `path` under until the commit (`.<name>.staged` beside the file
    /// `path` leads to; see [`output_file`]).
    pub fn stage(&mut self, path: &Path) -> Result<PathBuf> {
        let target = output_file(path)?;
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
            self.folder(dir)?;
        }
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let tmp = target.with_file_name(format!(".{name}.staged"));
        if self.staged.iter().any(|(_, t)| *t == target) {
            return Err(Error::file(path, "written twice by one command"));
        }
        self.staged.push((tmp.clone(), target));
        Ok(tmp)
    }

    /// Renames every staged file into place.
    pub fn commit(mut self) -> Result<()> {
        for (tmp, target) in std::mem::take(&mut self.staged) {
            if let Err(e) = std::fs::rename(&tmp, &target) {
                self.staged.push((tmp, target.clone()));
                return Err(Error::file(
                    &target,
                    format!("cannot rename the finished file into place: {e}"),
                ));
            }
        }
        self.created.clear();
        Ok(())
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        for (tmp, _) in &self.staged {
            let _ = std::fs::remove_file(tmp);
        }
        // only folders this value created, innermost first, and only while empty
        for d in &self.created {
            let _ = std::fs::remove_dir(d);
        }
    }
}
