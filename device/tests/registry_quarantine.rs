//! Corruption found when a registry is opened: damaged or missing exemplar files and a corrupt
//! index are moved to `<dir>/quarantine/` and reported (API and CLI), never silently dropped, and the
//! registry keeps working.

use candle_core::Device;
use mce_core::inference::{lite0_weights_path, Segmenter};
use mce_core::MceConfig;
use mce_device::registry::{ExemplarInput, RegisterOptions, Registry};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/msrc")
        .join(name)
}

/// Every file under `dir` except the lock and the index, relative.
fn files(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out.remove(".lock");
    out.remove("index.json");
    out
}

fn register_small(dir: &Path, seg: &Segmenter, class: &str, mask_class: u8, stems: &[&str]) {
    let inputs: Vec<ExemplarInput> = stems
        .iter()
        .map(|s| ExemplarInput {
            image: asset(&format!("{s}.png")),
            mask: asset(&format!("{s}_GT.png")),
        })
        .collect();
    let opts = RegisterOptions {
        mask_class: Some(mask_class),
        ..RegisterOptions::default()
    };
    let mut r = Registry::open(dir).unwrap();
    r.register(class, &inputs, seg, &opts).unwrap();
}

fn small_segmenter() -> Segmenter {
    let cfg = MceConfig {
        image_size: 128,
        ..MceConfig::edge_lite0()
    };
    Segmenter::untrained(&cfg, &lite0_weights_path(), &Device::Cpu).unwrap()
}

#[test]
fn corrupt_and_missing_exemplar_files_are_quarantined_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let seg = small_segmenter();
    register_small(dir, &seg, "bicycle", 12, &["8_10_s", "8_11_s", "8_13_s"]);
    register_small(dir, &seg, "dog", 20, &["16_10_s"]);
    let r = Registry::open(dir).unwrap();
    let ids: Vec<u64> = r
        .class("bicycle")
        .unwrap()
        .exemplars
        .iter()
        .map(|e| e.id)
        .collect();
    let dog_id = r.class("dog").unwrap().exemplars[0].id;
    drop(r);

    // Flip bytes in one image, delete another's mask, truncate the dog's only mask.
    let img0 = dir.join(format!("exemplars/bicycle/{:06}.png", ids[0]));
    let original = std::fs::read(&img0).unwrap();
    let mut bytes = original.clone();
    bytes[1000] ^= 0xff;
    std::fs::write(&img0, &bytes).unwrap();
    std::fs::remove_file(dir.join(format!("exemplars/bicycle/{:06}.mask.png", ids[1]))).unwrap();
    let dog_mask = dir.join(format!("exemplars/dog/{dog_id:06}.mask.png"));
    let m = std::fs::read(&dog_mask).unwrap();
    std::fs::write(&dog_mask, &m[..m.len() / 2]).unwrap();

    let r = Registry::open(dir).unwrap();
    let q = r.quarantined();
    assert_eq!(q.len(), 3, "{q:?}");
    let find = |id: u64| q.iter().find(|x| x.exemplar_id == Some(id)).unwrap();
    let q0 = find(ids[0]);
    assert_eq!(q0.class.as_deref(), Some("bicycle"));
    assert!(
        q0.reason.contains("checksum mismatch")
            && q0.reason.contains(&format!("{:06}.png", ids[0])),
        "{}",
        q0.reason
    );
    // Moved, not dropped: the damaged bytes, the entry and the reason are kept.
    assert_eq!(
        std::fs::read(q0.moved_to.join(format!("{:06}.png", ids[0]))).unwrap(),
        bytes
    );
    assert!(q0.moved_to.join("entry.json").is_file() && q0.moved_to.join("reason.txt").is_file());
    assert!(q0.moved_to.starts_with(dir.join("quarantine")));
    let q1 = find(ids[1]);
    assert!(q1.reason.contains("missing"), "{}", q1.reason);
    assert!(q1.moved_to.join(format!("{:06}.png", ids[1])).is_file());
    let qd = find(dog_id);
    assert!(
        qd.reason.contains("bytes") && qd.reason.contains("no exemplar left"),
        "{}",
        qd.reason
    );

    // What survived is intact and the damage is not reported twice.
    let names: Vec<_> = r
        .classes()
        .into_iter()
        .map(|c| (c.name, c.exemplars))
        .collect();
    assert_eq!(names, [("bicycle".to_string(), 1)]);
    assert_eq!(r.class("bicycle").unwrap().exemplars[0].id, ids[2]);
    assert_eq!(r.exemplars("bicycle", &seg).unwrap().len(), 1);
    let again = Registry::open(dir).unwrap();
    assert!(again.quarantined().is_empty());
    assert_eq!(again.classes(), r.classes());

    // The CLI says so too.
    let mut bytes =
        std::fs::read(dir.join(format!("exemplars/bicycle/{:06}.png", ids[2]))).unwrap();
    bytes[500] ^= 1;
    std::fs::write(
        dir.join(format!("exemplars/bicycle/{:06}.png", ids[2])),
        &bytes,
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mce-device"))
        .args(["list", "--registry", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("quarantined") && stderr.contains("bicycle"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 class(es)"));
}

#[test]
fn a_corrupt_index_is_quarantined_with_its_data_and_reported() {
    let seg = small_segmenter();
    let cases: [(&str, &[u8], &str); 4] = [
        ("garbage", b"{ this is not json", "not valid JSON"),
        ("truncated", b"{\"schema_version\": 1, \"next_id\": 3, \"classes\": {\"bi", "not valid JSON"),
        ("no version", b"{\"classes\": {}}", "schema_version"),
        (
            "path in a class name",
            b"{\"schema_version\": 1, \"next_id\": 3, \"classes\": {\"../x\": {\"created_unix\": 0, \"exemplars\": []}}}",
            "invalid class name",
        ),
    ];
    for (what, content, reason) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        register_small(dir, &seg, "bicycle", 12, &["8_10_s"]);
        let data_files = files(dir);
        std::fs::write(dir.join("index.json"), content).unwrap();

        let r = Registry::open(dir).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(r.classes().is_empty(), "{what}");
        let q = r.quarantined();
        assert_eq!(q.len(), 1, "{what}: {q:?}");
        assert_eq!((q[0].class.as_ref(), q[0].exemplar_id), (None, None));
        assert!(
            q[0].reason.contains("index.json") && q[0].reason.contains(reason),
            "{what}: {}",
            q[0].reason
        );
        // Nothing deleted: the bad index and all the data it described are in the quarantine folder.
        assert_eq!(
            std::fs::read(q[0].moved_to.join("index.json")).unwrap(),
            content
        );
        for f in &data_files {
            assert!(q[0].moved_to.join(f).is_file(), "{what}: {f} not kept");
        }
        // The registry works again and the next open reports nothing new.
        drop(r);
        register_small(dir, &seg, "dog", 20, &["16_10_s"]);
        let r = Registry::open(dir).unwrap();
        assert!(r.quarantined().is_empty(), "{what}");
        assert_eq!(r.classes().len(), 1);
    }
}

/// A registry this process may not write is read without repairs: bad exemplars are left out (in
/// memory) and left in place, nothing is written, and changes fail with a clear error. (Tests run
/// as root, which may write anywhere, so the read-only open is called directly; `Registry::open`
/// falls back to it when `.lock` cannot be opened for writing, EACCES or EROFS.)
#[test]
fn a_read_only_open_reads_and_repairs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let seg = small_segmenter();
    register_small(dir, &seg, "bicycle", 12, &["8_10_s", "8_11_s"]);
    register_small(dir, &seg, "dog", 20, &["16_10_s"]);
    let r = Registry::open(dir).unwrap();
    let bad = r.class("bicycle").unwrap().exemplars[0].id;
    drop(r);
    let img = dir.join(format!("exemplars/bicycle/{bad:06}.png"));
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&img, &bytes).unwrap();
    std::fs::remove_file(dir.join(".lock")).unwrap();
    let before = files(dir);

    let mut r = Registry::open_read_only(dir).unwrap();
    assert!(r.is_read_only() && r.quarantined().is_empty());
    let counts: Vec<_> = r
        .classes()
        .iter()
        .map(|c| (c.name.clone(), c.exemplars))
        .collect();
    assert_eq!(counts, [("bicycle".to_string(), 1), ("dog".to_string(), 1)]);
    assert_eq!(r.exemplars("dog", &seg).unwrap().len(), 1);
    let e = r.remove_class("dog").unwrap_err().to_string();
    assert!(e.contains("read-only") && e.contains(".lock"), "{e}");
    assert_eq!(files(dir), before, "a read-only open changed files");

    // The read-write open repairs as before.
    let r = Registry::open(dir).unwrap();
    assert!(!r.is_read_only());
    assert_eq!(r.quarantined().len(), 1);
}
