//! Crash safety of the registry, with the real binary (corruption: `registry_quarantine.rs`).
//!
//! `killed_at_random_moments_*` runs `register` and `remove` against one registry and SIGKILLs them
//! at seeded random moments: half of the kills at a uniform time over the whole run (start-up, model
//! load, features, writes), half at a uniform time after the first write step is announced (the
//! hidden `MCE_REGISTRY_TEST_PAUSE_MS` hook sleeps between write steps and prints them). After every
//! kill the registry must open without quarantining anything, be exactly the old or the new state,
//! hold every committed exemplar whole (image, mask and a valid feature cache) and nothing else.

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use mce_core::inference::{lite0_weights_path, Segmenter};
use mce_core::{checkpoint, Mce, MceConfig};
use mce_device::registry::{Index, Registry};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PAUSE_MS: u64 = 15;
const ITERATIONS: usize = 44;

/// splitmix64: a seeded, reproducible sequence for choosing operations and delays.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/msrc")
        .join(name)
}

/// Classes the test registers: name, MSRC class id, images.
const CLASSES: [(&str, u8, [&str; 3]); 3] = [
    ("bicycle", 12, ["8_10_s", "8_11_s", "8_13_s"]),
    ("plane", 8, ["4_12_s", "4_14_s", "4_17_s"]),
    ("dog", 20, ["16_10_s", "16_12_s", "16_14_s"]),
];

/// A checkpoint of Lite0 at 128×128 (untrained head): the same code path as the real model, faster.
fn small_model(dir: &Path) -> PathBuf {
    let cfg = MceConfig {
        image_size: 128,
        ..MceConfig::edge_lite0()
    };
    let vm = VarMap::new();
    Mce::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let backbone = candle_core::safetensors::load(lite0_weights_path(), &Device::Cpu).unwrap();
    let path = dir.join("small.safetensors");
    checkpoint::save(&path, &cfg, &vm, &backbone, &BTreeMap::new()).unwrap();
    path
}

#[derive(Debug, Clone)]
enum Op {
    Register { class: usize, stems: Vec<usize> },
    RemoveExemplar { class: String, index: usize },
    RemoveClass { class: String },
}

/// class -> [(id, source image)]
type State = BTreeMap<String, Vec<(u64, String)>>;

fn state_of(index: &Index) -> State {
    index
        .classes
        .iter()
        .map(|(c, e)| {
            let v = e.exemplars.iter().map(|x| (x.id, x.source_image.clone()));
            (c.clone(), v.collect())
        })
        .collect()
}

fn args(op: &Op, registry: &Path, model: &Path) -> Vec<String> {
    let reg = ["--registry".to_string(), registry.display().to_string()];
    let mut a: Vec<String> = match op {
        Op::Register { class, stems } => {
            let (name, id, files) = CLASSES[*class];
            let mut a = vec!["register".into(), name.into(), "--mask-class".into()];
            a.push(id.to_string());
            a.extend(["--model".into(), model.display().to_string()]);
            for &s in stems {
                a.push("--image".into());
                a.push(asset(&format!("{}.png", files[s])).display().to_string());
                a.push("--mask".into());
                a.push(asset(&format!("{}_GT.png", files[s])).display().to_string());
            }
            a
        }
        Op::RemoveExemplar { class, index } => {
            vec![
                "remove".into(),
                class.clone(),
                "--exemplar".into(),
                index.to_string(),
            ]
        }
        Op::RemoveClass { class } => vec!["remove".into(), class.clone()],
    };
    a.extend(reg);
    a
}

/// The state `op` leads to from `old` (ids of new exemplars start at `next_id`).
fn expected(op: &Op, old: &State, next_id: u64) -> State {
    let mut s = old.clone();
    match op {
        Op::Register { class, stems } => {
            let (name, _, files) = CLASSES[*class];
            let list = s.entry(name.to_string()).or_default();
            for (n, &st) in stems.iter().enumerate() {
                list.push((next_id + n as u64, format!("{}.png", files[st])));
            }
        }
        Op::RemoveExemplar { class, index } => {
            let list = s.get_mut(class).unwrap();
            list.remove(*index);
            if list.is_empty() {
                s.remove(class);
            }
        }
        Op::RemoveClass { class } => {
            s.remove(class);
        }
    }
    s
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    BeforeWrites,
    Writing,
    AfterCommit,
    Finished,
}

/// Run the binary; kill it `delay` after its start (`after_marker` false) or after its first write
/// step (true). Returns the phase it was in.
fn run_and_kill(cmd_args: &[String], delay: Duration, after_marker: bool) -> Phase {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mce-device"))
        .args(cmd_args)
        .env("MCE_REGISTRY_TEST_PAUSE_MS", PAUSE_MS.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let mut deadline = (!after_marker).then(|| start + delay);
    let mut lines = Vec::new();
    let mut killed = false;
    loop {
        let wait = deadline.map_or(Duration::from_millis(50), |d| {
            d.saturating_duration_since(Instant::now())
        });
        match rx.recv_timeout(wait) {
            Ok(line) => {
                if deadline.is_none() && line.starts_with("registry-step:") {
                    deadline = Some(Instant::now() + delay);
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) && !killed {
            killed = child.try_wait().unwrap().is_none();
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let text = lines.join("\n");
    assert!(!text.contains("panicked"), "{text}");
    if !killed {
        assert!(status.success(), "{cmd_args:?} failed:\n{text}");
        return Phase::Finished;
    }
    match lines.iter().rev().find(|l| l.starts_with("registry-step:")) {
        None => Phase::BeforeWrites,
        Some(l) if l.contains("committed index") || l.contains("delete") => Phase::AfterCommit,
        Some(_) => Phase::Writing,
    }
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

/// Open after a kill and check everything; returns the state found.
fn verify(dir: &Path, seg: &Segmenter, old: &State, new: &State, what: &str) -> State {
    let r = Registry::open(dir).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    assert!(r.quarantined().is_empty(), "{what}: {:?}", r.quarantined());
    let s = state_of(r.index());
    assert!(
        &s == old || &s == new,
        "{what}: half state\nfound {s:?}\nold {old:?}\nnew {new:?}"
    );
    let identity = seg.backbone_identity();
    let mut want = BTreeSet::new();
    for (class, list) in &s {
        let (_, stats) = r.exemplars_with_stats(class, seg).unwrap();
        assert_eq!(
            (stats.cached, stats.recomputed),
            (list.len(), 0),
            "{what}: features of `{class}` not all cached and valid"
        );
        for (id, _) in list {
            want.insert(format!("exemplars/{class}/{id:06}.png"));
            want.insert(format!("exemplars/{class}/{id:06}.mask.png"));
            want.insert(format!("features/{identity}/{class}/{id:06}.safetensors"));
        }
    }
    assert_eq!(files(dir), want, "{what}: stray or missing files");
    s
}

#[test]
fn killed_at_random_moments_the_registry_is_old_or_new() {
    let tmp = tempfile::tempdir().unwrap();
    let model = small_model(tmp.path());
    let seg = Segmenter::from_checkpoint(&model, &Device::Cpu).unwrap();
    let dir = tmp.path().join("registry");
    let mut rng = Rng(0x5eed_2024);

    // One complete run first: the registry is not empty, and it times a register run.
    let first = Op::Register {
        class: 0,
        stems: vec![0, 1],
    };
    let t0 = Instant::now();
    let phase = run_and_kill(&args(&first, &dir, &model), Duration::from_secs(600), false);
    assert_eq!(phase, Phase::Finished);
    let register_time = t0.elapsed();
    let mut state = verify(
        &dir,
        &seg,
        &State::new(),
        &expected(&first, &State::new(), 1),
        "setup",
    );

    let mut phases: BTreeMap<(&str, Phase), usize> = BTreeMap::new();
    for it in 0..ITERATIONS {
        let total: usize = state.values().map(Vec::len).sum();
        let choice = if state.is_empty() { 0 } else { rng.below(10) };
        let op = if choice < 6 && total < 8 {
            let n = 1 + rng.below(2);
            Op::Register {
                class: rng.below(CLASSES.len()),
                stems: (0..n).map(|_| rng.below(3)).collect(),
            }
        } else {
            let classes: Vec<&String> = state.keys().collect();
            let class = classes[rng.below(classes.len())].clone();
            if choice == 9 {
                Op::RemoveClass { class }
            } else {
                let index = rng.below(state[&class].len());
                Op::RemoveExemplar { class, index }
            }
        };
        let kind = if matches!(op, Op::Register { .. }) {
            "register"
        } else {
            "remove"
        };
        let after_marker = rng.below(2) == 0;
        let delay = if after_marker {
            // The write steps take about 8 pauses; aim across them and a little beyond.
            Duration::from_secs_f64(rng.unit() * 10.0 * PAUSE_MS as f64 / 1e3)
        } else if kind == "register" {
            register_time.mul_f64(1.1 * rng.unit())
        } else {
            Duration::from_secs_f64(rng.unit() * 0.2)
        };
        let next_id = Registry::open(&dir).unwrap().index().next_id;
        let new = expected(&op, &state, next_id);
        let phase = run_and_kill(&args(&op, &dir, &model), delay, after_marker);
        *phases.entry((kind, phase)).or_default() += 1;
        let what = format!(
            "iteration {it}: {op:?} killed {delay:?} after {}, phase {phase:?}",
            if after_marker {
                "the first write step"
            } else {
                "start"
            }
        );
        state = verify(&dir, &seg, &state, &new, &what);
    }
    println!("kills per operation and phase: {phases:?}");
    let writing: usize = phases
        .iter()
        .filter(|((_, p), _)| *p == Phase::Writing)
        .map(|(_, n)| n)
        .sum();
    let before: usize = phases
        .iter()
        .filter(|((_, p), _)| *p == Phase::BeforeWrites)
        .map(|(_, n)| n)
        .sum();
    assert!(
        writing >= 10,
        "only {writing} kills inside the write phase: {phases:?}"
    );
    assert!(
        before >= 3,
        "only {before} kills before the writes: {phases:?}"
    );
}
