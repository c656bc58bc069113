//! Several real `sdxl-worker fetch` processes sharing one cache dir (two workers on one network
//! volume), against a local HTTP server on 127.0.0.1 that counts the body bytes it serves,
//! honours `Range` / `If-Range` with a strong `ETag`, and can stall its first reply (SPEC §12
//! "Shared caches").

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sdxl-worker");

// ---------------------------------------------------------------- server

#[derive(Debug, Clone)]
struct Recorded {
    range: Option<String>,
    if_range: Option<String>,
}

struct State {
    body: Arc<Vec<u8>>,
    etag: String,
    /// The next reply sends this many body bytes, then goes silent for the duration.
    stall_next: Option<(usize, Duration)>,
    served: u64,
    requests: Vec<Recorded>,
}

#[derive(Clone)]
struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Server {
    fn start(body: Vec<u8>, etag: &str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            body: Arc::new(body),
            etag: etag.to_string(),
            stall_next: None,
            served: 0,
            requests: Vec::new(),
        }));
        let st = state.clone();
        std::thread::spawn(move || {
            for sock in listener.incoming() {
                let Ok(sock) = sock else { return };
                let st = st.clone();
                std::thread::spawn(move || serve(sock, &st));
            }
        });
        Server { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/model.safetensors", self.addr)
    }
    fn served(&self) -> u64 {
        self.state.lock().unwrap().served
    }
    fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
    fn stall_next(&self, after: usize, for_: Duration) {
        self.state.lock().unwrap().stall_next = Some((after, for_));
    }
    fn replace(&self, body: Vec<u8>, etag: &str) {
        let mut s = self.state.lock().unwrap();
        s.body = Arc::new(body);
        s.etag = etag.to_string();
    }
}

fn serve(sock: std::net::TcpStream, st: &Mutex<State>) {
    let mut rd = BufReader::new(sock.try_clone().unwrap());
    let mut wr = sock;
    let mut line = String::new();
    if rd.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let (mut range, mut if_range) = (None, None);
    loop {
        let mut h = String::new();
        if rd.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "if-range" => if_range = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let (body, etag, stall) = {
        let mut s = st.lock().unwrap();
        s.requests.push(Recorded {
            range: range.clone(),
            if_range: if_range.clone(),
        });
        (s.body.clone(), s.etag.clone(), s.stall_next.take())
    };
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|_| if_range.as_deref().is_none_or(|v| v == etag))
        .filter(|&n| n < body.len());
    let mut head = match start {
        Some(n) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {n}-{}/{}\r\n",
            body.len() - 1,
            body.len()
        ),
        None => "HTTP/1.1 200 OK\r\n".to_string(),
    };
    let from = start.unwrap_or(0);
    head.push_str(&format!(
        "Connection: close\r\nContent-Type: application/octet-stream\r\nETag: {etag}\r\nContent-Length: {}\r\n\r\n",
        body.len() - from
    ));
    if wr.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut sent = 0usize;
    for chunk in body[from..].chunks(64 * 1024) {
        if let Some((after, pause)) = stall {
            if sent < after && sent + chunk.len() >= after {
                let _ = wr.flush();
                std::thread::sleep(pause);
            }
        }
        if wr.write_all(chunk).is_err() {
            return;
        }
        sent += chunk.len();
        st.lock().unwrap().served += chunk.len() as u64;
    }
    let _ = wr.flush();
}

// ---------------------------------------------------------------- helpers

/// A valid safetensors file with one F32 tensor of `n` elements, values `seed + i`.
fn safetensors_bytes(n: usize, seed: f32) -> Vec<u8> {
    let header = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        4 * n
    );
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for i in 0..n {
        out.extend_from_slice(&(seed + i as f32).to_le_bytes());
    }
    out
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

struct Setup {
    dir: tempfile::TempDir,
    toml: PathBuf,
}

impl Setup {
    fn new(url: &str, sha: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("models.toml");
        std::fs::write(
            &toml,
            format!(
                "[[checkpoints]]\nname = \"m\"\nurl = \"{url}\"\nfilename = \"m.safetensors\"\nsha256 = \"{sha}\"\n"
            ),
        )
        .unwrap();
        Setup { dir, toml }
    }
    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
    fn dest(&self) -> PathBuf {
        self.cache().join("m.safetensors")
    }
    fn fetch(&self) -> Command {
        let mut c = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("RUNPOD_") || k.starts_with("SDXL_") || k.starts_with("HF_") {
                c.env_remove(k);
            }
        }
        c.arg("fetch")
            .arg("--models-toml")
            .arg(&self.toml)
            .env("SDXL_CACHE_DIR", self.cache())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
    fn spawn(&self) -> Child {
        self.fetch().spawn().unwrap()
    }
    /// Everything in the cache dir except the model and its verified-hash record.
    fn leftovers(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.cache())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "m.safetensors" && n != "m.safetensors.sha256")
            .collect();
        v.sort();
        v
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn check_success(out: &Output, body: &[u8], dest: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fetch failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&sha_hex(body)) && stdout.contains(&dest.display().to_string()),
        "{stdout}"
    );
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

// ---------------------------------------------------------------- tests

/// Three processes, the first one's transfer stalled mid-body for 8 s (longer than anything the
/// others would once have waited before "taking over"): one transfer, three successes.
#[test]
fn three_fetch_processes_download_once() {
    let body = safetensors_bytes(1 << 20, 0.0); // 4 MiB
    let srv = Server::start(body.clone(), "\"v1\"");
    srv.stall_next(1 << 20, Duration::from_secs(8));
    let s = Setup::new(&srv.url(), &sha_hex(&body));
    let first = s.spawn();
    assert!(wait_until(Duration::from_secs(60), || srv.served() > 0));
    let others: Vec<Child> = (0..2).map(|_| s.spawn()).collect();
    let t = Instant::now();
    let mut outs = vec![first.wait_with_output().unwrap()];
    outs.extend(others.into_iter().map(|c| c.wait_with_output().unwrap()));
    eprintln!(
        "three fetches finished {:?} after the first started",
        t.elapsed()
    );
    for out in &outs {
        check_success(out, &body, &s.dest());
    }
    assert_eq!(srv.served(), body.len() as u64, "downloaded exactly once");
    assert_eq!(srv.requests().len(), 1);
    let waited = outs
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stderr).contains("another process is downloading"))
        .count();
    assert_eq!(waited, 2, "both latecomers said they were waiting");
    assert_eq!(std::fs::read(s.dest()).unwrap(), body);
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

/// Starts a fetch that stalls after `stall_after` body bytes, waits until some bytes are on
/// disk, kills it with SIGKILL and returns the size of the `.part` left behind.
fn killed_fetch(s: &Setup, srv: &Server, stall_after: usize) -> u64 {
    srv.stall_next(stall_after, Duration::from_secs(120));
    let mut child = s.spawn();
    let part = s.cache().join("m.safetensors.part");
    assert!(
        wait_until(Duration::from_secs(60), || file_len(&part) > 0),
        "no partial bytes on disk"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    file_len(&part)
}

#[test]
fn killed_fetch_leaves_nothing_that_blocks_and_the_next_run_resumes() {
    let body = safetensors_bytes(3 << 20, 0.0); // 12 MiB
    let srv = Server::start(body.clone(), "\"v1\"");
    let s = Setup::new(&srv.url(), &sha_hex(&body));
    let have = killed_fetch(&s, &srv, 8 << 20);
    assert!(have > 0 && have < body.len() as u64);
    let served_before = srv.served();

    let t = Instant::now();
    let out = s.fetch().output().unwrap();
    let took = t.elapsed();
    check_success(&out, &body, &s.dest());
    assert!(took < Duration::from_secs(30), "blocked for {took:?}");
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].range.as_deref(),
        Some(format!("bytes={have}-").as_str())
    );
    assert_eq!(reqs[1].if_range.as_deref(), Some("\"v1\""));
    assert_eq!(srv.served() - served_before, body.len() as u64 - have);
    assert_eq!(std::fs::read(s.dest()).unwrap(), body);
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

#[test]
fn resume_after_the_server_file_changed_starts_over() {
    let old = safetensors_bytes(3 << 20, 0.0);
    let new = safetensors_bytes(3 << 20, 7.0); // same size, other bytes
    let srv = Server::start(old, "\"v1\"");
    let s = Setup::new(&srv.url(), &sha_hex(&new));
    let have = killed_fetch(&s, &srv, 8 << 20);
    assert!(have > 0);
    srv.replace(new.clone(), "\"v2\"");
    let out = s.fetch().output().unwrap();
    check_success(&out, &new, &s.dest());
    let reqs = srv.requests();
    assert_eq!(reqs[1].if_range.as_deref(), Some("\"v1\""));
    assert_eq!(
        std::fs::read(s.dest()).unwrap(),
        new,
        "no old bytes spliced in"
    );
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

#[test]
fn partial_file_without_a_matching_record_is_not_adopted() {
    let body = safetensors_bytes(1 << 16, 0.0);
    let srv = Server::start(body.clone(), "\"v1\"");
    let s = Setup::new(&srv.url(), &sha_hex(&body));
    std::fs::create_dir_all(s.cache()).unwrap();
    // Bytes of unknown origin (no record of URL/ETag/size): must not be resumed from.
    std::fs::write(s.cache().join("m.safetensors.part"), vec![0xAB; 5000]).unwrap();
    let out = s.fetch().output().unwrap();
    check_success(&out, &body, &s.dest());
    assert_eq!(srv.requests()[0].range, None);
    assert_eq!(std::fs::read(s.dest()).unwrap(), body);
    assert_eq!(s.leftovers(), Vec::<String>::new());
}
