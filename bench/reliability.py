#!/usr/bin/env python3
"""Kill / flood / vanish / huge-frame / soak checks against the release `mce-device serve`.

Anyone can rerun it (Python 3 standard library only, no GPU, no camera):

    cargo build --release -p mce-device
    python3 bench/reliability.py --out bench/reliability.json            # ~3 minutes
    python3 bench/reliability.py --soak-s 3600 --out bench/soak.json     # plus a 1-hour soak

It registers one bundled class, serves a folder of bundled frames at `--fps`, and then, on the
running service:

* flood: opens `--flood` idle TCP connections and 300 slow-header ones; the service must keep
  answering /healthz, keep processing frames, count no corrupt frame, and close what is idle;
* vanish: moves every frame out of the folder for 6 s and back; the source must come back to
  `streaming` with no corrupt frame counted;
* huge: drops an 8000x8000 PNG into the folder; it must be refused (counted corrupt) with RSS
  staying bounded, and SIGTERM must still stop the service quickly;
* kill: SIGKILLs the service mid-stream and starts it again on the same registry;
* soak (`--soak-s`): samples RSS every 10 s while serving; reports first / last / max.

Every figure goes into the JSON written to `--out`; a failed check exits 1.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "mce-device")
ASSETS = os.path.join(ROOT, "assets", "msrc")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def get(addr, path, timeout=10):
    req = urllib.request.Request(f"http://{addr}{path}", headers={"Host": addr})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def health(addr):
    status, body = get(addr, "/healthz")
    return status, json.loads(body)


def try_health(addr):
    """(status, body), or (0, None) when the connection is closed unanswered (at the cap)."""
    try:
        return health(addr)
    except (OSError, http.client.HTTPException):
        return 0, None


def png(path, width, height):
    """A grey PNG of any size, written row by row (no imaging library needed)."""
    row = b"\x00" + b"\x80" * (3 * width)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind, payload):
        c = kind + payload
        return struct.pack(">I", len(payload)) + c + struct.pack(">I", zlib.crc32(c))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


class Service:
    def __init__(self, registry, frames, fps, log_path):
        self.log = open(log_path, "ab")
        source = f"file://{frames}?loop=true&fps={fps}"
        self.proc = subprocess.Popen(
            [BIN, "serve", "--registry", registry, "--source", source, "--http", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=self.log,
            env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"},
        )
        self.addr = None
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stdout.readline().decode()
            if line.startswith("listening on http://"):
                self.addr = line.split("http://")[1].strip()
                break
            if self.proc.poll() is not None:
                break
        if self.addr is None:
            raise RuntimeError(f"the service did not start; see {log_path}")

    def wait_health(self, pred, timeout):
        deadline = time.time() + timeout
        while True:
            _, h = try_health(self.addr)
            if h is not None and pred(h):
                return h
            if time.time() > deadline:
                raise RuntimeError(f"health never matched; last {h}")
            time.sleep(0.2)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        t0 = time.time()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        return code, time.time() - t0


def check(results, name, ok, **figures):
    results["checks"].append({"check": name, "ok": bool(ok), **figures})
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {json.dumps(figures)}", flush=True)


def flood(svc, results, n_idle):
    pid = svc.proc.pid
    _, before = health(svc.addr)
    host, port = svc.addr.rsplit(":", 1)
    idle = []
    for _ in range(n_idle):
        try:
            idle.append(socket.create_connection((host, int(port))))
        except OSError:
            break
    slow = []
    for _ in range(300):
        try:
            s = socket.create_connection((host, int(port)))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHo")
            slow.append(s)
        except OSError:
            break
    fds_peak = open_fds(pid)
    time.sleep(2)
    status_during, _ = try_health(svc.addr)
    # Idle connections are closed after the header timeout (10 s by default).
    time.sleep(12)
    closed = 0
    for s in idle + slow:
        s.settimeout(0.01)
        try:
            if s.recv(1) == b"":
                closed += 1
        except (socket.timeout, BlockingIOError):
            pass
        except OSError:
            closed += 1
        s.close()
    h = svc.wait_health(lambda v: v["frames"]["processed"] > before["frames"]["processed"] + 5, 60)
    check(
        results,
        "flood",
        h["frames"]["corrupt"] == before["frames"]["corrupt"]
        and h["source"]["state"] == "streaming"
        and closed >= 0.95 * (len(idle) + len(slow)),
        idle_opened=len(idle),
        slow_opened=len(slow),
        closed_after_timeout=closed,
        fds_peak=fds_peak,
        healthz_during=status_during or "closed at the connection cap",
        processed_before=before["frames"]["processed"],
        corrupt_added=h["frames"]["corrupt"] - before["frames"]["corrupt"],
        processed_after=h["frames"]["processed"],
    )


def vanish(svc, results, frames, away):
    _, before = health(svc.addr)
    os.rename(frames, away)
    t0 = time.time()
    seen = svc.wait_health(lambda v: v["source"]["state"] == "reconnecting", 10)
    time.sleep(max(0.0, 6 - (time.time() - t0)))
    os.rename(away, frames)
    t_back = time.time()
    h = svc.wait_health(
        lambda v: v["source"]["state"] == "streaming" and v["frames"]["in"] > seen["frames"]["in"], 60
    )
    check(
        results,
        "vanish",
        h["frames"]["corrupt"] == before["frames"]["corrupt"] and h["status"] == "ok",
        away_s=round(t_back - t0, 1),
        recovered_after_s=round(time.time() - t_back, 1),
        state_while_away=seen["source"]["state"],
        status_while_away=seen["status"],
        corrupt_added=h["frames"]["corrupt"] - before["frames"]["corrupt"],
    )


def huge(svc, results, frames, tmp):
    pid = svc.proc.pid
    _, before = health(svc.addr)
    rss0 = rss_kib(pid)
    big = os.path.join(tmp, "huge.png")
    png(big, 8000, 8000)
    shutil.copy(big, os.path.join(frames, "zz_huge.png"))
    rss_max = rss0
    h = before
    deadline = time.time() + 60
    while h["frames"]["corrupt"] == before["frames"]["corrupt"] and time.time() < deadline:
        rss_max = max(rss_max, rss_kib(pid))
        time.sleep(0.1)
        _, h = health(svc.addr)
    for _ in range(20):
        rss_max = max(rss_max, rss_kib(pid))
        time.sleep(0.1)
    os.remove(os.path.join(frames, "zz_huge.png"))
    check(
        results,
        "huge frame",
        h["frames"]["corrupt"] > before["frames"]["corrupt"] and rss_max - rss0 < 256 * 1024,
        png_bytes=os.path.getsize(big),
        rss_before_mib=round(rss0 / 1024, 1),
        rss_max_mib=round(rss_max / 1024, 1),
        refused=h["frames"]["corrupt"] > before["frames"]["corrupt"],
    )


def soak(svc, results, seconds):
    pid = svc.proc.pid
    samples = []
    t0 = time.time()
    while time.time() - t0 < seconds:
        samples.append((round(time.time() - t0), rss_kib(pid)))
        time.sleep(10)
    status, h = health(svc.addr)
    warm = samples[min(len(samples) - 1, 6)][1]  # after a minute
    last = samples[-1][1]
    check(
        results,
        "soak",
        status == 200 and last - warm < 32 * 1024,
        seconds=seconds,
        rss_warm_mib=round(warm / 1024, 1),
        rss_last_mib=round(last / 1024, 1),
        rss_max_mib=round(max(r for _, r in samples) / 1024, 1),
        frames_processed=h["frames"]["processed"],
        inference_errors=h["frames"]["inference_errors"],
    )
    results["soak_rss_kib"] = samples


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/reliability.json")
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--flood", type=int, default=1100)
    ap.add_argument("--soak-s", type=int, default=0, help="seconds of soak (0: none)")
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: run `cargo build --release -p mce-device` first")
    tmp = tempfile.mkdtemp(prefix="mce-reliability-")
    registry, frames, away = (os.path.join(tmp, d) for d in ("registry", "frames", "away"))
    os.makedirs(frames)
    for name in ("8_13_s.png", "16_10_s.png"):
        shutil.copy(os.path.join(ASSETS, name), frames)
    reg = subprocess.run(
        [BIN, "register", "bicycle", "--registry", registry,
         "--image", os.path.join(ASSETS, "8_10_s.png"), "--mask", os.path.join(ASSETS, "8_10_s_GT.png"),
         "--mask-class", "12"],
        capture_output=True, text=True,
    )
    if reg.returncode != 0:
        sys.exit(f"register failed: {reg.stderr}")
    log = os.path.join(tmp, "serve.log")
    results = {"fps": args.fps, "checks": [], "log": log}

    svc = Service(registry, frames, args.fps, log)
    svc.wait_health(lambda v: v["frames"]["processed"] >= 1, 120)
    flood(svc, results, args.flood)
    vanish(svc, results, frames, away)
    huge(svc, results, frames, tmp)
    code, took = svc.stop()
    check(results, "SIGTERM after the huge frame", code == 0 and took < 10, exit=code, seconds=round(took, 2))

    svc = Service(registry, frames, args.fps, log)
    svc.wait_health(lambda v: v["frames"]["processed"] >= 1, 120)
    code, _ = svc.stop(signal.SIGKILL)
    svc = Service(registry, frames, args.fps, log)
    h = svc.wait_health(lambda v: v["frames"]["processed"] >= 1, 120)
    check(results, "SIGKILL mid-stream, restart", h["classes"] == 1 and h["status"] == "ok", classes=h["classes"])
    if args.soak_s > 0:
        soak(svc, results, args.soak_s)
    svc.stop()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")
    sys.exit(0 if all(c["ok"] for c in results["checks"]) else 1)


if __name__ == "__main__":
    main()
