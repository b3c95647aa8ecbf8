//! The page at `/` in a real headless Chromium against the real `mce-device serve`: it loads, the
//! stream image shows a frame, the legend lists the registered class in its overlay colour, and
//! health, latency and the last results are filled in.
//!
//! The browser is `$MCE_CHROMIUM`, else `chromium`, `chromium-browser` or `google-chrome` on the
//! PATH. Without one the test says so and passes, unless `MCE_REQUIRE_BROWSER` is set (CI sets it
//! and installs Chromium when missing).

mod serve_support;

use serve_support::{asset, bin, Server};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MCE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
    .find(|p| p.is_file())
}

fn register(registry: &Path) {
    let o = Command::new(bin())
        .args(["register", "bicycle", "--image"])
        .arg(asset("8_10_s.png"))
        .arg("--mask")
        .arg(asset("8_10_s_GT.png"))
        .args(["--mask-class", "12", "--registry"])
        .arg(registry)
        .args(model_args())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The bundled model when present, else the untrained head.
fn model_args() -> Vec<&'static str> {
    if mce_device::model::default_model_path().exists() {
        vec![]
    } else {
        vec!["--init", "lite0"]
    }
}

/// The page's DOM after `budget_ms` of (virtual) time in headless Chromium.
fn dump_dom(browser: &Path, url: &str, profile: &Path, budget_ms: u32) -> String {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--mute-audio",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(["--dump-dom", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", browser.display()));
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} did not finish within 90 s", browser.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = child.wait_with_output().unwrap();
    let dom = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        dom.contains("</html>"),
        "no DOM from {}: {}",
        browser.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    dom
}

#[test]
fn the_page_shows_the_stream_and_the_legend_in_chromium() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("MCE_REQUIRE_BROWSER").is_none(),
            "MCE_REQUIRE_BROWSER is set but no Chromium was found (set MCE_CHROMIUM)"
        );
        eprintln!("skipped: no Chromium on this machine (set MCE_CHROMIUM to run the page test)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    register(&registry);
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    std::fs::copy(asset("8_13_s.png"), frames.join("a.png")).unwrap();
    let source = format!("file://{}?loop=true&fps=2", frames.display());
    let mut args = vec![
        "--registry",
        registry.to_str().unwrap(),
        "--source",
        &source,
    ];
    args.extend(model_args());
    let server = Server::start(&args, &[]).expect("serve starts");
    server.wait_health(Duration::from_secs(120), |h| {
        h["frames"]["processed"].as_u64().unwrap_or(0) > 0
    });

    let dom = dump_dom(
        &browser,
        &format!("http://{}/", server.addr),
        &dir.path().join("chromium"),
        8000,
    );
    let (status, headers, _) = server.get("/");
    assert_eq!(status, 200);
    assert!(headers.contains("content-type: text/html"), "{headers}");
    server.signal("TERM");
    let (_, log) = server.wait(Duration::from_secs(30));

    // The stream image decoded a frame of the source's size.
    assert!(
        dom.contains(r#"data-width="320""#),
        "the stream image did not load:\n{dom}\n{log}"
    );
    // The legend: the class, in its overlay colour (PALETTE[0] = 255, 40, 40).
    assert!(dom.contains(r#"data-rows="1""#), "{dom}");
    assert!(dom.contains(r#"<tr data-class="bicycle">"#), "{dom}");
    assert!(dom.contains("rgb(255, 40, 40)"), "{dom}");
    // Health, latency and the last results came from /healthz and /results.
    assert!(
        dom.contains(r#"class="status ok""#) || dom.contains(r#"class="status degraded""#),
        "{dom}"
    );
    assert!(!dom.contains(r#"data-stage="inference_ms">–<"#), "{dom}");
    assert!(dom.contains(">#"), "no row in the last results: {dom}");
}
