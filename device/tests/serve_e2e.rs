//! End to end: the real `mce-device serve` on a file source and a real registry, read through
//! every route, compared with `mce-device segment` on the same frame, reloaded with SIGHUP,
//! stopped with SIGTERM; systemd notifications captured on a fake NOTIFY_SOCKET.

mod serve_support;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use mce_core::inference::lite0_weights_path;
use mce_core::{checkpoint, Mce, MceConfig};
use serve_support::{asset, bin, FakeSystemd, Server};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A checkpoint with a random (but saved, so reproducible) head at a small input size.
fn write_checkpoint(path: &Path) {
    let cfg = MceConfig {
        image_size: 160,
        ..MceConfig::edge_lite0()
    };
    let vm = VarMap::new();
    Mce::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let backbone = candle_core::safetensors::load(lite0_weights_path(), &Device::Cpu).unwrap();
    checkpoint::save(path, &cfg, &vm, &backbone, &BTreeMap::new()).unwrap();
}

fn register(class: &str, stem: &str, id: u8, model: &Path, registry: &Path) {
    let o = Command::new(bin())
        .arg("register")
        .arg(class)
        .arg("--image")
        .arg(asset(&format!("{stem}.png")))
        .arg("--mask")
        .arg(asset(&format!("{stem}_GT.png")))
        .args(["--mask-class", &id.to_string(), "--model"])
        .arg(model)
        .arg("--registry")
        .arg(registry)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Read the first complete part of `/stream.mjpg` and decode its JPEG.
fn first_mjpeg_part(addr: &str) -> image::RgbImage {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /stream.mjpg HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let mut boundary = None;
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(ct) = l.strip_prefix("content-type:") {
            assert!(ct.contains("multipart/x-mixed-replace"), "{ct}");
            boundary = ct.split("boundary=").nth(1).map(|b| b.trim().to_string());
        }
        chunked |= l == "transfer-encoding: chunked";
    }
    let boundary = boundary.expect("a boundary parameter");
    // De-chunk enough of the body to hold one part.
    let mut body = Vec::new();
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    loop {
        if chunked {
            line.clear();
            r.read_line(&mut line).unwrap();
            let n = usize::from_str_radix(line.trim(), 16).expect("chunk size");
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
        } else {
            let mut buf = [0u8; 8192];
            let n = r.read(&mut buf).unwrap();
            assert!(n > 0, "stream ended early");
            body.extend_from_slice(&buf[..n]);
        }
        let Some(start) = find(&body, format!("--{boundary}\r\n").as_bytes()) else {
            continue;
        };
        let Some(hend) = find(&body[start..], b"\r\n\r\n") else {
            continue;
        };
        let headers = String::from_utf8_lossy(&body[start..start + hend]).to_ascii_lowercase();
        assert!(headers.contains("content-type: image/jpeg"), "{headers}");
        let len: usize = headers
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .expect("part content-length")
            .trim()
            .parse()
            .unwrap();
        let data = start + hend + 4;
        if body.len() >= data + len {
            let img = image::load_from_memory_with_format(
                &body[data..data + len],
                image::ImageFormat::Jpeg,
            )
            .expect("a decodable JPEG part");
            return img.to_rgb8();
        }
    }
}

#[test]
fn serve_end_to_end() {
    let dir = serve_support::tmp();
    let model = dir.path().join("model.safetensors");
    write_checkpoint(&model);
    let registry = dir.path().join("registry");
    register("bicycle", "8_10_s", 12, &model, &registry);
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::copy(asset("8_13_s.png"), frames.join("8_13_s.png")).unwrap();

    let systemd = FakeSystemd::listen(dir.path());

    let source = format!("file://{}?loop=true&fps=1", frames.display());
    let server = Server::start(
        &[
            "--model",
            model.to_str().unwrap(),
            "--registry",
            registry.to_str().unwrap(),
            "--source",
            &source,
        ],
        &systemd.env("400000"),
    )
    .unwrap();
    let health = server.wait_health(Duration::from_secs(90), |v| {
        v["frames"]["processed"].as_u64() >= Some(1)
    });
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["source"]["state"], "streaming", "{health}");
    assert_eq!(health["classes"], 1);
    assert_eq!(health["model_trained"], true);
    assert_eq!(health["model_head"], "paper", "{health}"); // the checkpoint written above

    let (status, headers, body) = server.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        headers.contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    let metrics = String::from_utf8(body).unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert!(value("mce_frames_in_total") >= 1.0);
    assert!(value("mce_frames_out_total") >= 1.0);
    assert!(value("mce_frames_in_total") >= value("mce_frames_out_total"));
    assert_eq!(value("mce_classes"), 1.0);
    for stage in ["capture", "inference", "encode"] {
        assert!(
            metrics.contains(&format!(
                "mce_stage_latency_seconds_count{{stage=\"{stage}\"}}"
            )),
            "no {stage} histogram"
        );
    }
    assert!(metrics.contains("mce_class_foreground_area{class=\"bicycle\"}"));

    let classes = server.get_json("/classes");
    assert_eq!(classes["classes"][0]["name"], "bicycle");
    assert_eq!(classes["classes"][0]["exemplars"], 1);

    let (status, headers, jpeg) = server.get("/frame.jpg");
    assert_eq!(status, 200);
    assert!(headers.contains("content-type: image/jpeg"));
    let frame = image::load_from_memory(&jpeg).unwrap();
    assert_eq!((frame.width(), frame.height()), (320, 213));
    let part = first_mjpeg_part(&server.addr);
    assert_eq!(part.dimensions(), (320, 213));

    let results = server.get_json("/results");
    assert_eq!(results["frame"]["width"], 320);
    assert!(results["frame"]["source"]
        .as_str()
        .unwrap()
        .ends_with("8_13_s.png"));
    assert!(results["latency"]["inference_ms"].as_f64().unwrap() > 0.0);
    let bike = &results["classes"][0];
    assert_eq!(bike["name"], "bicycle");
    let served_area = bike["area"].as_f64().unwrap();

    // The same frame through the one-shot CLI.
    let mask_out = dir.path().join("mask.png");
    let o = Command::new(bin())
        .args([
            "segment",
            "--model",
            model.to_str().unwrap(),
            "--mask-class",
            "12",
        ])
        .arg("--support")
        .arg(format!(
            "{}:{}",
            asset("8_10_s.png").display(),
            asset("8_10_s_GT.png").display()
        ))
        .arg("--query")
        .arg(asset("8_13_s.png"))
        .arg("--out")
        .arg(&mask_out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mask = image::open(&mask_out).unwrap().to_luma8();
    let cli_area =
        mask.pixels().filter(|p| p.0[0] > 0).count() as f64 / (mask.width() * mask.height()) as f64;
    println!("foreground area: served {served_area:.4}, segment CLI {cli_area:.4}");
    assert!(
        (served_area - cli_area).abs() <= 0.005,
        "served area {served_area} vs segment {cli_area}"
    );
    if served_area > 0.0 {
        let b = &bike["bbox"];
        assert!(b["width"].as_u64().unwrap() > 0 && bike["score"].as_f64().unwrap() > 0.5);
    }

    // SIGHUP: a class registered while serving appears without a restart.
    register("dog", "16_10_s", 20, &model, &registry);
    server.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = server.get_json("/classes");
        if c["classes"].as_array().unwrap().len() == 2 {
            assert_eq!(c["classes"][1]["name"], "dog");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reload never happened\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let health = server.get_json("/healthz");
    assert_eq!(health["classes"], 2);

    // A viewer still watching the stream must not hold the shutdown up: its stream ends.
    let mut viewer = TcpStream::connect(&server.addr).unwrap();
    viewer
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        viewer,
        "GET /stream.mjpg HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.addr
    )
    .unwrap();
    let mut first = [0u8; 64];
    viewer.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"));

    server.signal("TERM");
    let mut rest = Vec::new();
    viewer
        .read_to_end(&mut rest)
        .expect("the stream ends at shutdown (no read timeout)");
    let (status, log) = server.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("clean shutdown:"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    let notes = systemd.notes().join("\n");
    for want in ["READY=1", "WATCHDOG=1", "RELOADING=1", "STOPPING=1"] {
        assert!(notes.contains(want), "no {want} in notifications:\n{notes}");
    }
    let ready = notes.find("READY=1").unwrap();
    let stopping = notes.find("STOPPING=1").unwrap();
    assert!(ready < stopping);
}
