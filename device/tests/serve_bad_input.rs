//! Bad input to `mce-device serve`: each case gets a clear error (or a logged, counted skip /
//! retry) and never a panic. Startup errors exit non-zero before loading anything heavy; runtime
//! problems (corrupt frames, a missing camera, malformed HTTP) keep the server up.

mod serve_support;

use serve_support::{bin, untrained, Server};
use std::process::Command;
use std::time::Duration;

/// Run `serve` expecting a startup failure; returns its stderr.
fn fails(args: &[&str]) -> String {
    let o = Command::new(bin())
        .arg("serve")
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = serve_support::plain(&String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "serve {args:?} should fail:\n{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "serve {args:?} panicked:\n{stderr}"
    );
    stderr
}

fn assert_has(hay: &str, needles: &[&str]) {
    for n in needles {
        assert!(hay.contains(n), "missing {n:?} in:\n{hay}");
    }
}

#[test]
fn startup_errors_are_clear() {
    let dir = serve_support::tmp();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let reg = dir.path().join("registry");
    let reg = reg.to_str().unwrap();
    let e = empty.to_str().unwrap();
    let missing = dir.path().join("no-such-dir");
    let missing = missing.to_str().unwrap();
    let file_src = format!("file://{e}");
    let mut cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        // 1. unknown scheme
        (
            vec!["--init", "lite0", "--source", "http://camera/1"],
            vec!["unsupported scheme \"http\""],
        ),
        // 2. missing directory
        (
            vec!["--init", "lite0", "--source", missing],
            vec!["no-such-dir", "no such file or directory"],
        ),
        // 3. empty directory
        (
            vec!["--init", "lite0", "--source", &file_src],
            vec!["no images", e],
        ),
        // 4. bad camera parameters
        (
            vec!["--init", "lite0", "--source", "v4l2:///dev/video0?fps=fast"],
            vec!["fps=\"fast\""],
        ),
        (
            vec![
                "--init",
                "lite0",
                "--source",
                "v4l2:///dev/video0?format=h264",
            ],
            vec!["mjpg or yuyv"],
        ),
        (
            vec![
                "--init",
                "lite0",
                "--source",
                "v4l2:///dev/video0?exposure=3",
            ],
            vec!["unknown parameter \"exposure\""],
        ),
        // 5. bad --http address (clap)
        (
            vec!["--init", "lite0", "--http", "localhost-8080"],
            vec!["--http", "invalid"],
        ),
        // 6. bad file-source parameter
        (
            vec!["--init", "lite0", "--source", "file:///tmp?loop=sometimes"],
            vec!["loop=\"sometimes\""],
        ),
        // 7. unknown class name (registry empty)
        (
            vec![
                "--init",
                "lite0",
                "--source",
                "v4l2:///dev/video9",
                "--registry",
                reg,
                "--classes",
                "zebra",
            ],
            vec!["unknown class \"zebra\"", "no classes"],
        ),
        // 8. missing model file
        (
            vec![
                "--model",
                "/no/such/model.safetensors",
                "--source",
                "v4l2:///dev/video9",
            ],
            vec!["/no/such/model.safetensors"],
        ),
        // 9. jpeg quality out of range
        (
            vec!["--init", "lite0", "--jpeg-quality", "0"],
            vec!["--jpeg-quality"],
        ),
    ];
    if cfg!(not(feature = "gstreamer")) {
        // 10. a GStreamer source in a build without it: says how to get it
        cases.push((
            vec!["--init", "lite0", "--source", "csi://0"],
            vec!["CSI camera 0", "--features gstreamer"],
        ));
    }
    for (args, want) in cases {
        let stderr = fails(&args);
        assert_has(&stderr, &want);
    }
}

#[test]
fn missing_camera_retries_and_http_errors_are_answered() {
    let dir = serve_support::tmp();
    let reg = dir.path().join("registry");
    let server = Server::start(&untrained(&reg, "v4l2:///dev/video9"), &[]).unwrap();
    // 10. a missing camera: clear error, back-off, degraded health, server up.
    let h = server.wait_health(Duration::from_secs(30), |v| {
        v["source"]["state"] == "reconnecting" && v["source"]["last_error"].is_string()
    });
    assert_eq!(h["status"], "degraded");
    let err = h["source"]["last_error"].as_str().unwrap();
    assert!(err.contains("camera /dev/video9: cannot open"), "{err}");
    std::thread::sleep(Duration::from_millis(1200));
    let log = server.log();
    assert_has(
        &log,
        &[
            "camera /dev/video9: cannot open",
            "retrying in 0.5 s",
            "retrying in 1.0 s",
        ],
    );

    // 11. unknown path -> 404 with a JSON error
    let (status, _, body) = server.get("/nope");
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("no route /nope"));
    // 12. POST on a GET route -> 405 with Allow
    let (status, headers, _) = server.request("POST", "/results");
    assert_eq!(status, 405);
    assert!(headers.contains("allow: get"), "{headers}");
    let (status, _, _) = server.request("DELETE", "/classes");
    assert_eq!(status, 405);
    // 13. no frame yet -> 503 on /frame.jpg and /results
    assert_eq!(server.get("/frame.jpg").0, 503);
    assert_eq!(server.get("/results").0, 503);
    // 14. garbage request line -> 400
    let (status, _, _) = serve_support::parse_response(&server.raw(b"GARBAGE\r\n\r\n"));
    assert_eq!(status, 400);
    // 15. malformed header -> 400
    let (status, _, _) = serve_support::parse_response(
        &server.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n"),
    );
    assert_eq!(status, 400);
    // 16. binary junk: the connection is answered or closed, never a crash
    let _ = server.raw(&[0u8, 159, 146, 150, 255, 13, 10, 13, 10]);
    // ... and the server is still up.
    assert_eq!(server.get("/healthz").0, 200);

    // 17. the port is taken -> clear error
    let mut args = untrained(&reg, "v4l2:///dev/video9");
    args.extend(["--http", &server.addr]);
    let taken = fails(&args);
    assert_has(&taken, &["cannot listen on", &server.addr]);

    server.signal("TERM");
    let (status, log) = server.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("clean shutdown"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn corrupt_frames_are_skipped_and_counted() {
    let dir = serve_support::tmp();
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    image::RgbImage::from_pixel(40, 30, image::Rgb([10, 200, 30]))
        .save(frames.join("a.png"))
        .unwrap();
    std::fs::write(frames.join("b.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
    image::RgbImage::from_pixel(40, 30, image::Rgb([200, 10, 30]))
        .save(frames.join("c.jpg"))
        .unwrap();
    let reg = dir.path().join("registry");
    let mut args = untrained(&reg, frames.to_str().unwrap());
    args.push("--lossless");
    let server = Server::start(&args, &[]).unwrap();
    // 18. the corrupt file is skipped with a warning and counted; the others go through.
    let h = server.wait_health(Duration::from_secs(30), |v| {
        v["source"]["state"] == "finished"
    });
    assert_eq!(h["frames"]["corrupt"], 1, "{h}");
    assert_eq!(h["frames"]["in"], 2, "{h}");
    let h = server.wait_health(Duration::from_secs(30), |v| v["frames"]["processed"] == 2);
    assert_eq!(h["status"], "ok");
    assert_has(&server.log(), &["skipping frame: corrupt frame", "b.png"]);
    let results = server.get_json("/results");
    assert!(results["frame"]["source"]
        .as_str()
        .unwrap()
        .ends_with("c.jpg"));
    assert_eq!(results["classes"].as_array().unwrap().len(), 0);
    let (_, _, m) = server.get("/metrics");
    assert!(String::from_utf8_lossy(&m).contains("mce_frames_corrupt_total 1"));

    server.signal("INT");
    let (status, log) = server.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("SIGINT received") && log.contains("clean shutdown"),
        "{log}"
    );
}

#[test]
fn a_sequence_with_nothing_decodable_fails_the_source_not_the_server() {
    let dir = serve_support::tmp();
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::write(frames.join("x.png"), b"not a png").unwrap();
    std::fs::write(frames.join("y.jpg"), b"not a jpeg").unwrap();
    let reg = dir.path().join("registry");
    let source = format!("file://{}?loop=true", frames.display());
    let systemd = serve_support::FakeSystemd::listen(dir.path());
    let server = Server::start(&untrained(&reg, &source), &systemd.env("400000")).unwrap();
    // 19. looping over only corrupt files stops the source with a clear error, and a failed
    // source is unhealthy: 503, and the watchdog is no longer fed (systemd restarts us).
    let h = server.wait_health(Duration::from_secs(30), |v| {
        v["source"]["state"] == "failed"
    });
    assert_eq!(h["status"], "unhealthy");
    assert_eq!(server.get("/healthz").0, 503);
    std::thread::sleep(Duration::from_millis(400)); // a ping in flight lands
    let pings = systemd.pings();
    std::thread::sleep(Duration::from_millis(1500)); // ~7 watchdog intervals
    assert_eq!(
        systemd.pings(),
        pings,
        "the watchdog is still fed:\n{}",
        server.log()
    );
    assert!(h["source"]["last_error"]
        .as_str()
        .unwrap()
        .contains("no image in the sequence could be decoded"));
    assert_eq!(h["frames"]["corrupt"], 2);
    server.signal("TERM");
    let (status, log) = server.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn frames_that_vanish_for_seconds_come_back() {
    let dir = serve_support::tmp();
    let (frames, away) = (dir.path().join("frames"), dir.path().join("away"));
    std::fs::create_dir_all(&frames).unwrap();
    for (name, g) in [("a.png", 60u8), ("b.png", 160)] {
        image::RgbImage::from_pixel(40, 30, image::Rgb([g, g, g]))
            .save(frames.join(name))
            .unwrap();
    }
    let reg = dir.path().join("registry");
    let source = format!("file://{}?loop=true&fps=20", frames.display());
    let server = Server::start(&untrained(&reg, &source), &[]).unwrap();
    server.wait_health(Duration::from_secs(30), |v| {
        v["frames"]["processed"].as_u64() >= Some(1)
    });
    // 20. every frame moves out of the folder for a few seconds: retried, never corrupt ...
    std::fs::rename(&frames, &away).unwrap();
    let h = server.wait_health(Duration::from_secs(10), |v| {
        v["source"]["state"] == "reconnecting"
    });
    assert_eq!(h["status"], "degraded", "{h}");
    std::thread::sleep(Duration::from_secs(3));
    std::fs::rename(&away, &frames).unwrap();
    // ... and the source streams again when they are back.
    let before = server.get_json("/healthz")["frames"]["in"]
        .as_u64()
        .unwrap();
    let h = server.wait_health(Duration::from_secs(30), |v| {
        v["source"]["state"] == "streaming" && v["frames"]["in"].as_u64() > Some(before + 2)
    });
    assert_eq!(h["frames"]["corrupt"], 0, "{h}");
    assert_eq!(h["status"], "ok", "{h}");
    assert_has(&server.log(), &["cannot read the frame", "retrying in"]);
    server.signal("TERM");
    let (status, log) = server.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn signals_while_starting_are_handled_not_fatal() {
    let dir = serve_support::tmp();
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    image::RgbImage::from_pixel(40, 30, image::Rgb([90, 90, 90]))
        .save(frames.join("a.png"))
        .unwrap();
    let reg = dir.path().join("registry");
    let args = untrained(&reg, frames.to_str().unwrap());
    // 21. SIGHUP while the model loads (long before the handlers exist): kept pending, then
    // handled as a reload; the process does not die of it.
    let server = Server::start_with(&args, &[], |pid| {
        std::thread::sleep(Duration::from_millis(100));
        serve_support::kill(pid, "HUP");
    })
    .expect("a SIGHUP during startup ended the process");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.log().contains("SIGHUP: reloading") {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    server.signal("TERM");
    let (status, log) = server.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{log}");

    // SIGTERM while starting: a clean stop (exit 0) once the handlers exist, not death by signal.
    let server = Server::start_with(&args, &[], |pid| {
        std::thread::sleep(Duration::from_millis(100));
        serve_support::kill(pid, "TERM");
    })
    .expect("a SIGTERM during startup ended the process before it listened");
    let (status, log) = server.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
}
