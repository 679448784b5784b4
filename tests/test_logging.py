"""Logging as pycaffe and glog do it: glog lines on stderr from ``import caffe`` on, the
``GLOG_*`` knobs, ``caffe.init_log`` / ``caffe.log`` / ``Timer.ms``, glog's log files, Caffe
1.0's iteration line (read back by parse_log), and the terminal-only progress line."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import caffe
from caffe.log import GlogFormatter, _user_name
from caffe.tools.parse_log import parse_lines

from solver_case import TINY_NET as NET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOG = re.compile(r"^(?P<severity>[IWEF])\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ "
                  r"(?P<file>[\w.<>]+):(?P<line>\d+)\] (?P<msg>.*)$")
ITERATION = re.compile(r"Iteration (\d+) \((\S+) iter/s, (\S+)s/(\d+) iters\), loss = (\S+)")



def glog_lines(text: str) -> list[re.Match]:
    return [m for m in map(GLOG.match, text.splitlines()) if m]


def run_script(tmp_path, source: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``source`` as ``script.py`` in a fresh interpreter with no GLOG_* variables set."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLOG_")}
    env.update(PYTHONPATH=REPO, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def write_solver(tmp_path, extra: str = "") -> str:
    (tmp_path / "net.prototxt").write_text(NET)
    path = tmp_path / "solver.prototxt"
    path.write_text("net: 'net.prototxt' base_lr: 0.1 lr_policy: 'fixed' display: 2 "
                    "max_iter: 6 random_seed: 1 " + extra)
    return str(path)


# --- pycaffe names --------------------------------------------------------------------------
def test_timer_ms_is_pycaffes_milliseconds_property():
    timer = caffe.Timer()
    timer.start()
    time.sleep(0.03)
    elapsed = timer.ms  # reading a running timer stops it, as Caffe's MilliSeconds()
    assert not timer.running and 25 <= elapsed < 1000
    time.sleep(0.01)
    assert timer.ms == elapsed == timer.milliseconds()
    with pytest.raises(AttributeError):
        timer.ms = 1.0  # a read-only property, as pycaffe's add_property("ms", ...)


def test_caffe_log_and_init_log_exist_as_in_pycaffe():
    assert callable(caffe.log) and callable(caffe.init_log)
    assert "log" in caffe.__all__ and "init_log" in caffe.__all__
    # caffe.log is also the module: its helpers stay reachable
    assert callable(caffe.log.use_python_logging)


# --- the default: glog lines on stderr, as pycaffe --------------------------------------------
def test_import_caffe_prints_glog_lines_and_the_solvers_iteration_lines(tmp_path):
    solver_file = write_solver(tmp_path)
    proc = run_script(tmp_path, f"""
        import caffe
        caffe.log("hello from a script")
        solver = caffe.SGDSolver({solver_file!r})
        solver.step(3)
        """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = glog_lines(proc.stderr)
    hello = [m for m in lines if m["msg"] == "hello from a script"]
    # LOG(INFO) at the caller's line
    assert len(hello) == 1 and hello[0]["severity"] == "I"
    assert (hello[0]["file"], hello[0]["line"]) == ("script.py", "3")
    shown = [ITERATION.fullmatch(m["msg"]) for m in lines]
    assert [m.group(1) for m in shown if m] == ["0", "2"]
    assert "Iteration 0, lr = 0.1" in [m["msg"] for m in lines]


@pytest.mark.parametrize("minloglevel, shown", [("0", "IWE"), ("1", "WE"), ("2", "E"),
                                                ("3", "")])
def test_glog_minloglevel_drops_lower_severities(tmp_path, minloglevel, shown):
    proc = run_script(tmp_path, """
        import logging
        import caffe
        caffe.log("info")
        logging.getLogger("caffe").warning("warning")
        logging.getLogger("caffe").error("error")
        """, {"GLOG_minloglevel": minloglevel})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "".join(m["severity"] for m in glog_lines(proc.stderr)) == shown
    assert proc.stderr.count("\n") == len(shown)  # nothing else on stderr


def test_a_python_logging_configuration_takes_over(tmp_path):
    """Once the user configures logging, caffe's records go there and not (also) to stderr."""
    proc = run_script(tmp_path, """
        import logging, sys
        import caffe
        logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
        caffe.log("through python logging")
        """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "INFO caffe: through python logging\n"
    assert proc.stderr == ""


def test_use_python_logging_removes_caffes_handlers(tmp_path):
    proc = run_script(tmp_path, """
        import logging
        import caffe
        caffe.init_log(0, True)
        caffe.log.use_python_logging()
        caffe.log("dropped: no handler, and Python's last resort shows WARNING and above")
        logging.getLogger("caffe").warning("plain warning")
        """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "plain warning\n"


def test_caplog_sees_caffes_records_and_stderr_stays_quiet(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="caffe"):
        caffe.log("captured")
    assert [r.getMessage() for r in caplog.records] == ["captured"]
    assert capsys.readouterr().err == ""


# --- caffe.init_log and glog's files ----------------------------------------------------------
def test_init_log_with_a_level_and_stderr(tmp_path):
    proc = run_script(tmp_path, """
        import logging
        import caffe
        caffe.init_log(1, True)   # InitLogLevelPipe(level, stderr)
        caffe.log("info is below minloglevel 1")
        logging.getLogger("caffe").warning("shown")
        """, {"GLOG_log_dir": str(tmp_path / "logs")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [(m["severity"], m["msg"]) for m in glog_lines(proc.stderr)] == [("W", "shown")]
    # logtostderr: no files even with a log directory
    assert not (tmp_path / "logs").exists()


def test_init_log_writes_glogs_files_in_glog_log_dir(tmp_path):
    logs = tmp_path / "logs"
    proc = run_script(tmp_path, """
        import logging, os
        import caffe
        caffe.init_log()
        print(os.getpid())
        caffe.log("info line")
        logging.getLogger("caffe").warning("warning line")
        logging.getLogger("caffe").error("error line")
        """, {"GLOG_log_dir": str(logs)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    pid = int(proc.stdout)
    # with files and without alsologtostderr, stderr gets ERROR and above (stderrthreshold 2)
    assert [m["msg"] for m in glog_lines(proc.stderr)] == ["error line"]
    host, user = re.escape(socket.gethostname()), re.escape(_user_name())
    contents = {}
    for severity, messages in (("INFO", ["info line", "warning line", "error line"]),
                               ("WARNING", ["warning line", "error line"]),
                               ("ERROR", ["error line"])):
        link = logs / f"script.py.{severity}"
        assert link.is_symlink()
        name = os.readlink(link)
        assert re.fullmatch(rf"script\.py\.{host}\.{user}\.log\.{severity}\.\d{{8}}-\d{{6}}\.{pid}",
                            name), name
        text = (logs / name).read_text()
        header = text.splitlines()[:3]
        assert re.fullmatch(r"Log file created at: \d{4}/\d\d/\d\d \d\d:\d\d:\d\d", header[0])
        assert header[1] == f"Running on machine: {socket.gethostname()}"
        assert header[2] == "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg"
        contents[severity] = [m["msg"] for m in glog_lines(text)]
        assert contents[severity] == messages
    assert not (logs / "script.py.FATAL").exists()


def test_glog_file_handler_opens_files_lazily(tmp_path):
    handler = caffe.log.GlogFileHandler(tmp_path, "prog")
    record = logging.LogRecord("caffe", logging.INFO, "x.py", 1, "m", (), None)
    handler.handle(record)
    handler.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_symlink()) == ["prog.INFO"]


# --- Caffe 1.0's iteration line ---------------------------------------------------------------
class FixedTimer:
    """Stands in for the solver's iteration timer: each reading is ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds_value = seconds
        self.starts = 0

    def start(self) -> None:
        self.starts += 1

    def seconds(self) -> float:
        return self.seconds_value


def collect(logger_name: str = "caffe"):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(GlogFormatter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return stream


def test_iteration_line_has_caffe_1_0s_speed_and_time(tmp_path):
    solver = caffe.get_solver(write_solver(tmp_path))
    solver.iteration_timer = FixedTimer(0.5)
    stream = collect()
    solver.step(5)
    msgs = [m["msg"] for m in glog_lines(stream.getvalue())]
    shown = [msg for msg in msgs if ITERATION.fullmatch(msg)]
    loss = [float(ITERATION.fullmatch(msg).group(5)) for msg in shown]
    # iterations since the previous display over its seconds; none counted at iteration 0
    assert shown == [f"Iteration 0 (0 iter/s, 0.5s/2 iters), loss = {loss[0]:g}",
                     f"Iteration 2 (4 iter/s, 0.5s/2 iters), loss = {loss[1]:g}",
                     f"Iteration 4 (4 iter/s, 0.5s/2 iters), loss = {loss[2]:g}"]
    # the timer restarts at each display (and once when step begins)
    assert solver.iteration_timer.starts == 1 + 3


def test_iteration_line_when_no_time_was_measured(tmp_path):
    """Caffe divides by 1 when the lapse reads 0 (its CPU timer counts whole milliseconds)."""
    solver = caffe.get_solver(write_solver(tmp_path))
    solver.iteration_timer = FixedTimer(0.0)
    stream = collect()
    solver.step(3)
    shown = [ITERATION.fullmatch(m["msg"]) for m in glog_lines(stream.getvalue())]
    assert [(m.group(1), m.group(2), m.group(3)) for m in shown if m] == [("0", "0", "0"),
                                                                         ("2", "2", "0")]


def test_iteration_speed_is_measured_across_step_calls(tmp_path):
    """pycaffe scripts call ``solver.step(1)`` in a loop: the speed still covers the iterations
    since the previous display (the timer keeps running from it)."""
    solver = caffe.get_solver(write_solver(tmp_path))
    stream = collect()
    for _ in range(3):
        solver.step(1)
        time.sleep(0.02)
    shown = [ITERATION.fullmatch(m["msg"]) for m in glog_lines(stream.getvalue())]
    (_, first), (it, second) = [(int(m.group(1)), m) for m in shown if m]
    assert it == 2
    rate, lapse = float(second.group(2)), float(second.group(3))
    # two sleeps of 20 ms since the display at iteration 0
    assert lapse >= 0.04
    # both printed with 6 significant digits (relative rounding <= 5e-6 each), computed in
    # float32 (~6e-8): their ratio is 2 iterations to within 2e-5
    assert rate * lapse == pytest.approx(2, rel=2e-5)


def test_parse_log_reads_caffepys_1_0_format_log(tmp_path, monkeypatch):
    # snapshot_after_train with no snapshot_prefix writes "_iter_6.*" to the working directory,
    # as Caffe does: keep it in tmp_path
    monkeypatch.chdir(tmp_path)
    solver = caffe.get_solver(write_solver(tmp_path, "test_iter: 1 test_interval: 4 "
                                                     "test_initialization: false"))
    stream = collect()
    solver.solve()
    text = stream.getvalue()
    assert ITERATION.search(text)
    train, test = parse_lines(text.splitlines(keepends=True), 2024)
    # rows come from the "Train net output" lines of the displays at 0, 2, 4 (Solve's closing
    # "Iteration 6, loss = X" line has none, as in Caffe)
    assert [row["NumIters"] for row in train] == [0, 2, 4]
    assert all(row["LearningRate"] == pytest.approx(0.1) for row in train)
    losses = [float(ITERATION.search(line).group(5)) for line in text.splitlines()
              if ITERATION.search(line)]
    # average_loss 1: the iteration line shows the same float32 loss as the output line
    assert [row["loss"] for row in train] == losses
    assert [row["NumIters"] for row in test] == [4]
    assert np.isfinite([row["Seconds"] for row in train]).all()


# --- the progress line: a terminal only -------------------------------------------------------
def train_cmd(work, *args, stderr):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLOG_")}
    env.update(PYTHONPATH=REPO, OMP_NUM_THREADS="1", TERM="xterm")
    return subprocess.Popen([sys.executable, "-m", "caffe", "train", "-solver", "solver.prototxt",
                             *args], cwd=work, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=stderr)


def read_pty(master: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode()


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_line_on_a_terminal_only_never_in_pipes_or_log_files(tmp_path):
    import pty

    write_solver(tmp_path)
    master, slave = pty.openpty()
    proc = train_cmd(tmp_path, "-log_dir", "logs", stderr=slave)
    os.close(slave)
    terminal = read_pty(master)
    os.close(master)
    assert proc.wait(timeout=120) == 0, terminal[-2000:]
    progress = re.findall(r"\r\[(\d+)/6 \d+%\] elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d, "
                          r"(\S+) iter/s\x1b\[K", terminal)
    assert [int(i) for i, _ in progress] == [1, 2, 3, 4, 5, 6]
    assert all(float(rate) > 0 for _, rate in progress)
    assert ITERATION.search(terminal)
    # the log file has the same records, without the progress line
    log_text = (tmp_path / "logs" / "caffe.INFO").read_text()
    assert ITERATION.search(log_text) and "Optimization Done." in log_text
    assert "ETA" not in log_text and "\r" not in log_text and "\x1b" not in log_text

    piped = train_cmd(tmp_path, stderr=subprocess.PIPE)
    _, err = piped.communicate(timeout=120)
    assert piped.returncode == 0, err[-2000:]
    err = err.decode()
    assert ITERATION.search(err)
    assert "ETA" not in err and "\r" not in err and "\x1b" not in err
