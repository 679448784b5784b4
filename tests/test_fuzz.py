"""Fuzzing every loader a crafted or damaged file reaches (issue 14, "Must show").

A seeded mutator (bit flips, interesting bytes and integers, chunks deleted, duplicated or
inserted, truncation; for text, numbers swapped for extreme values, lines deleted, duplicated
or swapped, strings replaced) damages seed inputs: a net prototxt, binary and HDF5
caffemodels, binary and HDF5 solverstates, a mean file, HDF5Data inputs (file bytes and
declared shapes), an LMDB's data.mdb, LMDB records (raw and encoded Datums) and solver files.
Each case must end OK or in a ``caffe.errors.CaffeError``; a foreign exception, a signal (a
SIGBUS from a short data.mdb), a timeout, or — for the file loaders — an allocation failure or
more than LOADER_PEAK_MB of peak memory is a failure, reported with the reproducing target,
seed and case number. Caffe errors that wrap a layer's foreign exception (the Net names the
layer) are counted apart as ``caffe-wrapped`` in the outcome table.

Cases run in a worker subprocess under ``RLIMIT_AS`` (``FUZZ_MEMORY_MB``, 3 GiB by default),
so an unbounded allocation is caught there instead of exhausting the machine, and under a
per-case alarm. A crashed worker is restarted at the next case.

The CI budget is small (``FUZZ_CASES`` cases per target, 6 by default, ~15 s). For a larger
run, locally::

    FUZZ_CASES=200 FUZZ_SEED=7 python -m pytest tests/test_fuzz.py -q -s

(``-s`` prints the outcome table), or run the worker directly to see every case:
``python tests/test_fuzz.py --cases 200 --seed 7 [--targets lmdb,prototxt]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections import Counter
from pathlib import Path

import pytest

TARGETS = ("prototxt", "caffemodel", "caffemodel_h5", "solverstate", "solverstate_h5",
           "mean_file", "hdf5_data", "lmdb", "lmdb_records", "solver")
# Targets whose files only declare sizes: an allocation failure there is unbounded reading.
# (A mutated net or solver may legitimately ask for a large blob, as C++ Caffe would.)
LOADERS = {"caffemodel", "caffemodel_h5", "solverstate", "solverstate_h5", "mean_file",
           "hdf5_data", "lmdb", "lmdb_records"}
CASE_TIMEOUT_S = 20
# A damaged input of a few kilobytes (the regressions: tens of megabytes) may cost a loader
# this much memory at most.
LOADER_PEAK_MB = 512
DEFAULT_CASES = 6
DEFAULT_MEMORY_MB = 3072

INTERESTING_NUMBERS = ("0", "-1", "1", "-2147483648", "2147483647", "2147483648",
                       "4294967296", "99999999999999999999", "1e30", "-1e30", "1e-45", "nan",
                       "inf", "-inf", "0.5", "3")
INTERESTING_STRINGS = ('"../../../../etc/passwd"', '"data"', '"label"', '"conv"', '"Python"',
                       '"Convolution"', '"HDF5Output"', '"Data"', '"\\xff\\xfe"', '""',
                       '"exp"', '"inv"', '"sigmoid"', '"Adam"', '"RMSProp"', '"step"')
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE)

NET_TEXT = """
name: "fuzz"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 1 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""

TRAIN_NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

SOLVER_TEXT = """
base_lr: 0.01
lr_policy: "step"
gamma: 0.5
stepsize: 2
momentum: 0.9
weight_decay: 0.0005
max_iter: 4
display: 1
type: "SGD"
"""


# --- the mutator -----------------------------------------------------------------------------
def mutate_bytes(data: bytes, rng) -> bytes:
    """1-4 random byte-level edits of ``data``."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        op = int(rng.integers(0, 7))
        n = len(out)
        if n == 0:
            out.extend(rng.integers(0, 256, int(rng.integers(1, 16)), dtype="uint8").tobytes())
            continue
        pos = int(rng.integers(0, n))
        if op == 0:  # flip bits
            out[pos] ^= 1 << int(rng.integers(0, 8))
        elif op == 1:  # interesting byte
            out[pos] = INTERESTING_BYTES[int(rng.integers(0, len(INTERESTING_BYTES)))]
        elif op == 2:  # random run
            size = int(rng.integers(1, 9))
            out[pos:pos + size] = rng.integers(0, 256, size, dtype="uint8").tobytes()
        elif op == 3:  # delete a chunk
            del out[pos:pos + int(rng.integers(1, max(2, n // 8)))]
        elif op == 4:  # duplicate a chunk, many times (repeated records)
            chunk = bytes(out[pos:pos + int(rng.integers(1, 32))])
            out[pos:pos] = chunk * int(rng.integers(1, 200))
        elif op == 5:  # truncate
            del out[int(rng.integers(0, n)):]
        else:  # a large varint (a length or a count) spliced in
            value = int(rng.choice([2**31, 2**32 - 1, 2**40, 2**62]))
            varint = bytearray()
            while True:
                varint.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
                value >>= 7
                if not value:
                    break
            out[pos:pos + len(varint)] = varint
    return bytes(out)


def mutate_text(text: str, rng) -> str:
    """1-3 random token- or line-level edits of a prototxt."""
    import re

    for _ in range(int(rng.integers(1, 4))):
        lines = text.splitlines()
        op = int(rng.integers(0, 7))
        numbers = list(re.finditer(r"(?<![\w.])-?\d+(\.\d+)?(e-?\d+)?", text))
        strings = list(re.finditer(r'"[^"\n]*"', text))
        if op <= 1 and numbers:
            m = numbers[int(rng.integers(0, len(numbers)))]
            value = INTERESTING_NUMBERS[int(rng.integers(0, len(INTERESTING_NUMBERS)))]
            text = text[:m.start()] + value + text[m.end():]
        elif op == 2 and strings:
            m = strings[int(rng.integers(0, len(strings)))]
            value = INTERESTING_STRINGS[int(rng.integers(0, len(INTERESTING_STRINGS)))]
            text = text[:m.start()] + value + text[m.end():]
        elif op == 3 and lines:
            del lines[int(rng.integers(0, len(lines)))]
            text = "\n".join(lines)
        elif op == 4 and lines:
            i = int(rng.integers(0, len(lines)))
            lines[i:i] = [lines[i]] * int(rng.integers(1, 4))
            text = "\n".join(lines)
        elif op == 5 and len(lines) > 1:
            i, j = (int(v) for v in rng.integers(0, len(lines), 2))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        else:
            text = mutate_bytes(text.encode(), rng).decode("utf-8", errors="replace")
    return text


# --- the worker ------------------------------------------------------------------------------
class CaseTimeout(BaseException):
    """Raised by the per-case alarm (a BaseException, so no loader's except clause eats it)."""


def _alarm(signum, frame):
    raise CaseTimeout()


class Seeds:
    """Seed inputs, written once per worker into ``folder``."""

    def __init__(self, folder: Path) -> None:
        import h5py
        import numpy as np

        import caffe
        from caffe.data import db as dbmod
        from caffe.data.datum import encoded_datum, image_to_datum
        from caffe.proto import caffe_pb2

        self.folder = folder
        net_path = folder / "net.prototxt"
        net_path.write_text(NET_TEXT)
        self.net_text = NET_TEXT
        self.net = caffe.Net(str(net_path), caffe.TEST)
        self.net.save(str(folder / "seed.caffemodel"))
        self.net.save_hdf5(str(folder / "seed.caffemodel.h5"))
        self.caffemodel = (folder / "seed.caffemodel").read_bytes()
        self.caffemodel_h5 = (folder / "seed.caffemodel.h5").read_bytes()

        (folder / "train_net.prototxt").write_text(TRAIN_NET)
        self.solver_text = (f'net: "{folder / "train_net.prototxt"}"\n' + SOLVER_TEXT
                            + f'snapshot_prefix: "{folder / "snap"}"\n')
        (folder / "solver.prototxt").write_text(self.solver_text)
        self.solver = caffe.get_solver(str(folder / "solver.prototxt"))
        self.solver.step(1)
        self.solver.snapshot()
        self.solverstate = (folder / "snap_iter_1.solverstate").read_bytes()
        self.solver.param.snapshot_format = caffe_pb2.SolverParameter.HDF5
        self.solver.snapshot()
        self.solverstate_h5 = (folder / "snap_iter_1.solverstate.h5").read_bytes()

        mean = caffe_pb2.BlobProto()
        mean.shape.dim.extend([1, 3, 4, 4])
        mean.data.extend(np.linspace(0, 1, 48).tolist())
        self.mean_file = mean.SerializeToString()

        with h5py.File(folder / "rows.h5", "w") as f:
            f["data"] = np.arange(36, dtype=np.float32).reshape(6, 2, 3)
            f["label"] = np.arange(6, dtype=np.float32)
        self.hdf5 = (folder / "rows.h5").read_bytes()

        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8)
        self.records = [image_to_datum(img, i).SerializeToString()
                        for i, img in enumerate(images)]
        self.records += [encoded_datum(img.transpose(1, 2, 0), ext, 7).SerializeToString()
                         for img, ext in zip(images[:2], ("png", "jpg"))]
        with dbmod.open_db(folder / "seed_lmdb", dbmod.NEW) as db:
            txn = db.new_transaction()
            for i, value in enumerate(self.records[:6]):
                txn.put(dbmod.format_key(i, f"r{i}"), value)
            txn.commit()


def _data_net(case: Path, source: Path, batch: int = 3) -> str:
    return textwrap.dedent(f"""
        layer {{ name: "data" type: "Data" top: "data" top: "label"
                 data_param {{ source: "{source}" backend: LMDB batch_size: {batch} }} }}
        """)


def run_case(seeds: Seeds, target: str, rng, case: Path) -> None:
    """Build one mutated input of ``target`` in ``case`` and run its loader."""
    import h5py
    import numpy as np

    import caffe
    from caffe.data import db as dbmod
    from caffe.data.transformer import load_mean_file

    def net_from(text: str, name: str = "case.prototxt"):
        path = case / name
        path.write_text(text)
        return caffe.Net(str(path), caffe.TEST, allow_python_layers=False, file_root=case)

    if target == "prototxt":
        net = net_from(mutate_text(seeds.net_text, rng))
        net.forward()
    elif target in ("caffemodel", "caffemodel_h5"):
        name = "w.caffemodel" + (".h5" if target.endswith("h5") else "")
        seed = seeds.caffemodel_h5 if target.endswith("h5") else seeds.caffemodel
        (case / name).write_bytes(mutate_bytes(seed, rng))
        seeds.net.copy_from(str(case / name))
    elif target in ("solverstate", "solverstate_h5"):
        name = "s.solverstate" + (".h5" if target.endswith("h5") else "")
        seed = seeds.solverstate_h5 if target.endswith("h5") else seeds.solverstate
        (case / name).write_bytes(mutate_bytes(seed, rng))
        seeds.solver.restore(str(case / name))
        seeds.solver.step(1)
    elif target == "mean_file":
        (case / "mean.binaryproto").write_bytes(mutate_bytes(seeds.mean_file, rng))
        load_mean_file(str(case / "mean.binaryproto"))
    elif target == "hdf5_data":
        h5 = case / "rows.h5"
        if rng.random() < 0.5:
            h5.write_bytes(mutate_bytes(seeds.hdf5, rng))
        else:  # declared shapes, dtypes and layouts the layer must check before reading
            rows = int(rng.choice([0, 1, 6, 2**20, 2**31]))
            row = tuple(int(v) for v in rng.choice([0, 1, 3, 1000, 2**16], int(rng.integers(0, 3))))
            with h5py.File(h5, "w") as f:
                dtype = rng.choice(["float32", "float64", "int8", "uint16", "S4", "bool"])
                labels = int(rng.choice([rows, 6]))
                for name, shape in (("data", (rows, *row)), ("label", (labels,))):
                    big = int(np.prod(shape, dtype=np.float64)) > 10**6
                    if big:
                        f.create_dataset(name, shape=shape, dtype=dtype, chunks=True)
                    else:
                        f.create_dataset(name, data=np.ones(shape, dtype=dtype))
        listing = f"{h5}\n".encode()
        if rng.random() < 0.2:
            listing = mutate_bytes(listing, rng)
        (case / "list.txt").write_bytes(listing)
        net = net_from(f'layer {{ name: "h5" type: "HDF5Data" top: "data" top: "label" '
                       f'hdf5_data_param {{ source: "{case / "list.txt"}" batch_size: 4 }} }}')
        for _ in range(3):
            net.forward()
    elif target == "lmdb":
        shutil.copytree(seeds.folder / "seed_lmdb", case / "db")
        data = case / "db" / "data.mdb"
        data.write_bytes(mutate_bytes(data.read_bytes(), rng))
        (case / "db" / "lock.mdb").unlink(missing_ok=True)
        net = net_from(_data_net(case, case / "db"))
        for _ in range(3):
            net.forward()
    elif target == "lmdb_records":
        with dbmod.open_db(case / "db", dbmod.NEW) as db:
            txn = db.new_transaction()
            for i in range(4):
                value = seeds.records[int(rng.integers(0, len(seeds.records)))]
                if rng.random() < 0.7:
                    value = mutate_bytes(value, rng)
                txn.put(dbmod.format_key(i, f"r{i}"), value)
            txn.commit()
        net = net_from(_data_net(case, case / "db", batch=2))
        for _ in range(3):
            net.forward()
    elif target == "solver":
        (case / "solver.prototxt").write_text(
            mutate_text(seeds.solver_text.replace(str(seeds.folder / "snap"),
                                                  str(case / "snap")), rng))
        solver = caffe.get_solver(str(case / "solver.prototxt"))
        solver.step(2)
    else:
        raise ValueError(f"unknown fuzz target {target!r}")


# --- regressions: the reproducers of the failures issue 14 lists ------------------------------
def _reg_record_bomb(seeds, case):
    """Empty layer records (20 MB of them took 3.6 GB in the parser; 6 MB here, 1.6 GB)."""
    (case / "bomb.caffemodel").write_bytes(b"\xa2\x06\x00" * (2 * 10**6))
    seeds.net.copy_from(str(case / "bomb.caffemodel"))


def _reg_huge_input(seeds, case):
    """An Input of [2^31, 2^31, 2^31]: overflowed inside SyncedMemory before."""
    import caffe

    (case / "huge.prototxt").write_text(
        'layer { name: "in" type: "Input" top: "data" input_param { shape { '
        'dim: 2147483648 dim: 2147483648 dim: 2147483648 } } }')
    caffe.Net(str(case / "huge.prototxt"), caffe.TEST)


def _reg_png_header(seeds, case):
    """An encoded Datum whose PNG header claims 100000x20000 pixels (a valid CRC), decoded as
    the Data layer's transformer does."""
    import struct
    import zlib

    from caffe.data.datum import datum_to_image
    from caffe.proto import caffe_pb2

    value = caffe_pb2.Datum.FromString(seeds.records[6])  # the PNG one
    png = value.data
    ihdr = b"IHDR" + struct.pack(">II", 100000, 20000) + png[24:29]
    value.data = png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]
    datum_to_image(value)


def _reg_huge_hdf5_dataset(seeds, case):
    """An HDF5Data dataset declared (2^31, 1000): dataset[()] asked for 8 TiB."""
    import h5py

    import caffe

    with h5py.File(case / "huge.h5", "w") as f:
        f.create_dataset("data", shape=(2**31, 1000), dtype="float32", chunks=(1, 1000))
        f.create_dataset("label", shape=(2**31,), dtype="float32", chunks=(1024,))
    (case / "list.txt").write_text(f"{case / 'huge.h5'}\n")
    (case / "net.prototxt").write_text(
        f'layer {{ name: "h5" type: "HDF5Data" top: "data" top: "label" '
        f'hdf5_data_param {{ source: "{case / "list.txt"}" batch_size: 2 }} }}')
    caffe.Net(str(case / "net.prototxt"), caffe.TEST).forward()


def _reg_short_data_mdb(seeds, case):
    """A data.mdb shorter than its meta page says: SIGBUS before."""
    import caffe
    from caffe.data import db as dbmod

    with dbmod.open_db(case / "db", dbmod.NEW) as db:
        txn = db.new_transaction()
        for i in range(40):
            txn.put(dbmod.format_key(i, ""), seeds.records[i % 6] * 30)
        txn.commit()
    data = case / "db" / "data.mdb"
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2 // 4096 * 4096)
    (case / "net.prototxt").write_text(_data_net(case, case / "db", batch=40))
    caffe.Net(str(case / "net.prototxt"), caffe.TEST).forward()


def _reg_empty_blob_in_caffemodel(seeds, case):
    """A caffemodel blob declaring 40000x40000 values and storing none."""
    weights = seeds.net.to_proto()
    blob = weights.layer[1].blobs[0]
    del blob.data[:]
    del blob.shape.dim[:]
    blob.shape.dim.extend([40000, 40000])
    (case / "w.caffemodel").write_bytes(weights.SerializeToString())
    seeds.net.copy_from(str(case / "w.caffemodel"))


REGRESSIONS = {f.__name__[5:]: f for f in (_reg_record_bomb, _reg_huge_input, _reg_png_header,
                                           _reg_huge_hdf5_dataset, _reg_short_data_mdb,
                                           _reg_empty_blob_in_caffemodel)}


def _classify(exc: BaseException) -> str:
    from caffe.errors import CaffeError

    if isinstance(exc, CaffeError):
        chain, cause = [], exc
        while cause is not None and len(chain) < 8:
            chain.append(cause)
            cause = cause.__cause__ or cause.__context__
        text = str(exc)
        if any(isinstance(c, MemoryError) for c in chain) or "can't allocate memory" in text \
                or "Cannot allocate memory" in text:
            return "caffe-oom"
        if exc.__cause__ is not None and not isinstance(exc.__cause__, CaffeError):
            return "caffe-wrapped"  # a layer's foreign exception, wrapped by the Net
        return "caffe"
    return "foreign"


def worker(seed: int, targets: list[str], start: int, cases: int, memory_mb: int) -> None:
    """Run cases ``start..cases-1`` of every target, one JSON line per case on stdout."""
    import resource

    import numpy as np

    if memory_mb:
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import logging

    import torch

    import caffe  # noqa: F401

    torch.set_num_threads(1)
    logging.getLogger("caffe").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGALRM, _alarm)
    root = Path(tempfile.mkdtemp(prefix="caffe-fuzz-"))
    try:
        (root / "seeds").mkdir()
        seeds = Seeds(root / "seeds")
        # Regressions run once, first (as case 0), then the fuzz cases from ``start``.
        order = [(0, t) for t in targets if t in REGRESSIONS and start == 0]
        order += [(i, t) for i in range(start, cases) for t in targets if t in TARGETS]
        for i, target in order:
            print(json.dumps({"start": [target, i]}), flush=True)
            case = root / f"{target}-{i}"
            case.mkdir()
            rng = np.random.default_rng([seed, TARGETS.index(target) if target in TARGETS
                                         else 99, i])
            began = time.monotonic()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            outcome, error = "ok", ""
            signal.alarm(CASE_TIMEOUT_S)
            try:
                if target in REGRESSIONS:
                    REGRESSIONS[target](seeds, case)
                else:
                    run_case(seeds, target, rng, case)
            except CaseTimeout:
                outcome, error = "timeout", f"over {CASE_TIMEOUT_S} s"
            except Exception as exc:  # noqa: BLE001 - classifying every outcome is the point
                outcome = _classify(exc)
                error = f"{type(exc).__name__}: {exc}"[:400]
                if outcome == "foreign":
                    error += "\n" + "".join(traceback.format_exception(exc)[-6:])[-1500:]
            finally:
                signal.alarm(0)
            grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) >> 10
            gc.collect()
            shutil.rmtree(case, ignore_errors=True)
            print(json.dumps({"target": target, "case": i, "outcome": outcome, "error": error,
                              "seconds": round(time.monotonic() - began, 3),
                              "peak_growth_mb": grown_mb}), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- the driver ------------------------------------------------------------------------------
def run_fuzz(seed: int, cases: int, targets=TARGETS, memory_mb: int = DEFAULT_MEMORY_MB,
             echo=None) -> list[dict]:
    """Every case's result; a worker killed by a signal is restarted after the case it was
    running, which is recorded as a crash."""
    results: list[dict] = []
    done: set[tuple[str, int]] = set()
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2", CAFFE_DATA_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                        env.get("PYTHONPATH", "")])
    start = 0
    while start < cases:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--seed", str(seed),
               "--cases", str(cases), "--start", str(start), "--targets", ",".join(targets),
               "--memory-mb", str(memory_mb)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        running = None
        for line in proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "start" in record:
                running = tuple(record["start"])
                continue
            results.append(record)
            done.add((record["target"], record["case"]))
            running = None
            if echo:
                echo(record)
        stderr = proc.stderr.read()
        proc.wait()
        if running is None:
            if proc.returncode != 0:
                results.append({"target": "worker", "case": start, "outcome": "crash",
                                "error": f"worker exited {proc.returncode}: {stderr[-1500:]}"})
            break
        target, case = running
        results.append({"target": target, "case": case, "outcome": "crash",
                        "error": f"worker died with status {proc.returncode}: "
                                 f"{stderr[-800:]}"})
        done.add((target, case))
        # The other targets of the crashed index, then a fresh worker from the next index.
        remaining = [t for t in targets if (t, case) not in done]
        results.extend(_run_index(seed, case, remaining, memory_mb, env, echo))
        start = case + 1
    return results


def _run_index(seed, case, targets, memory_mb, env, echo) -> list[dict]:
    """The cases of one index, one worker per target (after a crash at that index)."""
    out = []
    for target in targets:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--seed", str(seed),
               "--cases", str(case + 1), "--start", str(case), "--targets", target,
               "--memory-mb", str(memory_mb)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        records = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        finished = [r for r in records if "outcome" in r]
        if finished:
            out.extend(finished)
        else:
            out.append({"target": target, "case": case, "outcome": "crash",
                        "error": f"worker died with status {proc.returncode}: "
                                 f"{proc.stderr[-800:]}"})
        if echo:
            echo(out[-1])
    return out


def failures(results: list[dict]) -> list[dict]:
    """Foreign exceptions, crashes and timeouts; for the file loaders also allocation failures
    and cases that grew the worker's peak memory by more than LOADER_PEAK_MB."""
    bad = []
    for r in results:
        if r["outcome"] in ("foreign", "crash", "timeout"):
            bad.append(r)
        elif r["target"] in LOADERS | set(REGRESSIONS) and (
                r["outcome"] == "caffe-oom" or r.get("peak_growth_mb", 0) > LOADER_PEAK_MB):
            bad.append(dict(r, outcome=f"{r['outcome']}, peak memory +{r['peak_growth_mb']} MB"))
    return bad


def summary(results: list[dict]) -> str:
    table = Counter((r["target"], r["outcome"]) for r in results)
    lines = []
    for target in sorted({t for t, _ in table}):
        row = {o: n for (t, o), n in table.items() if t == target}
        lines.append(f"{target:15s} " + " ".join(f"{o}={n}" for o, n in sorted(row.items())))
    return "\n".join(lines)


@pytest.fixture(scope="module")
def fuzz_run():
    """One worker run for both tests: the fuzz cases, then the regressions."""
    pytest.importorskip("h5py")
    pytest.importorskip("lmdb")
    cases = int(os.environ.get("FUZZ_CASES", DEFAULT_CASES))
    seed = int(os.environ.get("FUZZ_SEED", 14))
    memory_mb = int(os.environ.get("FUZZ_MEMORY_MB", DEFAULT_MEMORY_MB))
    began = time.monotonic()
    results = run_fuzz(seed, cases, TARGETS + tuple(REGRESSIONS), memory_mb=memory_mb)
    print(f"\nfuzz: seed {seed}, {len(results)} cases in {time.monotonic() - began:.1f} s\n"
          + summary(results))
    return seed, cases, results


def test_fuzz_every_loader_ends_ok_or_in_a_caffe_error(fuzz_run):
    seed, cases, results = fuzz_run
    fuzzed = [r for r in results if r["target"] not in REGRESSIONS]
    assert len(fuzzed) >= cases * len(TARGETS)
    bad = failures(fuzzed)
    assert not bad, "\n\n".join(f"{r['target']} case {r['case']} (seed {seed}): "
                                f"{r['outcome']}: {r['error']}" for r in bad[:10])


def test_fuzz_regressions_end_in_caffe_errors_within_the_memory_bound(fuzz_run):
    """The reproducers of issue 14's failures, under the same RLIMIT_AS: each must be refused
    with a caffe error (not run OK, not run out of memory or past LOADER_PEAK_MB, not crash)."""
    results = [r for r in fuzz_run[2] if r["target"] in REGRESSIONS]
    outcomes = {r["target"]: (r["outcome"], r.get("peak_growth_mb"), r["error"])
                for r in results}
    assert set(outcomes) == set(REGRESSIONS), outcomes
    wrong = {name: o for name, o in outcomes.items() if o[0] != "caffe"}
    wrong.update({r["target"]: r["outcome"] for r in failures(results)})
    assert not wrong, wrong


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB)
    parser.add_argument("--log", help="append every case's result to this file (JSON lines)")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if args.worker:
        worker(args.seed, targets, args.start, args.cases, args.memory_mb)
        return
    began = time.monotonic()
    log = open(args.log, "a") if args.log else None  # noqa: SIM115 - closed below
    echo = (lambda record: print(json.dumps(record), file=log, flush=True)) if log else None
    try:
        results = run_fuzz(args.seed, args.cases, targets, args.memory_mb, echo)
    finally:
        if log:
            log.close()
    print(summary(results))
    bad = failures(results)
    for r in bad:
        print(f"FAIL {r['target']} case {r['case']}: {r['outcome']}: {r['error']}")
    print(f"{len(results)} cases, {len(bad)} failures, {time.monotonic() - began:.1f} s")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
