#!/usr/bin/env python3
"""mce against an independent PyTorch implementation of the same model, side by side (issue 13).

One command (Python 3 standard library; the two sides run as subprocesses):

    cargo build --release -p mce-core --examples
    pip install -r bench/pytorch/requirements.txt
    python3 bench/side_by_side.py --passes 3 --runs 5 --out bench/side_by_side.json

What it does:

1. `parity_dump` (core/examples/parity_dump.rs) writes, into `--work-dir`, a seeded paper-head
   checkpoint of the edge preset on the bundled Lite0 weights and reference tensors of mce-core
   (inputs, backbone levels, head intermediates, logits); skipped when both files are already there
   (`--regen` forces it).
2. The parity check: `bench/pytorch/mce_torch.py parity` loads the same checkpoint and compares
   every reference tensor; the benchmark stops when the logits differ by more than `--parity-tol`
   (relative to their largest magnitude), since timing two different models says nothing.
3. For each case, `--passes` passes; in each pass one fresh process per side times `--runs` runs
   after `--warmup` untimed ones (mce: `bench_frame`, PyTorch: `mce_torch.py bench`). The two sides
   alternate which goes first from pass to pass. Both are held to `--threads` threads (PyTorch:
   `torch.set_num_threads`; mce: RAYON_NUM_THREADS / CANDLE_NUM_THREADS; OMP / MKL too).
   Frame cases also report per-stage medians (`--stages`) in the first pass.
4. Writes JSON (`--out`): per case the medians of both sides over all timed runs, the per-pass
   medians, the ratio mce / PyTorch, the stage times, and the targets of issue 13 with whether each
   is met; plus the machine's load (`/proc/loadavg` before and after) and the thread setting. The
   file is rewritten after every case, so an interrupted run keeps what it measured.

Ratios measured in one run are what count: the machine may be loaded by other work.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH_SCRIPT = ROOT / "bench" / "pytorch" / "mce_torch.py"
ALL_CASES = [
    "backbone", "head_k1", "frame_k1", "frame_k5", "frame_paper_k1",
    "classes_1", "classes_3", "train_step_b8", "eval_k1", "eval_k5",
]
STAGE_CASES = {"frame_k1", "frame_k5", "frame_paper_k1"}
HEAVY_CASES = {"frame_paper_k1", "train_step_b8"}
CKPT = "edge_paper.safetensors"
REF = "edge_paper_ref.safetensors"


class Missing(SystemExit):
    """A missing prerequisite: exits 1 with a message that names it and how to get it."""

    def __init__(self, what, how):
        super().__init__(f"side_by_side: missing {what}\n  -> {how}")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def loadavg():
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def target_dir(args):
    if args.target_dir:
        return Path(args.target_dir).resolve()
    env = os.environ.get("CARGO_TARGET_DIR")
    return Path(env).resolve() if env else ROOT / "target"


def example(args, name):
    path = target_dir(args) / "release" / "examples" / name
    if not path.is_file():
        raise Missing(
            f"the mce example {name} ({path})",
            "build it: cargo build --release -p mce-core --examples",
        )
    return path


def check_torch(python):
    if shutil.which(python) is None and not Path(python).is_file():
        raise Missing(f"the Python interpreter {python!r}", "pass --python /path/to/python3")
    probe = ("import torch, safetensors, numpy; "
             "print(torch.__version__, torch.backends.mkldnn.is_available(), "
             "torch.backends.cpu.get_cpu_capability())")
    r = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise Missing(
            f"PyTorch for {python} ({last})",
            "pip install -r bench/pytorch/requirements.txt  (PyPI's Linux torch wheel also "
            "pulls ~3 GB of nvidia-* CUDA libraries, which it loads even on a CPU-only machine; "
            "a CPU-only wheel from download.pytorch.org/whl/cpu avoids them where reachable)",
        )
    version, mkldnn, capability = r.stdout.split()
    return {"version": version, "mkldnn": mkldnn == "True", "cpu_capability": capability}


def thread_env(threads):
    env = dict(os.environ)
    for k in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"]:
        env[k] = str(threads)
    return env


def run_json(cmd, env, timeout):
    """Run `cmd`; its last stdout line is one JSON object."""
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stderr[-3000:]}")
    lines = [l for l in r.stdout.splitlines() if l.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(map(str, cmd))} printed no JSON:\n{r.stdout[-2000:]}")
    out = json.loads(lines[-1])
    out["wall_s"] = time.perf_counter() - t
    return out


def ensure_reference(args, work):
    ckpt, ref = work / CKPT, work / REF
    if ckpt.is_file() and ref.is_file() and not args.regen:
        log(f"reference files present in {work}")
        return ckpt, ref
    dump = example(args, "parity_dump")
    log(f"parity_dump {work}")
    r = subprocess.run([str(dump), str(work)], capture_output=True, text=True, cwd=ROOT,
                       env=thread_env(args.threads))
    if r.returncode != 0:
        raise SystemExit(f"side_by_side: parity_dump failed:\n{r.stderr[-3000:]}")
    for p in (ckpt, ref):
        if not p.is_file():
            raise SystemExit(f"side_by_side: parity_dump did not write {p}")
    return ckpt, ref


def run_parity(args, ckpt, ref, work):
    out = work / "parity.json"
    cmd = [args.python, str(TORCH_SCRIPT), "parity", "--checkpoint", str(ckpt), "--ref", str(ref),
           "--out", str(out)]
    log("parity check")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=thread_env(args.threads))
    if r.returncode != 0:
        raise SystemExit(f"side_by_side: the parity check failed to run:\n{r.stderr[-3000:]}")
    res = json.loads(out.read_text())
    tensors = res["tensors"]
    errors = [t for t in tensors if "error" in t]
    rel = {t["name"]: t["rel_to_max"] for t in tensors if "rel_to_max" in t}
    worst = max(rel.items(), key=lambda kv: kv[1]) if rel else (None, float("inf"))
    logits = {t["name"].split(".")[0]: {
        "rel_to_max": t["rel_to_max"], "max_abs": t["max_abs"], "argmax_agree": t["argmax_agree"],
    } for t in tensors if t["name"].endswith(".logits") and "rel_to_max" in t}
    ok = (not errors and bool(logits)
          and all(v["rel_to_max"] <= args.parity_tol for v in logits.values()))
    summary = {
        "ok": ok,
        "tolerance_rel": args.parity_tol,
        "tensors_compared": len(tensors),
        "errors": [f"{t['name']}: {t['error']}" for t in errors],
        "logits": logits,
        "worst": {"name": worst[0], "rel_to_max": worst[1]},
        "detail": str(out),
    }
    for case, v in logits.items():
        log(f"  {case:5s} logits rel {v['rel_to_max']:.2e}  max_abs {v['max_abs']:.2e}"
            f"  argmax agree {v['argmax_agree']}")
    log(f"  worst tensor {worst[0]} rel {worst[1]:.2e} -> {'ok' if ok else 'FAILED'}")
    return summary


def case_runs(args, case):
    return args.heavy_runs if case in HEAVY_CASES and args.heavy_runs else args.runs


def side_cmd(args, side, case, ckpt, ref, stages, bench_frame):
    common = ["--case", case, "--runs", str(case_runs(args, case)), "--warmup", str(args.warmup),
              "--checkpoint", str(ckpt), "--inputs", str(ref)]
    if stages:
        common.append("--stages")
    if side == "mce":
        return [str(bench_frame)] + common
    return [args.python, str(TORCH_SCRIPT), "bench", "--threads", str(args.threads)] + common


def med(xs):
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return a / b if a is not None and b else None


def targets(cases):
    """Issue 13's targets on what was measured (None where a case needed was not run)."""
    def r(case):
        return cases.get(case, {}).get("ratio")

    def t(case, side):
        return cases.get(case, {}).get(side, {}).get("median_ms")

    out = []
    for case, limit, what in [("frame_k1", 0.8, "edge K=1 frame"),
                              ("frame_k5", 0.8, "edge K=5 frame"),
                              ("frame_paper_k1", 1.0, "paper K=1 frame"),
                              ("train_step_b8", 1.0, "training step (batch 8)")]:
        v = r(case)
        out.append({"target": f"{what}: mce / PyTorch <= {limit}", "case": case,
                    "value": v, "limit": limit, "met": None if v is None else v <= limit})
    for case in ["eval_k1", "eval_k5"]:
        m, p = t(case, "mce"), t(case, "pytorch")
        out.append({
            "target": f"eval throughput ({case}): mce episodes/s >= PyTorch's", "case": case,
            "mce_episodes_per_s": 1e3 / m if m else None,
            "pytorch_episodes_per_s": 1e3 / p if p else None,
            "met": None if not (m and p) else 1e3 / m >= 1e3 / p,
        })
    one, three = t("classes_1", "mce"), t("classes_3", "mce")
    limit = 1 + 0.3 * (3 - 1)
    v = ratio(three, one)
    out.append({
        "target": "3 classes on one frame cost < 1 + 0.3 (N - 1) = 1.6 single-class frames (mce)",
        "case": "classes_3 / classes_1", "value": v, "limit": limit,
        "met": None if v is None else v < limit,
        "pytorch_value": ratio(t("classes_3", "pytorch"), t("classes_1", "pytorch")),
    })
    return out


def write(path, doc):
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=5, help="fresh-process passes per case and side")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per process")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per process first")
    ap.add_argument("--heavy-runs", type=int, help="timed runs per process of the slow cases "
                    f"{', '.join(sorted(HEAVY_CASES))} (seconds each on a small CPU; default: --runs)")
    ap.add_argument("--cases", default=",".join(ALL_CASES),
                    help=f"comma-separated, of: {', '.join(ALL_CASES)}")
    ap.add_argument("--out", default=str(ROOT / "bench" / "side_by_side.json"))
    ap.add_argument("--work-dir", help="reference checkpoint and tensors "
                    "(default: <target>/side_by_side)")
    ap.add_argument("--target-dir", help="cargo target dir (default: $CARGO_TARGET_DIR or target)")
    ap.add_argument("--python", default=sys.executable, help="the Python that has torch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parity-tol", type=float, default=1e-4,
                    help="largest logits difference / largest |logit| accepted")
    ap.add_argument("--regen", action="store_true", help="run parity_dump even if its files exist")
    ap.add_argument("--no-parity", action="store_true", help="skip the parity check")
    ap.add_argument("--no-stages", action="store_true", help="no per-stage times")
    ap.add_argument("--no-memory", action="store_true",
                    help="skip the paper-preset K=5 peak-RSS measurement (mce only)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    args = ap.parse_args()

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in ALL_CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {ALL_CASES}")
    if args.passes < 1 or args.runs < 1:
        ap.error("--passes and --runs must be >= 1")

    # Everything that can be missing, before anything is timed.
    torch_info = check_torch(args.python)
    bench_frame = example(args, "bench_frame")
    if not TORCH_SCRIPT.is_file():
        raise Missing(f"the PyTorch side {TORCH_SCRIPT}", "restore bench/pytorch/mce_torch.py")
    work = Path(args.work_dir).resolve() if args.work_dir else target_dir(args) / "side_by_side"
    work.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out).resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)

    started = time.time()
    doc = {
        "what": "mce (candle, bench_frame) vs an independent PyTorch implementation "
                "(bench/pytorch/mce_torch.py), interleaved in fresh processes (issue 13)",
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": {
            "cpu": cpu_model(), "logical_cpus": os.cpu_count(),
            "loadavg_before": loadavg(), "loadavg_after": None,
        },
        "settings": {
            "threads": args.threads, "passes": args.passes, "runs": args.runs,
            "warmup": args.warmup, "heavy_runs": case_runs(args, "frame_paper_k1"), "order": "mce first on even passes, PyTorch first on odd",
        },
        "pytorch": torch_info,
        "note": "ratio = mce median / PyTorch median (lower is better for mce); medians over all "
                "timed runs of all passes; ratio_min = ratio of the two sides' fastest runs. "
                "Times are wall-clock per sample in ms. The machine may "
                "be loaded by other work (see loadavg): compare ratios within this run.",
    }
    ckpt, ref = ensure_reference(args, work)
    doc["reference"] = {"checkpoint": str(ckpt), "inputs": str(ref)}
    if args.no_parity:
        doc["parity"] = {"ok": None, "skipped": True}
    else:
        doc["parity"] = run_parity(args, ckpt, ref, work)
        if not doc["parity"]["ok"]:
            write(out_path, doc)
            raise SystemExit(f"side_by_side: parity FAILED (see {work / 'parity.json'}); "
                             "not timing two different models")

    env = thread_env(args.threads)
    results = {}
    doc["cases"] = results
    for case in cases:
        per = {"mce": [], "pytorch": []}
        stages = {}
        for p in range(args.passes):
            order = ["mce", "pytorch"] if p % 2 == 0 else ["pytorch", "mce"]
            want_stages = p == 0 and case in STAGE_CASES and not args.no_stages
            for side in order:
                cmd = side_cmd(args, side, case, ckpt, ref, want_stages, bench_frame)
                res = run_json(cmd, env, args.timeout)
                per[side].append(res)
                if want_stages and res.get("stages_ms"):
                    stages[side] = res["stages_ms"]
                log(f"{case:15s} pass {p + 1}/{args.passes} {side:7s} median "
                    f"{res['median_ms']:9.2f} ms  (threads {res.get('threads')}, "
                    f"process {res['wall_s']:.1f} s)")
        entry = {}
        for side, rs in per.items():
            samples = [s for r in rs for s in r["samples_ms"]]
            entry[side] = {
                "median_ms": med(samples),
                "min_ms": min(samples),
                "pass_medians_ms": [r["median_ms"] for r in rs],
                "threads": rs[0].get("threads"),
                "peak_rss_mib": max((r.get("peak_rss_mib") or 0 for r in rs), default=None) or None,
            }
        entry["ratio"] = ratio(entry["mce"]["median_ms"], entry["pytorch"]["median_ms"])
        # The least-disturbed runs of each side: steadier than the medians on a loaded machine.
        entry["ratio_min"] = ratio(entry["mce"]["min_ms"], entry["pytorch"]["min_ms"])
        entry["ratio_per_pass"] = [
            ratio(m["median_ms"], t["median_ms"]) for m, t in zip(per["mce"], per["pytorch"])]
        if stages:
            entry["stages_ms"] = stages
            common = sorted(set(stages.get("mce", {})) & set(stages.get("pytorch", {})))
            entry["stage_ratios"] = {k: ratio(stages["mce"][k], stages["pytorch"][k])
                                     for k in common}
        results[case] = entry
        log(f"{case:15s} mce {entry['mce']['median_ms']:9.2f} ms  pytorch "
            f"{entry['pytorch']['median_ms']:9.2f} ms  ratio {entry['ratio']:.2f}")
        doc["targets"] = targets(results)
        doc["machine"]["loadavg_after"] = loadavg()
        doc["elapsed_s"] = time.time() - started
        write(out_path, doc)

    if not args.no_memory:
        # Memory (issue 13 item 4): peak RSS of one paper-preset K=5 evaluation episode (mce).
        res = run_json([str(bench_frame), "--case", "eval_paper_k5", "--runs", "1",
                        "--warmup", "0"], env, args.timeout)
        rss = res.get("peak_rss_mib")
        doc["memory"] = {
            "case": "eval_paper_k5: paper preset (473x473, ResNet-50), one K=5 episode, mce",
            "peak_rss_mib": rss,
            "episode_ms": res["median_ms"],
            "target": "peak RSS <= 2 GB (2e9 bytes)",
            "met": None if rss is None else rss * 2**20 <= 2e9,
        }
        log(f"memory: paper K=5 episode peak RSS {rss:.0f} MiB")
        write(out_path, doc)

    log(f"\n{'case':15s} {'mce ms':>10s} {'torch ms':>10s} {'ratio':>7s} {'of mins':>8s}")
    for case, e in results.items():
        log(f"{case:15s} {e['mce']['median_ms']:10.2f} {e['pytorch']['median_ms']:10.2f} "
            f"{e['ratio']:7.2f} {e['ratio_min']:8.2f}")
    for t in doc.get("targets", []):
        met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        log(f"  {t['target']}: {met}")
    log(f"wrote {out_path}")


if __name__ == "__main__":
    try:
        main()
    except subprocess.TimeoutExpired as e:
        raise SystemExit(f"side_by_side: timed out: {e}")
    except RuntimeError as e:
        raise SystemExit(f"side_by_side: {e}")
