//! Access to the HTTP API of a real `mce-device serve`: the Host check (DNS rebinding) and the
//! bearer token, on the wire.

mod serve_support;

use serve_support::{bin, parse_response, Server};
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "9f2c1e0b7a6d5c4b3a29180716253443";

fn get(server: &Server, path: &str, host: &str, auth: Option<&str>) -> u16 {
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let raw = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
    parse_response(&server.raw(raw.as_bytes())).0
}

/// `serve` on a camera that is not there (the server comes up at once) with `extra` arguments,
/// waited for until `/healthz` answers.
fn start(registry: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = serve_support::untrained(registry, "v4l2:///dev/video9");
    args.extend_from_slice(extra);
    let server = Server::start(&args, &[]).unwrap();
    server.wait_health(Duration::from_secs(30), |v| v["status"].is_string());
    server
}

#[test]
fn host_check_and_token_guard_every_route_but_healthz() {
    let dir = serve_support::tmp();
    let reg = dir.path().join("registry");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let server = start(
        &reg,
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "--allow-host",
            "cam.local",
        ],
    );
    let local = server.addr.clone();
    // /healthz needs no token; the others do (503: no frame yet, i.e. the route was reached).
    assert_eq!(get(&server, "/healthz", &local, None), 200);
    assert_eq!(get(&server, "/results", &local, None), 401);
    assert_eq!(get(&server, "/classes", &local, Some("wrong-token")), 401);
    assert_eq!(get(&server, "/results", &local, Some(TOKEN)), 503);
    assert_eq!(get(&server, "/classes", &local, Some(TOKEN)), 200);
    assert_eq!(
        get(&server, &format!("/classes?token={TOKEN}"), &local, None),
        200
    );
    // A rebinding page's Host is refused on every route, with or without the token.
    for path in ["/healthz", "/classes", "/stream.mjpg"] {
        assert_eq!(
            get(&server, path, "attacker.example:8080", Some(TOKEN)),
            403,
            "{path}"
        );
    }
    assert_eq!(get(&server, "/healthz", "localhost", None), 200);
    assert_eq!(get(&server, "/classes", "cam.local:8080", Some(TOKEN)), 200);
}

#[test]
fn a_non_loopback_address_needs_a_token() {
    let dir = serve_support::tmp();
    let o = Command::new(bin())
        .args(["serve", "--init", "lite0", "--source", "v4l2:///dev/video9"])
        .args(["--registry", dir.path().join("r").to_str().unwrap()])
        .args(["--http", "0.0.0.0:0"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("--token-file"),
        "{stderr}"
    );
}

/// `n` idle connections that the server kept open. The server frees a closed connection's place
/// when its task ends, which on a loaded machine can come after the client sees the close, so a
/// set in which one was refused is dropped and opened again.
fn fill_the_cap(addr: &str, n: usize) -> Vec<std::net::TcpStream> {
    for _ in 0..20 {
        let held: Vec<_> = (0..n)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        if held.iter().all(still_open) {
            return held;
        }
        drop(held);
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("the server did not keep {n} idle connections open");
}

/// Whether the server has not closed `s` (no end of stream within 50 ms).
fn still_open(s: &std::net::TcpStream) -> bool {
    let mut buf = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    match s.peek(&mut buf) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Read from `s` until the server closes it; how long that took (panics after `limit`).
fn closed_within(mut s: std::net::TcpStream, limit: Duration) -> Duration {
    use std::io::Read;
    let start = std::time::Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {} // e.g. a 408 answer before the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("still open after {:?}: {e}", start.elapsed()),
        }
    }
}

#[test]
fn slow_and_idle_connections_time_out_and_connections_are_capped() {
    use std::io::Write;
    use std::net::TcpStream;
    let dir = serve_support::tmp();
    let reg = dir.path().join("registry");
    // A 5 s timeout, so that "closed at once" (the cap) and "closed by the timeout" stay apart on a
    // loaded machine.
    let server = start(&reg, &["--http-timeout", "5", "--max-connections", "4"]);
    // A header sent byte by byte too slowly, and a connection that never sends anything.
    let mut slow = TcpStream::connect(&server.addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: loc")
        .unwrap();
    let idle = TcpStream::connect(&server.addr).unwrap();
    for s in [slow, idle] {
        let t = closed_within(s, Duration::from_secs(15));
        assert!(t < Duration::from_secs(10), "closed after {t:?}");
    }
    // Four idle connections fill the cap; a fifth is closed at once, long before the timeout.
    let held = fill_the_cap(&server.addr, 4);
    let extra = TcpStream::connect(&server.addr).unwrap();
    let t = closed_within(extra, Duration::from_secs(10));
    assert!(
        t < Duration::from_millis(2500),
        "the fifth connection lived {t:?}"
    );
    // Once they go, the server has room again (it sees their close when it next polls them).
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let healthz = || {
        let raw = server
            .raw(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes());
        (!raw.is_empty()).then(|| parse_response(&raw).0) // empty: closed at the cap
    };
    while healthz() != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "no room after the held connections closed\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
