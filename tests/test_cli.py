"""The ``caffe`` command: train -> snapshot -> resume -> test -> time end to end in subprocesses,
their glog output read back by a parser of Caffe's log format, signal effects, the progress line,
and the errors users meet."""

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from caffe.tools import cli
from caffe.tools.parse_log import parse_lines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NET = """
name: 'tiny'
layer { name: 'data' type: 'DummyData' top: 'data' top: 'label'
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
    data_filler { type: 'gaussian' std: 1 } data_filler { type: 'constant' value: 1 } } }
layer { name: 'ip1' type: 'InnerProduct' bottom: 'data' top: 'ip1'
  inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'relu' type: 'ReLU' bottom: 'ip1' top: 'ip1' }
layer { name: 'ip2' type: 'InnerProduct' bottom: 'ip1' top: 'ip2'
  inner_product_param { num_output: 2 weight_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip2' bottom: 'label' top: 'loss' }
layer { name: 'acc' type: 'Accuracy' bottom: 'ip2' bottom: 'label' top: 'acc'
  include { phase: TEST } }
"""

SOLVER = """
net: "{net}"
test_iter: 2 test_interval: 3
base_lr: 0.2 momentum: 0.9 lr_policy: "step" gamma: 0.5 stepsize: 3
display: 1 max_iter: 6 snapshot: 3 snapshot_prefix: "{prefix}"
random_seed: 1 solver_mode: CPU
"""

# glog: I1122 00:19:10.123456 12345 solver.py:42] message
GLOG = re.compile(r"^(?P<severity>[IWEF])(?P<month>\d\d)(?P<day>\d\d) "
                  r"(?P<time>\d\d:\d\d:\d\d\.\d{6}) +(?P<pid>\d+) (?P<file>[\w.]+):(?P<line>\d+)\] "
                  r"(?P<msg>.*)$")
FLOAT = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf)"
NUM = rf"({FLOAT})"
# Step's display line is Caffe 1.0's "Iteration N (R iter/s, Ts/D iters), loss = X"; Solve's
# closing line after the last update is "Iteration N, loss = X".
LOSS_LINE = rf"Iteration (\d+)(?: \({FLOAT} iter/s, {FLOAT}s/\d+ iters\))?, loss = {NUM}"


def messages(log: str) -> list[str]:
    """The messages of the glog lines of ``log`` (continuation lines are skipped)."""
    return [m["msg"] for m in map(GLOG.match, log.splitlines()) if m]


def values(msgs: list[str], pattern: str) -> list[tuple]:
    regex = re.compile(pattern)
    return [m.groups() for m in map(regex.fullmatch, msgs) if m]


def caffe_cmd(*args, cwd, env_extra=None, timeout=120):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO] + ([env_extra] if env_extra else []))
    # tiny nets: one thread avoids torch's thread pool spinning on a busy machine
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", "caffe.tools.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "snaps").mkdir()
    (tmp_path / "solver.prototxt").write_text(
        SOLVER.format(net="net.prototxt", prefix="snaps/tiny"))
    return tmp_path


@pytest.fixture
def in_process():
    """Run ``caffe`` in this process (conftest.py restores the logger the CLI reconfigures)."""
    return lambda *argv: cli.main(list(argv))


def test_train_snapshot_resume_test_time_end_to_end(workdir):
    # --- train ---
    proc = caffe_cmd("train", "-solver", "solver.prototxt", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    msgs = messages(proc.stderr)
    assert "Use CPU." in msgs and "Solving tiny" in msgs
    assert "Learning Rate Policy: step" in msgs
    losses = {int(i): float(v) for i, v in values(msgs, LOSS_LINE)}
    assert sorted(losses) == [0, 1, 2, 3, 4, 5, 6]
    assert losses[6] < losses[0]
    lrs = {int(i): float(v) for i, v in values(msgs, rf"Iteration (\d+), lr = {NUM}")}
    assert lrs == {0: 0.2, 1: 0.2, 2: 0.2, 3: 0.1, 4: 0.1, 5: 0.1}
    train_out = values(msgs, rf"    Train net output #0: loss = {NUM} \(\* 1 = {NUM} loss\)")
    assert len(train_out) == 6 and all(a == b for a, b in train_out)
    assert values(msgs, r"Iteration (\d+), Testing net \(#0\)") == [("0",), ("3",), ("6",)]
    assert len(values(msgs, rf"    Test net output #0: loss = {NUM} \(\* 1 = {NUM} loss\)")) == 3
    assert len(values(msgs, rf"    Test net output #1: acc = {NUM}")) == 3
    for it in (3, 6):
        assert f"Snapshotting to binary proto file snaps/tiny_iter_{it}.caffemodel" in msgs
        assert (f"Snapshotting solver state to binary proto file "
                f"snaps/tiny_iter_{it}.solverstate") in msgs
    assert msgs.count("Optimization Done.") == 2  # Solve's and the tool's, as Caffe
    assert sorted(os.listdir(workdir / "snaps")) == [
        "tiny_iter_3.caffemodel", "tiny_iter_3.solverstate",
        "tiny_iter_6.caffemodel", "tiny_iter_6.solverstate"]
    # Caffe's own log parser reads the log
    train_rows, test_rows = parse_lines(proc.stderr.splitlines(keepends=True), 2024)
    assert [row["NumIters"] for row in train_rows][:6] == [0, 1, 2, 3, 4, 5]
    assert [row["NumIters"] for row in test_rows] == [0, 3, 6]
    assert train_rows[4]["LearningRate"] == pytest.approx(0.1)

    # --- resume from iteration 3 (gflags' --flag=value form) ---
    first_weights = (workdir / "snaps" / "tiny_iter_6.caffemodel").read_bytes()
    proc = caffe_cmd("train", "--solver=solver.prototxt",
                     "--snapshot=snaps/tiny_iter_3.solverstate", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    msgs = messages(proc.stderr)
    assert "Resuming from snaps/tiny_iter_3.solverstate" in msgs
    resumed = sorted(int(i) for i, _ in values(msgs, LOSS_LINE))
    assert resumed == [3, 4, 5, 6]
    assert values(msgs, rf"Iteration 3, lr = {NUM}") == [("0.1",)]
    assert (workdir / "snaps" / "tiny_iter_6.caffemodel").read_bytes() != first_weights

    # --- test ---
    proc = caffe_cmd("test", "-model", "net.prototxt", "-weights",
                     "snaps/tiny_iter_6.caffemodel", "-iterations", "3", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    msgs = messages(proc.stderr)
    assert "Running for 3 iterations." in msgs
    batch_loss = [float(v) for (v,) in values(msgs, rf"Batch \d, loss = {NUM}")]
    batch_acc = [float(v) for (v,) in values(msgs, rf"Batch \d, acc = {NUM}")]
    assert len(batch_loss) == len(batch_acc) == 3
    (mean_loss, weighted), = values(msgs, rf"loss = {NUM} \(\* 1 = {NUM} loss\)")
    assert float(mean_loss) == pytest.approx(np.mean(batch_loss), rel=1e-4)
    assert float(values(msgs, rf"acc = {NUM}")[0][0]) == pytest.approx(np.mean(batch_acc))
    assert float(values(msgs, rf"Loss: {NUM}")[0][0]) == pytest.approx(float(mean_loss),
                                                                        rel=1e-4)

    # --- time ---
    proc = caffe_cmd("time", "-model", "net.prototxt", "-iterations", "2", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    msgs = messages(proc.stderr)
    assert len(values(msgs, rf"Iteration: \d forward-backward time: {NUM} ms\.")) == 2
    per_layer = values(msgs, rf" *(\w+)\t(forward|backward): {NUM} ms\.")
    assert [name for name, kind, _ in per_layer if kind == "forward"] == [
        "data", "ip1", "relu", "ip2", "loss"]
    for label in ("Average Forward pass", "Average Backward pass", "Average Forward-Backward",
                  "Total Time"):
        assert len(values(msgs, rf"{label}: {NUM} ms\.")) == 1
    assert msgs[-1] == "*** Benchmark ends ***"


SIGNAL_LAYER = """
import os
import signal

import caffe


class SendSignals(caffe.Layer):
    '''Sends this process the signals param_str lists ("3:INT,5:HUP") at those forwards.'''

    def setup(self, bottom, top):
        self.plan = {int(k): getattr(signal, "SIG" + v)
                     for k, v in (item.split(":") for item in self.param_str.split(","))}
        self.count = 0

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.count += 1
        if self.count in self.plan:
            os.kill(os.getpid(), self.plan[self.count])

    def backward(self, top, propagate_down, bottom):
        pass
"""


def signal_workdir(tmp_path, plan):
    net = NET + f"""
    layer {{ name: 'signals' type: 'Python' top: 'sig' include {{ phase: TRAIN }}
            python_param {{ module: 'signal_layer' layer: 'SendSignals' param_str: '{plan}' }} }}
    """
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "signal_layer.py").write_text(SIGNAL_LAYER)
    (tmp_path / "solver.prototxt").write_text(
        "net: 'net.prototxt' base_lr: 0.1 lr_policy: 'fixed' max_iter: 6 display: 1 "
        "snapshot_prefix: 'sig'")
    return tmp_path


def test_signal_effects_snapshot_then_stop(tmp_path):
    """SIGINT with -sigint_effect snapshot: snapshot and go on; SIGHUP with -sighup_effect stop:
    stop, and the final snapshot is still written; the process exits cleanly."""
    work = signal_workdir(tmp_path, "2:INT,4:HUP")
    proc = caffe_cmd("train", "-solver", "solver.prototxt", "-sigint_effect", "snapshot",
                     "-sighup_effect=stop", cwd=work, env_extra=str(work))
    assert proc.returncode == 0, proc.stderr[-3000:]
    msgs = messages(proc.stderr)
    # the SIGINT arrived during iteration 1; Caffe acts on it once that iteration is done
    assert "Snapshotting to binary proto file sig_iter_2.caffemodel" in msgs
    assert "Optimization stopped early." in msgs
    assert max(int(i) for (i,) in values(msgs, r"Iteration (\d+), lr = \S+")) == 3
    assert sorted(p.name for p in work.glob("sig_iter_*")) == [
        "sig_iter_2.caffemodel", "sig_iter_2.solverstate",
        "sig_iter_4.caffemodel", "sig_iter_4.solverstate"]
    assert msgs[-1] == "Optimization Done."  # the tool's closing line, as Caffe


def test_finetune_from_weights_and_progress_on_a_terminal(workdir, in_process, monkeypatch,
                                                          capsys):
    monkeypatch.chdir(workdir)
    assert in_process("train", "-solver", "solver.prototxt") == 0
    os.rename("snaps/tiny_iter_6.caffemodel", "trained.caffemodel")
    for name in os.listdir("snaps"):
        os.remove(os.path.join("snaps", name))
    capsys.readouterr()

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert in_process("train", "-solver", "solver.prototxt", "-weights",
                      "trained.caffemodel,trained.caffemodel") == 0
    text = terminal.getvalue()
    msgs = messages(text.replace("\r\x1b[K", "\n"))
    assert msgs.count("Finetuning from trained.caffemodel") == 2
    assert re.search(r"\r\[3/6 50%\] elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d", text)
    # the progress line is wiped before a log record is written
    assert "\r\x1b[KI" in text
    # the finetuned net starts where the first run ended
    losses = dict(values(msgs, LOSS_LINE))
    assert float(losses["0"]) < 0.5


@pytest.mark.parametrize("argv, message", [
    (["train"], r"Need a solver definition to train"),
    (["train", "-solver", "missing.prototxt"], r"solver prototxt file not found: 'missing"),
    (["train", "-solver", "solver.prototxt", "-snapshot", "a.solverstate", "-weights", "b"],
     r"Give a snapshot to resume training or weights to finetune but not both"),
    (["train", "-solver", "solver.prototxt", "-sigint_effect", "explode"],
     r'Invalid signal effect "explode" was specified'),
    (["train", "-solver", "solver.prototxt", "-bogus", "1"], r"unknown command line flag 'bogus'"),
    (["train", "-solver", "solver.prototxt", "-level", "x"], r"flag '-level' expects a int"),
    (["train", "-solver", "bad_type.prototxt"], r"Unknown solver type: 'Adamax'"),
    (["train", "-solver", "bad_policy.prototxt"], r"Unknown learning rate policy: 'cosine'"),
    (["train", "-solver", "missing_net.prototxt"], r"net prototxt file not found: 'nonet"),
    (["train", "-solver", "solver.prototxt", "-snapshot", "nope.solverstate"],
     r"solver state file not found: 'nope.solverstate'"),
    (["train", "-solver", "other.prototxt", "-snapshot", "snaps/tiny_iter_3.solverstate"],
     r"history blob 0 \(layer 'ip1', param 0\) has shape \[3, 3\] but the net's parameter "
     r"has shape \[7, 3\]"),
    (["test", "-model", "net.prototxt"], r"Need model weights to score"),
    (["test", "-weights", "w.caffemodel"], r"Need a model definition to score"),
    (["test", "-model", "net.prototxt", "-weights", "snaps/tiny_iter_3.caffemodel",
      "-phase", "VAL"], r'phase must be "TRAIN" or "TEST"'),
    (["time"], r"Need a model definition to time"),
    (["time", "-model", "net.prototxt", "-iterations", "0"], r"-iterations must be at least 1"),
])
def test_cli_errors(workdir, in_process, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(workdir)
    base = (workdir / "solver.prototxt").read_text()
    (workdir / "bad_type.prototxt").write_text(base + "type: 'Adamax'")
    (workdir / "bad_policy.prototxt").write_text(base.replace('"step"', '"cosine"'))
    (workdir / "missing_net.prototxt").write_text(base.replace("net.prototxt", "nonet.prototxt"))
    (workdir / "other_net.prototxt").write_text(NET.replace("num_output: 3", "num_output: 7"))
    (workdir / "other.prototxt").write_text(base.replace("net.prototxt", "other_net.prototxt"))
    if "snaps/tiny_iter_3" in " ".join(argv):
        (workdir / "short.prototxt").write_text(base.replace("max_iter: 6", "max_iter: 3"))
        assert in_process("train", "-solver", "short.prototxt") == 0
    capsys.readouterr()
    assert in_process(*argv) == 1
    err = capsys.readouterr().err
    assert re.search(rf"caffe {argv[0]}: error: .*{message}", err), err[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
@pytest.mark.parametrize("command", ["train", "test", "time", "device_query"])
def test_gpu_flag_without_cuda_is_a_clear_error(workdir, in_process, monkeypatch, capsys,
                                                command):
    monkeypatch.chdir(workdir)
    argv = {"train": ["-solver", "solver.prototxt"],
            "test": ["-model", "net.prototxt", "-weights", "x.caffemodel"],
            "time": ["-model", "net.prototxt"], "device_query": []}[command]
    assert in_process(command, *argv, "-gpu", "0") == 1
    assert re.search(r"-gpu 0: no CUDA device is available", capsys.readouterr().err)


def test_solver_mode_gpu_without_cuda_falls_back_to_cpu(workdir, in_process, monkeypatch,
                                                        capsys):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only fallback")
    monkeypatch.chdir(workdir)
    text = (workdir / "solver.prototxt").read_text().replace("solver_mode: CPU",
                                                             "solver_mode: GPU")
    (workdir / "solver.prototxt").write_text(text.replace("max_iter: 6", "max_iter: 1"))
    assert in_process("train", "-solver", "solver.prototxt") == 0
    err = capsys.readouterr().err
    assert "no CUDA device is available; training on the CPU" in err


def test_usage_lists_the_brew_commands(in_process, capsys):
    assert in_process("--help") == 0
    out = capsys.readouterr().out
    for command in ("train", "test", "time", "device_query"):
        assert re.search(rf"^  {command} +\S", out, re.M), out
    assert "train or finetune a model" in out and "score a model" in out


def test_device_query_without_gpu_flag(in_process, capsys):
    assert in_process("device_query") == 0
    assert "No device given" in capsys.readouterr().err


def test_help_text_names_flags():
    from caffe.tools.train import brew_flags

    # each command's help lists the flags that command reads (Caffe's flag names), only those
    own = {"train": ("-solver", "-snapshot", "-weights", "-gpu", "-sigint_effect",
                     "-sighup_effect", "-level", "-stage"),
           "test": ("-model", "-weights", "-gpu", "-iterations", "-level", "-stage", "-phase"),
           "time": ("-model", "-gpu", "-iterations", "-level", "-stage", "-phase")}
    for command, flags in own.items():
        listed = re.findall(r"^  (-\w+) \(", brew_flags(command).help_text(), re.M)
        assert set(flags) <= set(listed)
        assert not {"-solver", "-model", "-snapshot", "-iterations"} - set(flags) & set(listed)
