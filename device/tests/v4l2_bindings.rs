//! The V4L2 bindings under the `v4l` crate are pre-generated and committed
//! (`vendor/v4l2-sys-mit`, patched in by the workspace's `[patch.crates-io]`), not made by bindgen at
//! build time. These tests check that the committed bindings match the kernel header and that nothing
//! brings build-time generation (and with it libclang) back.

use std::path::{Path, PathBuf};
use std::process::Command;

use v4l::v4l2::vidioc;
use v4l::v4l_sys as sys;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn vendored() -> PathBuf {
    workspace_root().join("vendor/v4l2-sys-mit")
}

/// One value computed by both C (against the kernel header) and Rust (against the bindings).
struct Check {
    what: String,
    c_expr: String,
    rust: u64,
}

macro_rules! layout {
    ($checks:ident, $t:ident) => {
        $checks.push(Check {
            what: format!("sizeof({})", stringify!($t)),
            c_expr: format!("sizeof(struct {})", stringify!($t)),
            rust: std::mem::size_of::<sys::$t>() as u64,
        });
        $checks.push(Check {
            what: format!("alignof({})", stringify!($t)),
            c_expr: format!("_Alignof(struct {})", stringify!($t)),
            rust: std::mem::align_of::<sys::$t>() as u64,
        });
    };
}

// `$c` is the C field name, `$r` bindgen's (`type` becomes `type_`).
macro_rules! offset {
    ($checks:ident, $t:ident, $c:ident => $r:ident) => {
        $checks.push(Check {
            what: format!("offsetof({}, {})", stringify!($t), stringify!($c)),
            c_expr: format!("offsetof(struct {}, {})", stringify!($t), stringify!($c)),
            rust: std::mem::offset_of!(sys::$t, $r) as u64,
        });
    };
    ($checks:ident, $t:ident, $f:ident) => {
        offset!($checks, $t, $f => $f)
    };
}

// v4l computes its ioctl request numbers from `size_of` of the bindings' structs, so a wrong size
// means a wrong ioctl: compare the numbers too.
macro_rules! ioctl {
    ($checks:ident, $($n:ident),+ $(,)?) => {
        $($checks.push(Check {
            what: stringify!($n).to_string(),
            c_expr: format!("(unsigned long){}", stringify!($n)),
            rust: vidioc::$n as u64,
        });)+
    };
}

/// The structs and ioctls the `v4l` crate (and so mce-device's camera source) uses. Only fields that
/// have been in the UAPI header for years are named, so an older or newer host header still compiles.
fn checks() -> Vec<Check> {
    let mut c = Vec::new();
    layout!(c, v4l2_capability);
    offset!(c, v4l2_capability, card);
    offset!(c, v4l2_capability, capabilities);
    offset!(c, v4l2_capability, device_caps);
    layout!(c, v4l2_pix_format);
    offset!(c, v4l2_pix_format, pixelformat);
    offset!(c, v4l2_pix_format, bytesperline);
    offset!(c, v4l2_pix_format, sizeimage);
    offset!(c, v4l2_pix_format, colorspace);
    layout!(c, v4l2_format);
    offset!(c, v4l2_format, fmt);
    layout!(c, v4l2_timecode);
    layout!(c, v4l2_buffer);
    offset!(c, v4l2_buffer, timestamp);
    offset!(c, v4l2_buffer, timecode);
    offset!(c, v4l2_buffer, sequence);
    offset!(c, v4l2_buffer, m);
    offset!(c, v4l2_buffer, length);
    layout!(c, v4l2_requestbuffers);
    offset!(c, v4l2_requestbuffers, type => type_);
    offset!(c, v4l2_requestbuffers, memory);
    layout!(c, v4l2_fmtdesc);
    offset!(c, v4l2_fmtdesc, description);
    offset!(c, v4l2_fmtdesc, pixelformat);
    layout!(c, v4l2_frmsize_discrete);
    layout!(c, v4l2_frmsize_stepwise);
    layout!(c, v4l2_frmsizeenum);
    offset!(c, v4l2_frmsizeenum, pixel_format);
    offset!(c, v4l2_frmsizeenum, type => type_);
    layout!(c, v4l2_fract);
    layout!(c, v4l2_frmival_stepwise);
    layout!(c, v4l2_frmivalenum);
    offset!(c, v4l2_frmivalenum, width);
    offset!(c, v4l2_frmivalenum, type => type_);
    layout!(c, v4l2_captureparm);
    offset!(c, v4l2_captureparm, timeperframe);
    layout!(c, v4l2_outputparm);
    layout!(c, v4l2_streamparm);
    offset!(c, v4l2_streamparm, parm);
    layout!(c, v4l2_queryctrl);
    offset!(c, v4l2_queryctrl, name);
    offset!(c, v4l2_queryctrl, default_value);
    offset!(c, v4l2_queryctrl, flags);
    layout!(c, v4l2_query_ext_ctrl);
    offset!(c, v4l2_query_ext_ctrl, name);
    offset!(c, v4l2_query_ext_ctrl, elem_size);
    offset!(c, v4l2_query_ext_ctrl, dims);
    layout!(c, v4l2_querymenu);
    layout!(c, v4l2_control);
    layout!(c, v4l2_ext_control);
    layout!(c, v4l2_ext_controls);
    offset!(c, v4l2_ext_controls, controls);
    ioctl!(
        c,
        VIDIOC_QUERYCAP,
        VIDIOC_ENUM_FMT,
        VIDIOC_G_FMT,
        VIDIOC_S_FMT,
        VIDIOC_REQBUFS,
        VIDIOC_QUERYBUF,
        VIDIOC_QBUF,
        VIDIOC_DQBUF,
        VIDIOC_STREAMON,
        VIDIOC_STREAMOFF,
        VIDIOC_G_PARM,
        VIDIOC_S_PARM,
        VIDIOC_G_CTRL,
        VIDIOC_S_CTRL,
        VIDIOC_QUERYCTRL,
        VIDIOC_QUERYMENU,
        VIDIOC_G_EXT_CTRLS,
        VIDIOC_S_EXT_CTRLS,
        VIDIOC_ENUM_FRAMESIZES,
        VIDIOC_ENUM_FRAMEINTERVALS,
        VIDIOC_QUERY_EXT_CTRL,
    );
    c
}

fn have_cc() -> bool {
    Command::new("cc")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn struct_layouts_and_ioctls_match_the_kernel_header() {
    let header = Path::new("/usr/include/linux/videodev2.h");
    if !header.exists() {
        eprintln!(
            "skipped: {} is absent (Debian: linux-libc-dev)",
            header.display()
        );
        return;
    }
    if !have_cc() {
        eprintln!("skipped: no C compiler `cc` to build the sizeof/offsetof probe");
        return;
    }
    let checks = checks();
    let mut program = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include <linux/videodev2.h>\nint main(void) {\n",
    );
    for check in &checks {
        program.push_str(&format!(
            "    printf(\"%llu\\n\", (unsigned long long)({}));\n",
            check.c_expr
        ));
    }
    program.push_str("    return 0;\n}\n");

    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("probe.c");
    let binary = dir.path().join("probe");
    std::fs::write(&source, &program).unwrap();
    let built = Command::new("cc")
        .arg("-std=gnu11")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "the probe does not compile against {}:\n{}\n{program}",
        header.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(&binary).output().unwrap();
    assert!(ran.status.success(), "{ran:?}");
    let stdout = String::from_utf8(ran.stdout).unwrap();
    let values: Vec<u64> = stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(values.len(), checks.len(), "{stdout}");

    let mut mismatches = Vec::new();
    for (check, c) in checks.iter().zip(&values) {
        let line = format!("{:<44} C {:>10}  Rust {:>10}", check.what, c, check.rust);
        println!("{line}");
        if *c != check.rust {
            mismatches.push(line);
        }
    }
    assert!(
        mismatches.is_empty(),
        "the vendored bindings (vendor/v4l2-sys-mit/src/bindings/{}.rs) disagree with {}; \
         regenerate them with vendor/v4l2-sys-mit/regenerate.sh:\n{}",
        std::env::consts::ARCH,
        header.display(),
        mismatches.join("\n")
    );
    println!("{} values agree with {}", checks.len(), header.display());
}

/// The size or alignment bindgen's own layout test asserts for `name` in a bindings file.
fn asserted(bindings: &str, what: &str, name: &str) -> Option<u64> {
    let key = format!("::std::mem::{what}::<{name}>(),");
    let rest = &bindings[bindings.find(&key)? + key.len()..];
    let number = rest.trim_start().split("usize").next()?;
    number.trim().parse().ok()
}

/// aarch64 and x86_64 are both LP64 with a 16-byte timeval, so the V4L2 structs must be laid out alike:
/// a check of the bindings for the architecture this machine cannot compile against.
#[test]
fn both_architectures_agree_on_the_layouts_v4l_uses() {
    let read = |arch: &str| {
        let path = vendored().join(format!("src/bindings/{arch}.rs"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let (x86_64, aarch64) = (read("x86_64"), read("aarch64"));
    for bindings in [&x86_64, &aarch64] {
        assert!(
            bindings.contains("// kernel:") && bindings.contains("regenerate.sh"),
            "each bindings file names the kernel header it came from and the script"
        );
    }
    let names = [
        "v4l2_capability",
        "v4l2_pix_format",
        "v4l2_format",
        "v4l2_buffer",
        "v4l2_requestbuffers",
        "v4l2_fmtdesc",
        "v4l2_frmsizeenum",
        "v4l2_frmivalenum",
        "v4l2_streamparm",
        "v4l2_queryctrl",
        "v4l2_query_ext_ctrl",
        "v4l2_querymenu",
        "v4l2_control",
        "v4l2_ext_control",
        "v4l2_ext_controls",
    ];
    let here = checks();
    for name in names {
        for what in ["size_of", "align_of"] {
            let a = asserted(&x86_64, what, name);
            let b = asserted(&aarch64, what, name);
            assert!(a.is_some(), "no {what} layout test for {name} in x86_64.rs");
            assert_eq!(a, b, "{what}::<{name}>: x86_64 vs aarch64");
            // and the bindings compiled into this test say the same
            let short = if what == "size_of" {
                "sizeof"
            } else {
                "alignof"
            };
            let compiled = here
                .iter()
                .find(|c| c.what == format!("{short}({name})"))
                .map(|c| c.rust);
            assert_eq!(compiled, a, "{what}::<{name}> compiled vs committed");
        }
    }
}

/// Build-time generation needs libclang; it must not come back through a dependency.
#[test]
fn no_bindgen_or_clang_sys_in_the_lock_file() {
    let path = workspace_root().join("Cargo.lock");
    let lock = std::fs::read_to_string(&path).unwrap();
    let names: Vec<&str> = lock
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .collect();
    assert!(names.contains(&"v4l"), "expected v4l in {}", path.display());
    for banned in ["bindgen", "clang-sys"] {
        assert!(
            !names.contains(&banned),
            "{banned} is back in {}: something generates bindings at build time again, which needs \
             libclang (see vendor/v4l2-sys-mit/README.md)",
            path.display()
        );
    }
    // v4l2-sys-mit is the vendored path crate (no registry source), and it has no build script
    let entry = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"v4l2-sys-mit\""))
        .expect("v4l2-sys-mit in Cargo.lock");
    assert!(
        !entry.contains("source ="),
        "v4l2-sys-mit comes from a registry, not vendor/ ([patch.crates-io] lost?):{entry}"
    );
    assert!(!vendored().join("build.rs").exists());
}
