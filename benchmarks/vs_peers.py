"""caffepy against its peers on the same nets and weights: C++ Caffe 1.0, OpenCV dnn, PyTorch.

    python benchmarks/vs_peers.py                      # all nets, batches 1 and 10, 3 rounds
    python benchmarks/vs_peers.py --nets caffenet,googlenet --batches 1 --rounds 2
    python benchmarks/vs_peers.py --smoke              # CaffeNet b1, 1 round, 2 iterations

caffepy fills each net with seeded random weights (benchmarks/peers/prepare.py) and saves one
.caffemodel that every peer loads. Each peer runs in its own subprocess (warm-up, then
``--iterations`` timed passes; wall clock), and the peers alternate round by round: round r
runs caffepy, caffepy optimized (when ``caffe.Net.optimize_for_inference`` exists), C++
pycaffe, OpenCV and torch on every (net, batch), then round r + 1. A round's value is the mean
of its iterations (as ``caffe time`` reports); the table gives the minimum and the median over
rounds. A peer's first run also dumps its TEST outputs, compared with caffepy's before any
number enters the table. Training (forward + backward): C++ ``caffe time`` against
``python -m caffe time`` and the hand-written torch step. ``--env NAME=VALUE`` sets a variable
for every peer; ``--from-json`` rewrites the README section from saved results.

This script imports neither caffe nor torch, so every subprocess starts from the environment
it was given (caffe's import would set OMP_WAIT_POLICY for all of them). Results:
``benchmarks/results_peers.json`` and the "Peers" section of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "peers"
ROOT = HERE.parent
BASE_ENV = dict(os.environ)
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
REFPY = Path("/opt/anchors/refpy")
REFCAFFE = Path("/opt/anchors/refcaffe")
NET_TITLES = {"caffenet": "CaffeNet", "googlenet": "GoogLeNet", "resnet50": "ResNet-50",
              "ssd300": "SSD300"}
#: a float32 peer whose outputs differ from caffepy's by more than this is flagged; softmax
#: outputs in [0, 1] after ~1e4-term float32 sums in different orders differ by ~1e-6..1e-4
AGREE_TOL = 1e-3
SUBPROCESS_TIMEOUT_S = 1800


# --- running the peers ------------------------------------------------------------------------

class PeerFailed(RuntimeError):
    pass


def run(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> str:
    """Run ``cmd``; return stdout + stderr, or raise PeerFailed with its tail."""
    proc = subprocess.run(cmd, env={**BASE_ENV, **(env or {})}, cwd=cwd, capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT_S)
    text = proc.stdout + proc.stderr
    if proc.returncode:
        tail = "\n".join(text.strip().splitlines()[-6:])
        raise PeerFailed(f"exit {proc.returncode}: {shlex.join(cmd)}\n{tail}")
    return text


def result_line(text: str) -> dict:
    for line in reversed(text.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise PeerFailed("no RESULT line in the output:\n" + "\n".join(text.splitlines()[-6:]))


class Peer:
    """One peer of the TEST-forward comparison: how to start its runner."""

    def __init__(self, key: str, label: str, python: str, script: str, extra=(),
                 env: dict | None = None, float32: bool = True) -> None:
        self.key, self.label, self.python, self.script = key, label, python, script
        self.extra, self.env, self.float32 = list(extra), env or {}, float32

    def command(self, case: dict, batch: int, args, dump: str) -> list[str]:
        cmd = [self.python, str(PEERS_DIR / self.script), "--prototxt", case["deploy"],
               "--weights", case["weights"], "--input", case["input"], "--batch", str(batch),
               "--outputs", ",".join(case["outputs"]), "--warmup", str(args.warmup),
               "--iterations", str(args.iterations), "--threads", str(args.threads)]
        if dump:
            cmd += ["--dump", dump]
        return cmd + [e.format(net=case["name"]) for e in self.extra]


def inference_peers(args, manifest: dict, skipped: dict) -> list[Peer]:
    py = sys.executable
    peers = [Peer("caffepy", "caffepy", py, "run_caffepy.py")]
    if manifest["_has_optimize_for_inference"]:
        peers += [Peer("caffepy_opt", "caffepy optimized fp32", py, "run_caffepy.py",
                       ["--mode", "optimized"]),
                  Peer("caffepy_bf16", "caffepy optimized bf16", py, "run_caffepy.py",
                       ["--mode", "bf16"], float32=False),
                  Peer("caffepy_compiled", "caffepy optimized fp32 + torch.compile", py,
                       "run_caffepy.py", ["--mode", "compiled"]),
                  Peer("caffepy_compiled_bf16", "caffepy optimized bf16 + torch.compile", py,
                       "run_caffepy.py", ["--mode", "compiled_bf16"], float32=False)]
    else:
        skipped["caffepy_opt"] = "caffe.Net has no optimize_for_inference in this tree"
    if REFPY.exists():
        peers.append(Peer("cpp_pycaffe", "C++ Caffe 1.0 (pycaffe)", str(REFPY),
                          "run_pycaffe.py",
                          env={"GLOG_minloglevel": "2",
                               "OPENBLAS_NUM_THREADS": str(args.threads)}))
    else:
        skipped["cpp_pycaffe"] = f"{REFPY} absent (build it with setup-reference-caffe.sh)"
    cv = Path(args.opencv_python)
    if cv.exists():
        peers.append(Peer("opencv", "OpenCV dnn", str(cv), "run_opencv.py"))
    else:
        skipped["opencv"] = f"{cv} absent (a Python with opencv-python 4.x)"
    peers.append(Peer("torch", "PyTorch eager (hand-written)", py, "run_torch.py",
                      ["--model", "{net}"]))
    return peers


TIME_LINE = re.compile(r"Iteration: \d+ forward-backward time: ([0-9.eE+-]+) ms")
AVERAGE_LINE = re.compile(r"Average Forward-Backward: ([0-9.eE+-]+) ms")


def caffe_time(cmd: list[str], env: dict) -> dict:
    """Per-iteration ms of a ``caffe time`` run (C++ or ours), from its log."""
    text = run(cmd, env=env, cwd=Path(tempfile.gettempdir()))
    times = [float(t) for t in TIME_LINE.findall(text)]
    average = AVERAGE_LINE.findall(text)
    if not times or not average:
        raise PeerFailed("no forward-backward times in the log of " + shlex.join(cmd))
    return {"times_ms": times, "average_ms": float(average[-1])}


def train_peers(args, skipped: dict) -> list[tuple[str, str, Callable]]:
    """(key, label, run(case, batch) -> result) of the training-step comparison."""
    threads = str(args.threads)

    def ours(case, batch):
        return caffe_time([sys.executable, "-m", "caffe", "time", "-model",
                           case["train"][str(batch)], "-iterations", str(args.iterations)],
                          {"OMP_NUM_THREADS": threads, "PYTHONPATH": str(ROOT)})

    def cpp(case, batch):
        return caffe_time([str(REFCAFFE), "time", "-model", case["train"][str(batch)],
                           "-iterations", str(args.iterations)],
                          {"OPENBLAS_NUM_THREADS": threads, "GLOG_minloglevel": "0"})

    def torch_step(no_step):
        def go(case, batch):
            cmd = Peer("", "", sys.executable, "run_torch.py").command(case, batch, args, "")
            cmd += ["--model", case["name"], "--train"] + (["--no-step"] if no_step else [])
            return result_line(run(cmd))
        return go

    peers = [("caffepy_time", "caffepy `python -m caffe time`", ours)]
    if REFCAFFE.exists():
        peers.append(("cpp_time", "C++ Caffe 1.0 `caffe time`", cpp))
    else:
        skipped["cpp_time"] = f"{REFCAFFE} absent"
    peers += [("torch_step", "PyTorch eager step (fwd, bwd, SGD)", torch_step(False)),
              ("torch_fwd_bwd", "PyTorch eager fwd+bwd (no SGD)", torch_step(True))]
    return peers


# --- agreement ----------------------------------------------------------------------------------

def _sorted_detections(d: np.ndarray) -> np.ndarray:
    rows = d.reshape(-1, 7)
    rows = rows[rows[:, 0] >= 0]  # C++/caffepy pad an empty result with a -1 row
    return rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))]


def agreement(ref: dict, other: dict) -> dict:
    """Max abs difference of each output both dumped (detections: count and sorted rows)."""
    out = {}
    for name, a in ref.items():
        if name not in other:
            continue
        b = other[name]
        if name == "detection_out":
            da, db = _sorted_detections(a), _sorted_detections(b)
            out["detections"] = f"{len(db)} vs {len(da)}"
            if len(da) == len(db) and len(da):
                out[name] = float(np.abs(da - db).max())
            continue
        if a.size != b.size:
            out[name] = f"size {b.size} vs {a.size}"
            continue
        out[name] = float(np.abs(a.reshape(-1) - b.reshape(-1)).max())
    return out


def agree_text(agree: dict | None) -> str:
    if not agree:
        return "—"
    return ", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in agree.items())


def disagrees(agree: dict) -> bool:
    return any(isinstance(v, float) and v > AGREE_TOL for v in agree.values())


# --- machine and versions ---------------------------------------------------------------------

def machine() -> dict:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "?").strip()
        info["cpus"] = fields.get("CPU(s)", "?").strip()
        info["cores_per_socket"] = fields.get("Core(s) per socket", "?").strip()
        info["threads_per_core"] = fields.get("Thread(s) per core", "?").strip()
        info["flags_avx512f"] = "avx512f" in fields.get("Flags", "")
        info["flags_amx"] = "amx_tile" in fields.get("Flags", "")
    except OSError:
        info["cpu"] = "?"
    return info


def versions(args) -> dict:
    def probe(cmd, env=None):
        try:
            return run(cmd, env=env, cwd=Path(tempfile.gettempdir())).strip().splitlines()[-1]
        except (PeerFailed, OSError) as exc:
            return f"unavailable ({str(exc).splitlines()[0]})"

    v = {"python": sys.version.split()[0], "numpy": np.__version__,
         "torch": probe([sys.executable, "-c", "import torch; print(torch.__version__)"])}
    if Path(args.opencv_python).exists():
        v["opencv"] = probe([args.opencv_python, "-c", "import cv2, numpy; "
                             "print(cv2.__version__, 'numpy', numpy.__version__)"])
    if REFCAFFE.exists():
        v["cpp_caffe"] = probe([str(REFCAFFE), "--version"])
        v["cpp_caffe_build"] = ("brocolli-caffe 9.0.2 sdist (BVLC Caffe 1.0 + SSD layers), "
                                "CPU_ONLY, OpenBLAS, built by setup-reference-caffe.sh")
        v["cpp_pycaffe_numpy"] = probe([str(REFPY), "-c", "import numpy; "
                                        "print(numpy.__version__)"])
        blas = probe(["sh", "-c", "readlink -f /lib/x86_64-linux-gnu/libopenblas.so.0"])
        v["openblas"] = Path(blas).name
    return v


# --- report -----------------------------------------------------------------------------------

def summarize(entry: dict) -> None:
    means = [float(np.mean(r)) for r in entry["times_ms"]]
    entry["round_mean_ms"] = [round(m, 3) for m in means]
    entry["min_ms"] = round(min(means), 3) if means else None
    entry["median_ms"] = round(float(np.median(means)), 3) if means else None


def _fmt(ms) -> str:
    return "—" if ms is None else (f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}")


def _ratio(a, b) -> str:
    return "—" if not a or not b else f"{a / b:.2f}"


THREAD_NOTES = """\
Threads (`--threads T`, default 2; no `OMP_WAIT_POLICY` is set for any peer): caffepy
`caffe.set_num_threads(T)`, OpenMP wait policy PASSIVE with GOMP_SPINCOUNT=1000 by
caffepy's own default (`caffe/_threads.py`); `python -m caffe time` with
`OMP_NUM_THREADS=T` (same default policy);
C++ Caffe (pycaffe and `caffe time`) `OPENBLAS_NUM_THREADS=T` (OpenBLAS pthreads; Caffe's own
im2col/pooling/LRN loops run on one thread); OpenCV `cv2.setNumThreads(T)` (its pthreads
pool), backend DNN_BACKEND_OPENCV; PyTorch `torch.set_num_threads(T)`, torch imported before
caffe so libgomp keeps its default (spinning) wait policy: on a busy machine its idle thread
spins on the core the worker needs and the torch rows run several times slower than with
sleeping threads (`--env OMP_WAIT_POLICY=PASSIVE` sets that for every peer; only torch reads
it, caffepy has its own). Agreement: each peer's first run's outputs on the same input
against caffepy's (SSD: the detections, sorted, and the two blobs that feed DetectionOutput);
a float32 peer off by more than 1e-3 is marked and left out of the "best peer" table."""


def markdown(payload: dict) -> str:
    m, v = payload["machine"], payload["versions"]
    lines = [
        "## Peers: caffepy vs C++ Caffe, OpenCV dnn and hand-written PyTorch",
        "",
        f"`{payload['command']}` — {payload['settings']['rounds']} round(s), each peer a fresh "
        f"subprocess per round ({payload['settings']['warmup']} warm-up + "
        f"{payload['settings']['iterations']} timed iterations, wall clock), peers alternated "
        "within each round; a round's value is its mean per iteration; ms = minimum and median "
        "over rounds; ratio = caffepy's median / the peer's median (below 1: caffepy faster). "
        "Same seeded random weights for all (one .caffemodel written by caffepy; every "
        "Convolution/InnerProduct scaled to unit output, BatchNorm statistics from the data).",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cpus')} CPUs ({m.get('cores_per_socket')} cores, "
        f"{m.get('threads_per_core')} thread(s) per core), {m['date']}. Versions: Python "
        f"{v.get('python')}, numpy {v.get('numpy')}, torch {v.get('torch')}, OpenCV "
        f"{v.get('opencv', 'absent')}, C++ Caffe {v.get('cpp_caffe', 'absent')} "
        f"({v.get('cpp_caffe_build', '')}; numpy {v.get('cpp_pycaffe_numpy', '?')}, "
        f"{v.get('openblas', '?')}). 1-minute load average {payload['load_before']:.2f} "
        f"before, {payload['load_after']:.2f} after"
        + (" (a busy machine: indicative only)." if max(payload["load_before"],
                                                        payload["load_after"]) > 0.5 else "."),
        "",
        THREAD_NOTES + (" Set for every peer by `--env`: " + ", ".join(
            f"`{e}`" for e in payload["settings"]["env"]) + "."
            if payload["settings"]["env"] else ""),
        "",
    ]
    if payload["inference"]:
        lines += ["### Inference (TEST forward)", "",
                  "| net | batch | peer | min ms | median ms | caffepy / peer | "
                  "max abs diff vs caffepy |",
                  "|---|---:|---|---:|---:|---:|---|"]
        cases = {}
        for e in payload["inference"]:
            cases.setdefault((e["net"], e["batch"]), {})[e["peer"]] = e
        for (net, batch), rows in cases.items():
            base = rows.get("caffepy", {}).get("median_ms")
            for e in rows.values():
                label = e["label"]
                if net == "ssd300" and e["peer"] == "torch":
                    label += " — no DetectionOutput"
                flag = " **(disagrees)**" if e.get("disagrees") else ""
                lines.append(f"| {NET_TITLES[net]} | {batch} | {label} | {_fmt(e['min_ms'])} "
                             f"| {_fmt(e['median_ms'])} | {_ratio(base, e['median_ms'])} | "
                             f"{agree_text(e.get('agreement'))}{flag} |")
        lines += ["", "Best peer per net and batch (the fastest non-caffepy row; the issue's "
                  "goal is at most 0.7x the best of C++ Caffe and OpenCV):", "",
                  "| net | batch | best peer | ms | caffepy / best | caffepy / best of C++, "
                  "OpenCV | optimized fp32 / best | optimized bf16 / best | compiled fp32 / "
                  "best | compiled bf16 / best |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for (net, batch), rows in cases.items():
            others = [e for k, e in rows.items() if not k.startswith("caffepy")
                      and e["median_ms"] and not e.get("disagrees")]
            classic = [e for e in others if e["peer"] in ("cpp_pycaffe", "opencv")]
            if not others:
                continue
            best = min(others, key=lambda e: e["median_ms"])
            best_classic = min(classic, key=lambda e: e["median_ms"])["median_ms"] \
                if classic else None

            def med(key, rows=rows):
                return rows.get(key, {}).get("median_ms")
            lines.append(f"| {NET_TITLES[net]} | {batch} | {best['label']} | "
                         f"{_fmt(best['median_ms'])} | {_ratio(med('caffepy'), best['median_ms'])}"
                         f" | {_ratio(med('caffepy'), best_classic)} | "
                         f"{_ratio(med('caffepy_opt'), best['median_ms'])} | "
                         f"{_ratio(med('caffepy_bf16'), best['median_ms'])} | "
                         f"{_ratio(med('caffepy_compiled'), best['median_ms'])} | "
                         f"{_ratio(med('caffepy_compiled_bf16'), best['median_ms'])} |")
    if payload["train"]:
        lines += ["", f"### Training step (forward + backward, batch "
                  f"{payload['settings']['train_batch']})", "",
                  "`caffe time -model train.prototxt -iterations N` (Input data + label, "
                  "SoftmaxWithLoss; xavier-filled weights, zero inputs) for C++ Caffe and "
                  "caffepy's CLI; the torch rows run the same graph on the benchmark's "
                  "weights and inputs (dropout on).", "",
                  "| net | batch | peer | min ms | median ms | caffepy / peer |",
                  "|---|---:|---|---:|---:|---:|"]
        cases = {}
        for e in payload["train"]:
            cases.setdefault((e["net"], e["batch"]), {})[e["peer"]] = e
        for (net, batch), rows in cases.items():
            base = rows.get("caffepy_time", {}).get("median_ms")
            for e in rows.values():
                lines.append(f"| {NET_TITLES[net]} | {batch} | {e['label']} | "
                             f"{_fmt(e['min_ms'])} | {_fmt(e['median_ms'])} | "
                             f"{_ratio(base, e['median_ms'])} |")
    if payload["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in
                                               payload["skipped"].items()) + "."]
    lines += ["", f"This run took {payload['wall_s']:.0f} s. The full comparison is "
              "`python benchmarks/vs_peers.py` (all four nets, batches 1 and 10, 3 rounds, "
              "training at batch 10); SSD300 at batch 10 should take most of that (one batch-1 "
              "forward took 0.4-2.2 s here, depending on the peer). Raw numbers "
              "(per-iteration ms of every round, agreement): `benchmarks/results_peers.json`."]
    return "\n".join(lines) + "\n"


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def update_readme(path: Path, section: str) -> None:
    """Replace the text between the peers markers (appended at the end the first time)."""
    text = path.read_text()
    block = f"{BEGIN}\n{section}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write(path, text)


# --- rounds -----------------------------------------------------------------------------------

def _failed(entry: dict, what: str, exc: Exception) -> None:
    """Note a failed run; the peer is tried again next round (a tree being edited can fail
    once), and only a peer that never ran is listed as skipped."""
    entry.setdefault("errors", []).append(str(exc))
    print(f"  {what}: FAILED {str(exc)[:400]}", flush=True)


def inference_round(r: int, case: dict, batch: int, peers: list[Peer], inference: dict,
                    outputs: dict, work: Path, args) -> None:
    """Round ``r`` of every TEST-forward peer on one (net, batch); a peer's first successful
    run also dumps its outputs, compared with caffepy's as soon as both exist."""
    n = case["name"]
    for peer in peers:
        entry = inference[(n, batch, peer.key)]
        dump = "" if peer.key in outputs else str(work / f"{n}_b{batch}_{peer.key}.npz")
        try:
            res = result_line(run(peer.command(case, batch, args, dump), env=peer.env,
                                  cwd=work))
        except (PeerFailed, subprocess.TimeoutExpired) as exc:
            _failed(entry, f"round {r + 1} {n} b{batch} {peer.key}", exc)
            continue
        entry["times_ms"].append(res.pop("times_ms"))
        entry["info"] = res
        if dump:
            with np.load(dump) as z:
                outputs[peer.key] = dict(z)
        print(f"  round {r + 1} {n} b{batch} {peer.key}: "
              f"{np.mean(entry['times_ms'][-1]):.2f} ms", flush=True)
    if "caffepy" not in outputs:
        return
    for peer in peers:
        entry = inference[(n, batch, peer.key)]
        if peer.key == "caffepy" or peer.key not in outputs or "agreement" in entry:
            continue
        entry["agreement"] = agreement(outputs["caffepy"], outputs[peer.key])
        entry["disagrees"] = peer.float32 and disagrees(entry["agreement"])
        print(f"  agreement {n} b{batch} {peer.key}: {agree_text(entry['agreement'])}",
              flush=True)


def train_round(r: int, case: dict, tpeers: list, train: dict, args) -> None:
    """Round ``r`` of every training-step peer on one net."""
    for key, _, go in tpeers:
        entry = train[(case["name"], args.train_batch, key)]
        try:
            res = go(case, args.train_batch)
        except (PeerFailed, subprocess.TimeoutExpired) as exc:
            _failed(entry, f"round {r + 1} {case['name']} train {key}", exc)
            continue
        entry["times_ms"].append(res.pop("times_ms"))
        entry["info"] = res
        print(f"  round {r + 1} {case['name']} train b{args.train_batch} {key}: "
              f"{np.mean(entry['times_ms'][-1]):.2f} ms", flush=True)


# --- main -------------------------------------------------------------------------------------

def prepare(args, work: Path) -> dict:
    cmd = [sys.executable, str(PEERS_DIR / "prepare.py"), str(work), "--nets",
           ",".join(args.nets), "--train-batches", "" if args.skip_train else
           str(args.train_batch), "--seed", str(args.seed)]
    text = run(cmd)
    line = next(x for x in reversed(text.splitlines()) if x.startswith("MANIFEST "))
    manifest = json.loads(line[len("MANIFEST "):])
    for name, case in manifest.items():
        case["name"] = name
    probe = run([sys.executable, "-c", "import caffe; "
                 "print(hasattr(caffe.Net, 'optimize_for_inference'))"], cwd=ROOT)
    manifest["_has_optimize_for_inference"] = probe.strip().splitlines()[-1] == "True"
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default="caffenet,googlenet,resnet50,ssd300")
    p.add_argument("--batches", default="1,10", help="TEST-forward batch sizes")
    p.add_argument("--net-batches", action="append", default=[], metavar="NET=B1,B2",
                   help="batch sizes for one net instead of --batches (e.g. ssd300=1); "
                        "repeatable")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=10, help="timed iterations per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-batch", type=int, default=10)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--opencv-python", default="/tmp/cv4venv/bin/python",
                   help="a Python with opencv-python 4.x (OpenCV 5 has no Caffe importer)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set this in every peer's environment (e.g. OMP_WAIT_POLICY=PASSIVE "
                        "to compare on a busy machine); repeatable; default: none")
    p.add_argument("--smoke", action="store_true",
                   help="CaffeNet batch 1 (training too), 1 round, 2 iterations: checks "
                        "that the script works")
    p.add_argument("--out", type=Path, default=HERE, help="folder for the JSON and README.md")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--from-json", type=Path, default=None,
                   help="rewrite README.md's section from this results_peers.json (no runs)")
    raw = sys.argv[1:] if argv is None else argv
    args = p.parse_args(raw)
    if args.from_json:
        section = markdown(json.loads(args.from_json.read_text()))
        print(section)
        if not args.no_write:
            update_readme(args.out / "README.md", section)
        return 0
    if args.smoke:
        args.nets, args.batches, args.rounds, args.iterations = "caffenet", "1", 1, 2
        args.warmup, args.train_batch = 1, 1
    args.nets = [n for n in args.nets.split(",") if n]
    unknown = set(args.nets) - set(NET_TITLES)
    if unknown:
        p.error(f"unknown nets {sorted(unknown)}; choose from {sorted(NET_TITLES)}")
    batches = [int(b) for b in args.batches.split(",") if b]
    batches_of = {n: batches for n in args.nets}
    for item in args.net_batches:
        name, _, values = item.partition("=")
        if name not in batches_of:
            p.error(f"--net-batches names {name!r}, which is not in --nets")
        batches_of[name] = [int(b) for b in values.split(",") if b]
    for item in args.env:
        name, _, value = item.partition("=")
        BASE_ENV[name] = value
    trainable = [n for n in args.nets if n in ("caffenet", "googlenet")]

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="vs_peers_") as tmp:
        work = Path(tmp)
        print(f"# preparing {', '.join(args.nets)} in {work}", flush=True)
        manifest = prepare(args, work)
        peers = inference_peers(args, manifest, skipped)
        tpeers = [] if args.skip_train or not trainable else train_peers(args, skipped)
        inference = {(n, b, peer.key): {"net": n, "batch": b, "peer": peer.key,
                                        "label": peer.label, "times_ms": []}
                     for n in args.nets for b in batches_of[n] for peer in peers}
        train = {(n, args.train_batch, key): {"net": n, "batch": args.train_batch,
                                              "peer": key, "label": label, "times_ms": []}
                 for n in trainable for key, label, _ in tpeers}
        outputs: dict[tuple, dict] = {}  # (net, batch) -> {peer: dumped outputs}
        for r in range(args.rounds):
            for n in args.nets:
                for b in batches_of[n]:
                    inference_round(r, manifest[n], b, peers, inference,
                                    outputs.setdefault((n, b), {}), work, args)
                if n in trainable:
                    train_round(r, manifest[n], tpeers, train, args)
        for entry in [*inference.values(), *train.values()]:
            summarize(entry)
    for entry in [*inference.values(), *train.values()]:
        if entry.get("errors") and not entry["times_ms"]:
            skipped[f"{entry['net']} b{entry['batch']} {entry['peer']}"] = \
                entry["errors"][-1].splitlines()[-1][:200]
    payload = {
        "command": shlex.join(["python", "benchmarks/vs_peers.py", *raw]),
        "machine": machine(), "versions": versions(args),
        "settings": {"env": args.env, "rounds": args.rounds, "iterations": args.iterations,
                     "warmup": args.warmup, "threads": args.threads,
                     "batches": {n: batches_of[n] for n in args.nets},
                     "train_batch": args.train_batch, "seed": args.seed,
                     "agreement_tolerance": AGREE_TOL},
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "wall_s": round(time.perf_counter() - started, 1),
        "inference": [e for e in inference.values() if e["times_ms"]],
        "train": [e for e in train.values() if e["times_ms"]],
        "skipped": skipped,
    }
    section = markdown(payload)
    print(section)
    print(f"# wall time {payload['wall_s']} s", flush=True)
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out / "results_peers.json", json.dumps(payload, indent=1) + "\n")
        update_readme(args.out / "README.md", section)
        print(f"wrote {args.out / 'results_peers.json'} and {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
