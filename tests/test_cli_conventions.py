"""The ``caffe`` command's conventions: ``python -m caffe``, ``--version``, suggestions for
mistyped commands and flags, per-command ``-help`` on stdout, one line per error, and glog's
command-line flags and environment variables (``-log_dir`` and glog's file names)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

import caffe
from caffe.log import _user_name
from caffe.tools import cli
from caffe.tools.parse_log import parse_lines

from solver_case import TINY_NET as NET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] (.*)$", re.M)



def caffe_module(*args, cwd, env_extra=None):
    """``python -m caffe ARGS`` with no GLOG_* variables but ``env_extra``'s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLOG_")}
    env.update(PYTHONPATH=REPO, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "caffe", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def work(tmp_path, monkeypatch):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(
        "net: 'net.prototxt' base_lr: 0.1 lr_policy: 'fixed' display: 1 max_iter: 2")
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("GLOG_")]:
        monkeypatch.delenv(name)
    return tmp_path


def test_python_dash_m_caffe_and_version(tmp_path):
    proc = caffe_module("--version", cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0, f"caffe version {caffe.__version__}\n", "")
    proc = caffe_module("device_query", cwd=tmp_path)
    assert proc.returncode == 0 and "No device given" in proc.stderr


def test_mistyped_command_is_named_with_a_suggestion(work, capsys):
    assert cli.main(["trian"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("Unknown action: trian") == 1
    assert "did you mean 'train'?" in err
    assert re.search(r"^  train +train or finetune a model$", err, re.M)  # the command list


@pytest.mark.parametrize("argv, hint", [
    (["train", "-solvr", "solver.prototxt"], "did you mean -solver?"),
    (["train", "--wieghts=a.caffemodel"], "did you mean -weights?"),
    (["test", "-iteration", "3"], "did you mean -iterations?"),
    (["train", "-logdir", "x"], "did you mean -log_dir?"),
])
def test_unknown_flag_suggests_the_closest(work, capsys, argv, hint):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    bad = re.search(r"-+(\w+)", argv[1])[1]
    assert err == f"caffe {argv[0]}: error: unknown command line flag '{bad}' ({hint})\n"


@pytest.mark.parametrize("command, own, others", [
    ("train", ["-solver", "-snapshot", "-weights", "-gpu", "-sigint_effect", "-sighup_effect"],
     ["-model", "-iterations", "-phase"]),
    ("test", ["-model", "-weights", "-iterations", "-gpu"], ["-solver", "-snapshot",
                                                             "-sigint_effect"]),
    ("time", ["-model", "-iterations", "-phase"], ["-solver", "-weights", "-snapshot"]),
    ("device_query", ["-gpu"], ["-solver", "-model", "-iterations"]),
])
@pytest.mark.parametrize("spelling", ["--help", "-help"])
def test_each_commands_help_shows_its_own_flags_on_stdout(work, capsys, command, own, others,
                                                          spelling):
    assert cli.main([command, spelling]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    listed = re.findall(r"^  (-\w+) \(", out, re.M)
    assert set(own) <= set(listed) and not set(others) & set(listed)
    assert "-log_dir" in listed  # glog's flags work with every command


def test_standalone_tool_help_exits_zero(work, capsys):
    for tool in ("extract_features", "upgrade_net_proto_text", "convert_imageset"):
        assert cli.run(tool, ["--help"], prog=tool) == 0
        out, err = capsys.readouterr()
        assert out and err == ""


def test_an_error_is_printed_once_without_a_source_location(work, capsys):
    assert cli.main(["train"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "caffe train: error: Need a solver definition to train (-solver " \
                  "solver.prototxt).\n"
    # a standalone tool names itself
    assert cli.run("compute_image_mean", ["absent_db"], prog="compute_image_mean") == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and err.startswith("compute_image_mean: error: ")
    assert "cli.py" not in err


def test_error_in_a_subprocess_is_one_line(work):
    proc = caffe_module("train", "-solver", "missing.prototxt", cwd=work)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "missing.prototxt" in line]
    assert len(errors) == 1 and errors[0].startswith("caffe train: error: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_flag_of_another_command_is_accepted_with_a_warning(work, capsys):
    assert cli.main(["device_query", "-model", "net.prototxt"]) == 0
    assert "-model is not used by caffe device_query; ignored" in capsys.readouterr().err


# --- glog's knobs ---------------------------------------------------------------------------
def log_files(log_dir, program="caffe"):
    host, user = re.escape(socket.gethostname()), re.escape(_user_name())
    pattern = re.compile(rf"{program}\.{host}\.{user}\.log\.(INFO|WARNING|ERROR|FATAL)\."
                         rf"\d{{8}}-\d{{6}}\.\d+")
    names = sorted(os.listdir(log_dir))
    files = {pattern.fullmatch(n)[1]: n for n in names if pattern.fullmatch(n)}
    links = {n.split(".")[-1]: os.readlink(os.path.join(log_dir, n))
             for n in names if os.path.islink(os.path.join(log_dir, n))}
    return files, links


def test_log_dir_flag_writes_glogs_files_and_stderr_keeps_everything(work, capsys):
    assert cli.main(["train", "-solver", "solver.prototxt", "-log_dir", "logs"]) == 0
    err = capsys.readouterr().err
    files, links = log_files(work / "logs")
    assert set(files) == {"INFO"} and links == {"INFO": files["INFO"]}
    text = (work / "logs" / files["INFO"]).read_text()
    assert text.startswith("Log file created at: ")
    # Caffe's tools set alsologtostderr: stderr has every record the file has
    assert GLOG_LINE.findall(text) == GLOG_LINE.findall(err)
    assert "Optimization Done." in GLOG_LINE.findall(text)
    # Caffe's log parser reads glog's file, header lines and all
    train_rows, _ = parse_lines(text.splitlines(keepends=True), 2024)
    assert [row["NumIters"] for row in train_rows] == [0, 1]


def test_log_dir_from_the_environment_and_errors_in_the_files(work, capsys, monkeypatch):
    monkeypatch.setenv("GLOG_log_dir", str(work / "envlogs"))
    assert cli.main(["train", "-solver", "missing.prototxt"]) == 1
    err = capsys.readouterr().err
    assert err.count("missing.prototxt") == 1  # the error, once on stderr ...
    files, links = log_files(work / "envlogs")
    assert set(files) == {"INFO", "WARNING", "ERROR"} == set(links)
    error_text = (work / "envlogs" / files["ERROR"]).read_text()
    # ... and in the ERROR file (and the lower ones) as glog would record it
    (message,) = GLOG_LINE.findall(error_text)
    assert message.startswith("solver prototxt file not found: 'missing.prototxt'")


def test_logtostderr_writes_no_files(work, capsys, monkeypatch):
    monkeypatch.setenv("GLOG_logtostderr", "1")
    assert cli.main(["train", "-solver", "solver.prototxt", "-log_dir", "logs"]) == 0
    assert not (work / "logs").exists()
    assert "Optimization Done." in GLOG_LINE.findall(capsys.readouterr().err)


@pytest.mark.parametrize("how", ["env", "flag"])
def test_minloglevel_2_silences_info_and_warning(work, capsys, monkeypatch, how):
    argv = ["device_query", "-model", "x"]  # logs INFO and a WARNING
    if how == "env":
        monkeypatch.setenv("GLOG_minloglevel", "2")
    else:
        argv += ["-minloglevel", "2"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("GLOG_minloglevel", raising=False)
    assert cli.main(["device_query", "-model", "x", "-minloglevel=1"]) == 0
    err = capsys.readouterr().err
    assert [line[0] for line in err.splitlines()] == ["W"]


def test_alsologtostderr_off_keeps_only_errors_on_stderr(work, capsys):
    assert cli.main(["train", "-solver", "solver.prototxt", "-log_dir", "logs",
                     "-noalsologtostderr"]) == 0
    assert capsys.readouterr().err == ""
    files, _ = log_files(work / "logs")
    assert "Optimization Done." in (work / "logs" / files["INFO"]).read_text()
