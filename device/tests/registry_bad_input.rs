//! Malformed input to the registry CLI: every case must fail with its exit code, name the file or
//! class and the problem on stderr, not panic, and leave the registry folder byte-for-byte unchanged.

use candle_core::Device;
use image::{GrayImage, Luma};
use mce_core::inference::{lite0_weights_path, Segmenter};
use mce_core::MceConfig;
use mce_device::registry::{ExemplarInput, RegisterOptions, Registry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn asset(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/msrc")
        .join(name)
        .display()
        .to_string()
}

/// Every file (relative path -> bytes) and folder (-> None) under `dir`.
fn snapshot(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if p.is_dir() {
                out.insert(rel, None);
                walk(root, &p, out);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    if dir.is_dir() {
        walk(dir, dir, &mut out);
    } else if dir.exists() {
        out.insert(String::new(), Some(std::fs::read(dir).unwrap()));
    }
    out
}

/// CRC-32 (IEEE) of PNG chunks, for the crafted header below.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let mut body = kind.to_vec();
    body.extend(data);
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(&body);
    out.extend(crc32(&body).to_be_bytes());
}

/// A valid PNG announcing a 100000×100000 RGB image (a decompression bomb's header), with a tiny
/// image data chunk (a stored zlib block holding one filter byte).
fn bomb_png() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = 100_000u32.to_be_bytes().to_vec();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8 bit, RGB, deflate, no filter, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x01, 0x00, 0xfe, 0xff, 0x00, 0, 1, 0, 1],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

struct Inputs {
    dir: PathBuf,
}

impl Inputs {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
    fn create(dir: &Path) -> Inputs {
        let (w, h) = image::image_dimensions(asset("8_10_s.png")).unwrap();
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
        write("empty.png", b"");
        let photo = std::fs::read(asset("8_10_s.png")).unwrap();
        write("truncated.png", &photo[..1000]);
        write("half.png", &photo[..photo.len() / 2]);
        let jpg = dir.join("full.jpg");
        image::open(asset("8_10_s.png"))
            .unwrap()
            .save(&jpg)
            .unwrap();
        let jpeg = std::fs::read(&jpg).unwrap();
        write("half.jpg", &jpeg[..jpeg.len() / 2]);
        write("text.png", b"this is a text file, not an image\n");
        write("bomb.png", &bomb_png());
        GrayImage::from_pixel(100, 100, Luma([255]))
            .save(dir.join("small_mask.png"))
            .unwrap();
        GrayImage::new(w, h)
            .save(dir.join("empty_mask.png"))
            .unwrap();
        let mut near = GrayImage::new(w, h);
        for x in 0..10 {
            near.put_pixel(x, 0, Luma([255]));
        }
        near.save(dir.join("near_empty_mask.png")).unwrap();
        std::fs::create_dir_all(dir.join("folder.png")).unwrap();
        Inputs {
            dir: dir.to_path_buf(),
        }
    }
}

#[derive(Clone, Copy)]
enum Reg {
    /// A registry holding class `bicycle` with 2 exemplars.
    Main,
    /// The same, with an index of schema version 99.
    Newer,
    /// A plain file where the registry folder should be.
    File,
}

struct Case {
    name: &'static str,
    args: Vec<String>,
    registry: Reg,
    code: i32,
    /// All must appear in stderr.
    needles: Vec<String>,
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn register(class: &str, pairs: &[(&str, &str)], extra: &[&str]) -> Vec<String> {
    let mut a = s(&["register", class, "--init", "lite0"]);
    for (i, m) in pairs {
        a.extend(s(&["--image", i, "--mask", m]));
    }
    a.extend(s(extra));
    a
}

#[rustfmt::skip]
fn cases(inp: &Inputs) -> Vec<Case> {
    let img = asset("8_10_s.png");
    let gt = asset("8_10_s_GT.png");
    let mc = ["--mask-class", "12"];
    let p = |n: &str| inp.path(n);
    let case = |name, args, code, needles: &[&str]| Case { name, args, registry: Reg::Main, code, needles: s(needles) };
    let long = "a".repeat(65);
    vec![
        case("image missing", register("x", &[(&p("nope.png"), &gt)], &mc), 1, &["nope.png", "No such file"]),
        case("image empty", register("x", &[(&p("empty.png"), &gt)], &mc), 1, &["empty.png", "cannot decode"]),
        case("image truncated", register("x", &[(&p("truncated.png"), &gt)], &mc), 1, &["truncated.png", "cannot decode"]),
        case("JPEG cut in half", register("x", &[(&p("half.jpg"), &gt)], &mc), 1, &["half.jpg", "truncated JPEG"]),
        case("PNG cut in half", register("x", &[(&p("half.png"), &gt)], &mc), 1, &["half.png", "truncated PNG"]),
        case("name begins with _", register("_x", &[(&img, &gt)], &mc), 1, &["_x", "begin with a letter or a digit"]),
        case("text named .png", register("x", &[(&p("text.png"), &gt)], &mc), 1, &["text.png", "cannot decode"]),
        case("image header bomb", register("x", &[(&p("bomb.png"), &gt)], &mc), 1, &["bomb.png", "100000x100000", "limit"]),
        case("mask header bomb", register("x", &[(&img, &p("bomb.png"))], &[]), 1, &["bomb.png", "100000x100000", "limit"]),
        case("image over --max-pixels", register("x", &[(&img, &gt)], &["--mask-class", "12", "--max-pixels", "1000"]), 1, &["8_10_s.png", "exceeds the limit of 1000"]),
        case("a folder as image", register("x", &[(&p("folder.png"), &gt)], &mc), 1, &["folder.png", "directory"]),
        case("mask missing", register("x", &[(&img, &p("nomask.png"))], &mc), 1, &["nomask.png", "No such file"]),
        case("mask of another size", register("x", &[(&img, &p("small_mask.png"))], &[]), 1, &["small_mask.png", "100x100", "--resize-mask"]),
        case("mask empty", register("x", &[(&img, &p("empty_mask.png"))], &[]), 1, &["empty_mask.png", "0 foreground pixel"]),
        case("mask near-empty", register("x", &[(&img, &p("near_empty_mask.png"))], &[]), 1, &["near_empty_mask.png", "10 foreground pixel", "at least"]),
        case("photo as mask", register("x", &[(&img, &img)], &[]), 1, &["8_10_s.png", "not a binary mask"]),
        case("label map without --mask-class", register("x", &[(&img, &gt)], &[]), 1, &["8_10_s_GT.png", "not a binary mask"]),
        case("photo as class-index mask", register("x", &[(&img, &img)], &mc), 1, &["8_10_s.png", "colour"]),
        case("mask class 255", register("x", &[(&img, &gt)], &["--mask-class", "255"]), 1, &["8_10_s_GT.png", "ignore"]),
        case("class absent from the mask", register("x", &[(&img, &gt)], &["--mask-class", "3"]), 1, &["8_10_s_GT.png", "0 foreground pixel"]),
        case("name ../x", register("../x", &[(&img, &gt)], &mc), 1, &["\"../x\"", "'.' is not allowed"]),
        case("name a/b", register("a/b", &[(&img, &gt)], &mc), 1, &["\"a/b\"", "'/' is not allowed"]),
        case("name A", register("A", &[(&img, &gt)], &mc), 1, &["\"A\"", "'A' is not allowed"]),
        case("name empty", register("", &[(&img, &gt)], &mc), 1, &["\"\"", "empty"]),
        case("name 65 chars", register(&long, &[(&img, &gt)], &mc), 1, &[long.as_str(), "65 characters"]),
        case("name .", register(".", &[(&img, &gt)], &mc), 1, &["\".\"", "not allowed"]),
        case("name unicode", register("vélo", &[(&img, &gt)], &mc), 1, &["vélo", "'é' is not allowed"]),
        case("name with a space", register("a b", &[(&img, &gt)], &mc), 1, &["\"a b\"", "' ' is not allowed"]),
        case("name starting with -", register("-x", &[(&img, &gt)], &mc), 2, &["-x"]),
        case("more images than masks", [register("x", &[(&img, &gt)], &mc), s(&["--image", &img])].concat(), 1, &["2 --image but 1 --mask"]),
        case("no exemplar", register("x", &[], &mc), 1, &["`x`", "no exemplar"]),
        case("show unknown class", s(&["show", "cat"]), 1, &["unknown class `cat`", "bicycle"]),
        case("show ../x", s(&["show", "../x"]), 1, &["\"../x\"", "not allowed"]),
        case("remove unknown class", s(&["remove", "cat"]), 1, &["unknown class `cat`"]),
        case("remove unknown class's exemplar", s(&["remove", "cat", "--exemplar", "0"]), 1, &["unknown class `cat`"]),
        case("remove exemplar out of range", s(&["remove", "bicycle", "--exemplar", "2"]), 1, &["`bicycle` has 2 exemplar(s)", "no exemplar 2"]),
        case("remove exemplar -1", s(&["remove", "bicycle", "--exemplar", "-1"]), 2, &["-1"]),
        case("remove exemplar not a number", s(&["remove", "bicycle", "--exemplar", "two"]), 2, &["two", "invalid"]),
        Case { registry: Reg::Newer, ..case("register into a newer schema", register("dog", &[(&img, &gt)], &mc), 1, &["index.json", "schema version 99", "newer"]) },
        Case { registry: Reg::Newer, ..case("list a newer schema", s(&["list"]), 1, &["index.json", "schema version 99"]) },
        Case { registry: Reg::Newer, ..case("remove from a newer schema", s(&["remove", "bicycle"]), 1, &["index.json", "schema version 99"]) },
        Case { registry: Reg::File, ..case("registry is a file", s(&["list"]), 1, &["registry-file", "exists"]) },
    ]
}

#[test]
fn malformed_inputs_fail_clearly_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs_dir = tmp.path().join("inputs");
    std::fs::create_dir_all(&inputs_dir).unwrap();
    let inp = Inputs::create(&inputs_dir);

    // The registries, made through the library (a small model keeps this fast).
    let main = tmp.path().join("registry");
    let cfg = MceConfig {
        image_size: 128,
        ..MceConfig::edge_lite0()
    };
    let seg = Segmenter::untrained(&cfg, &lite0_weights_path(), &Device::Cpu).unwrap();
    let pair = |stem: &str| ExemplarInput {
        image: asset(&format!("{stem}.png")).into(),
        mask: asset(&format!("{stem}_GT.png")).into(),
    };
    let opts = RegisterOptions {
        mask_class: Some(12),
        ..RegisterOptions::default()
    };
    let mut r = Registry::open(&main).unwrap();
    r.register("bicycle", &[pair("8_10_s"), pair("8_11_s")], &seg, &opts)
        .unwrap();
    let newer = tmp.path().join("registry-newer");
    let mut r = Registry::open(&newer).unwrap();
    r.register("bicycle", &[pair("8_10_s")], &seg, &opts)
        .unwrap();
    let index = newer.join("index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(
        &index,
        text.replace("\"schema_version\": 1", "\"schema_version\": 99"),
    )
    .unwrap();
    let file = tmp.path().join("registry-file");
    std::fs::write(&file, b"not a folder").unwrap();

    let cases = cases(&inp);
    assert!(cases.len() >= 20);
    for c in cases {
        let dir = match c.registry {
            Reg::Main => &main,
            Reg::Newer => &newer,
            Reg::File => &file,
        };
        let before = snapshot(dir);
        let o = Command::new(env!("CARGO_BIN_EXE_mce-device"))
            .args(&c.args)
            .arg("--registry")
            .arg(dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        let name = c.name;
        assert_eq!(o.status.code(), Some(c.code), "{name}: exit code\n{stderr}");
        assert!(!stderr.contains("panicked"), "{name}: panicked\n{stderr}");
        for n in &c.needles {
            assert!(
                stderr.contains(n.as_str()),
                "{name}: stderr lacks {n:?}\n{stderr}"
            );
        }
        assert!(
            o.stdout.is_empty() || c.code != 1,
            "{name}: printed a result"
        );
        assert!(snapshot(dir) == before, "{name}: the registry changed");
    }
}
