//! The systemd unit of the service: `systemd-analyze verify` accepts it without a warning, and it
//! carries the directives the service relies on (notify, watchdog, restart, state, devices,
//! hardening).

use std::path::{Path, PathBuf};
use std::process::Command;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/mce-device.service")
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_path()).expect("read systemd/mce-device.service")
}

/// `Key=value` lines of the unit (comments and section headers skipped).
fn directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_without_warnings() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    let analyze = if analyze.exists() {
        analyze.to_path_buf()
    } else {
        match which("systemd-analyze") {
            Some(p) => p,
            None => panic!(
                "systemd-analyze is not installed, so the unit cannot be verified: install systemd \
                 (e.g. `apt-get install systemd`) and run this test again"
            ),
        }
    };
    let text = unit_text();
    let bin = env!("CARGO_BIN_EXE_mce-device");
    let exec = text
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("an ExecStart= line");
    let program = exec["ExecStart=".len()..]
        .split_whitespace()
        .next()
        .unwrap();
    let rewritten = text.replace(program, bin);
    assert!(rewritten.contains(&format!("ExecStart={bin} serve")));
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("mce-device.service");
    std::fs::write(&unit, rewritten).unwrap();
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let about_unit: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains("mce-device"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze warns about the unit:\n{}",
        about_unit.join("\n")
    );
}

#[test]
fn the_unit_has_the_required_directives() {
    let d = directives(&unit_text());
    let get = |k: &str| -> Vec<&str> {
        d.iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |k: &str| -> String {
        let v = get(k);
        assert_eq!(v.len(), 1, "{k}= must appear exactly once, found {v:?}");
        v[0].to_string()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("StateDirectory"), "mce");
    assert_eq!(one("DevicePolicy"), "closed");
    assert_eq!(one("ProtectSystem"), "strict");
    for yes in ["ProtectHome", "NoNewPrivileges", "PrivateTmp"] {
        assert_eq!(one(yes), "yes", "{yes}");
    }
    let watchdog: u64 = one("WatchdogSec").parse().expect("WatchdogSec in seconds");
    assert!((5..=300).contains(&watchdog), "WatchdogSec={watchdog}");
    let restart_sec: u64 = one("RestartSec").parse().expect("RestartSec in seconds");
    assert!(restart_sec >= 1);
    assert!(
        one("EnvironmentFile").starts_with('-'),
        "the env file must be optional"
    );
    assert!(one("ExecStart").contains(" serve "));
    assert!(one("ExecReload").contains("-HUP"));
    let nofile: u64 = one("LimitNOFILE").parse().expect("LimitNOFILE a number");
    assert!(
        nofile >= 4096,
        "LimitNOFILE={nofile}: too few for camera, registry and clients"
    );
    assert!(one("SupplementaryGroups").contains("video"));
    assert!(
        get("DeviceAllow")
            .iter()
            .any(|v| v.contains("video") && v.ends_with(" rw")),
        "DeviceAllow must allow the video devices read-write"
    );
    assert!(get("DynamicUser") == ["yes"] || !get("User").is_empty());
    // Nothing that would hide the camera or the loopback port.
    for off in ["PrivateDevices", "PrivateNetwork"] {
        assert!(
            get(off).iter().all(|v| *v == "no"),
            "{off} would break the service"
        );
    }
    assert!(
        one("RestrictAddressFamilies").contains("AF_UNIX"),
        "sd_notify needs AF_UNIX"
    );
}

#[test]
fn the_env_file_documents_every_variable_the_unit_uses() {
    let text = unit_text();
    let env = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/mce-device.env"),
    )
    .unwrap();
    for var in [
        "MCE_SOURCE",
        "MCE_HTTP",
        "MCE_ARGS",
        "MCE_MODELS_DIR",
        "RUST_LOG",
    ] {
        assert!(
            env.lines().any(|l| l.starts_with(&format!("{var}="))),
            "{var} is not set in mce-device.env"
        );
        if var != "MCE_MODELS_DIR" && var != "RUST_LOG" {
            assert!(text.contains(&format!("{{{var}}}")) || text.contains(&format!("${var}")));
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
