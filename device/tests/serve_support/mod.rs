//! Helpers of the `serve_*` tests: start the real `mce-device serve` on a free loopback port, talk
//! raw HTTP/1.1 to it, send signals, collect its log.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mce-device")
}

pub fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/msrc")
        .join(name)
}

/// `serve`'s arguments for the untrained model (`--init lite0`: the frames need no trained head)
/// on `source`, with its registry in `registry`; append more as needed.
pub fn untrained<'a>(registry: &'a Path, source: &'a str) -> Vec<&'a str> {
    let registry = registry.to_str().expect("a UTF-8 temporary path");
    vec![
        "--init",
        "lite0",
        "--registry",
        registry,
        "--source",
        source,
    ]
}

/// A running `mce-device serve`.
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    log: Arc<Mutex<String>>,
}

/// Strip ANSI colour codes from a log.
pub fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Server {
    /// Start `serve` with `args` (plus `--http 127.0.0.1:0` unless given) and wait until it prints
    /// its address. `Err(log)` when it exits first.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Result<Server, String> {
        Self::start_with(args, envs, |_| {})
    }

    /// [`Server::start`], calling `on_spawn(pid)` as soon as the process exists (before it
    /// listens), e.g. to signal it while it starts.
    pub fn start_with(
        args: &[&str],
        envs: &[(&str, &str)],
        on_spawn: impl FnOnce(u32),
    ) -> Result<Server, String> {
        let mut cmd = Command::new(bin());
        cmd.arg("serve").args(args);
        if !args.contains(&"--http") {
            cmd.args(["--http", "127.0.0.1:0"]);
        }
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mce-device serve");
        on_spawn(child.id());
        let log = Arc::new(Mutex::new(String::new()));
        {
            let log = log.clone();
            let stderr = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&plain(&line));
                    l.push('\n');
                }
            });
        }
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
                return Ok(Server {
                    child: Some(child),
                    addr,
                    log,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                let l = log.lock().unwrap().clone();
                return Err(format!("exited with {status} before listening:\n{l}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("no address after 120 s:\n{}", log.lock().unwrap()));
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Send a signal with `kill -SIG pid`.
    pub fn signal(&self, sig: &str) {
        kill(self.pid(), sig);
    }

    /// Wait for exit (killing after `timeout`); returns the status and the whole log.
    pub fn wait(mut self, timeout: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(200));
        (status, self.log())
    }

    /// One request on a fresh connection; returns (status, headers lower-cased, body).
    pub fn request(&self, method: &str, path: &str) -> (u16, String, Vec<u8>) {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        parse_response(&self.raw(raw.as_bytes()))
    }

    pub fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        self.request("GET", path)
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, _, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("JSON body")
    }

    /// Send bytes, read until the server closes (5 s timeout).
    pub fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(&self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }

    /// Poll `/healthz` until `pred` holds (panics with the log after `timeout`).
    pub fn wait_health(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, _, body) = self.get("/healthz");
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                if pred(&v) {
                    return v;
                }
                if Instant::now() > deadline {
                    panic!("healthz never matched; last {v}\n{}", self.log());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Split a raw HTTP/1.1 response (Connection: close, no chunking expected).
pub fn parse_response(raw: &[u8]) -> (u16, String, Vec<u8>) {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, head.to_ascii_lowercase(), raw[split + 4..].to_vec())
}

/// A fresh temporary directory.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A fake systemd: collects the sd_notify datagrams sent to its socket.
pub struct FakeSystemd {
    /// The socket path, as `NOTIFY_SOCKET` gives it.
    pub socket: String,
    notes: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    collector: Option<std::thread::JoinHandle<()>>,
}

impl FakeSystemd {
    /// Listen on `dir/notify.sock`.
    pub fn listen(dir: &Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let notes = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let collector = {
            let (notes, stop) = (notes.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let note = String::from_utf8_lossy(&buf[..n]).to_string();
                        notes.lock().unwrap().push(note);
                    }
                }
            })
        };
        FakeSystemd {
            socket: path.display().to_string(),
            notes,
            stop,
            collector: Some(collector),
        }
    }

    /// The environment a service under systemd with a `watchdog_usec` watchdog sees.
    pub fn env<'a>(&'a self, watchdog_usec: &'a str) -> [(&'a str, &'a str); 2] {
        [
            ("NOTIFY_SOCKET", self.socket.as_str()),
            ("WATCHDOG_USEC", watchdog_usec),
        ]
    }

    /// Every notification so far, in order.
    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap().clone()
    }

    /// How many `WATCHDOG=1` pings so far.
    pub fn pings(&self) -> usize {
        self.notes()
            .iter()
            .filter(|n| n.contains("WATCHDOG=1"))
            .count()
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(c) = self.collector.take() {
            let _ = c.join();
        }
    }
}

/// `kill -SIG pid`.
pub fn kill(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}
