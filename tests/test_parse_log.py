"""parse_log and plot_training_log on a hand-written C++ Caffe training log (every parsed value
checked), on caffepy's own glog lines, and on edge cases (new year, single test, nan)."""

# Real glog lines run past 100 columns; the log below keeps them as Caffe writes them.
# ruff: noqa: E501

from __future__ import annotations

import csv
import io
import logging
import math

import pytest

from caffe.errors import CaffeError
from caffe.tools import parse_log as parse_log_tool
from caffe.tools import plot_training_log
from caffe.tools.parse_log import extract_datetime_from_line, parse_lines, parse_log

# A LeNet run as C++ Caffe 1.0 logs it: test_interval 200, display 100, two train outputs
# (accuracy, loss), two test outputs. Timing starts at the "Solving LeNet" line (00:19:10.123456).
CAFFE_LOG = """\
I1122 00:19:05.000100 12345 caffe.cpp:218] Using GPUs 0
I1122 00:19:05.500000 12345 solver.cpp:44] Initializing solver from parameters:
test_iter: 100
test_interval: 200
base_lr: 0.01
I1122 00:19:06.000000 12345 net.cpp:51] Initializing net from parameters:
I1122 00:19:07.250000 12345 net.cpp:84] Creating Layer mnist
I1122 00:19:09.000000 12345 net.cpp:255] Network initialization done.
I1122 00:19:10.000000 12345 solver.cpp:56] Solver scaffolding done.
I1122 00:19:10.100000 12345 caffe.cpp:248] Starting Optimization
I1122 00:19:10.123456 12345 solver.cpp:272] Solving LeNet
I1122 00:19:10.123500 12345 solver.cpp:273] Learning Rate Policy: inv
I1122 00:19:10.200000 12345 solver.cpp:330] Iteration 0, Testing net (#0)
I1122 00:19:11.623456 12345 solver.cpp:397]     Test net output #0: accuracy = 0.1032
I1122 00:19:11.623500 12345 solver.cpp:397]     Test net output #1: loss = 2.30895 (* 1 = 2.30895 loss)
I1122 00:19:11.700000 12345 solver.cpp:218] Iteration 0 (-1.4013e-45 iter/s, 1.5s/100 iters), loss = 2.32
I1122 00:19:11.723456 12345 solver.cpp:237]     Train net output #0: accuracy = 0.12
I1122 00:19:11.723500 12345 solver.cpp:237]     Train net output #1: loss = 2.32 (* 1 = 2.32 loss)
I1122 00:19:11.800000 12345 sgd_solver.cpp:105] Iteration 0, lr = 0.01
W1122 00:19:12.000000 12345 some_warning.cpp:1] something unrelated
I1122 00:19:30.123456 12345 solver.cpp:218] Iteration 100 (5.2 iter/s, 18.4s/100 iters), loss = 0.5
I1122 00:19:30.223456 12345 solver.cpp:237]     Train net output #0: accuracy = 0.86
I1122 00:19:30.223500 12345 solver.cpp:237]     Train net output #1: loss = 0.5 (* 1 = 0.5 loss)
I1122 00:19:30.300000 12345 sgd_solver.cpp:105] Iteration 100, lr = 0.00992565
this line has no glog prefix: Iteration 150 is mentioned here
I1122 00:20:01.000000 12345 solver.cpp:330] Iteration 200, Testing net (#0)
I1122 00:20:02.623456 12345 solver.cpp:397]     Test net output #0: accuracy = 0.9712
I1122 00:20:02.623500 12345 solver.cpp:397]     Test net output #1: loss = 0.0912 (* 1 = 0.0912 loss)
I1122 00:20:02.700000 12345 solver.cpp:218] Iteration 200 (3.2 iter/s, 31.5s/100 iters), loss = 0.15
I1122 00:20:02.723456 12345 solver.cpp:237]     Train net output #0: accuracy = 0.97
I1122 00:20:02.723500 12345 solver.cpp:237]     Train net output #1: loss = 1.5e-01 (* 1 = 0.15 loss)
I1122 00:20:02.800000 12345 sgd_solver.cpp:105] Iteration 200, lr = 9.8543e-03
I1122 00:20:40.000000 12345 solver.cpp:447] Snapshotting to binary proto file lenet_iter_300.caffemodel
I1122 00:20:40.100000 12345 sgd_solver.cpp:273] Snapshotting solver state to binary proto file lenet_iter_300.solverstate
I1122 00:20:40.200000 12345 solver.cpp:310] Iteration 300, loss = 0.12
I1122 00:20:40.300000 12345 solver.cpp:330] Iteration 300, Testing net (#0)
I1122 00:20:41.500000 12345 solver.cpp:397]     Test net output #0: accuracy = 0.9801
I1122 00:20:41.500100 12345 solver.cpp:397]     Test net output #1: loss = 0.0634 (* 1 = 0.0634 loss)
I1122 00:20:41.600000 12345 solver.cpp:315] Optimization Done.
I1122 00:20:41.600100 12345 caffe.cpp:259] Optimization Done.
"""


def seconds(clock: str) -> float:
    """Seconds from the Solving line (00:19:10.123456) to ``mm:ss.micros`` past 00:00."""
    minutes, rest = clock.split(":")
    return int(minutes) * 60 + float(rest) - (19 * 60 + 10.123456)


@pytest.fixture
def caffe_log(tmp_path):
    path = tmp_path / "lenet.log"
    path.write_text(CAFFE_LOG)
    return path


def assert_rows(rows, expected):
    assert [list(r) for r in rows] == [list(e) for e in expected]
    for row, want in zip(rows, expected):
        for key, value in want.items():
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (key, row)


def test_parse_caffe_log_train_rows(caffe_log):
    train, _ = parse_log(caffe_log)
    assert_rows(train, [
        # The first row's lr (not printed yet: NaN) is the second row's.
        {"NumIters": 0.0, "Seconds": seconds("19:11.723456"), "LearningRate": 0.01,
         "accuracy": 0.12, "loss": 2.32},
        {"NumIters": 100.0, "Seconds": seconds("19:30.223456"), "LearningRate": 0.01,
         "accuracy": 0.86, "loss": 0.5},
        {"NumIters": 200.0, "Seconds": seconds("20:02.723456"), "LearningRate": 0.00992565,
         "accuracy": 0.97, "loss": 0.15},
    ])
    assert train[0]["Seconds"] == pytest.approx(1.6)
    assert train[2]["Seconds"] == pytest.approx(52.6)


def test_parse_caffe_log_test_rows(caffe_log):
    _, test = parse_log(caffe_log)
    assert_rows(test, [
        {"NumIters": 0.0, "Seconds": seconds("19:11.623456"), "LearningRate": 0.00992565,
         "accuracy": 0.1032, "loss": 2.30895},
        {"NumIters": 200.0, "Seconds": seconds("20:02.623456"), "LearningRate": 0.00992565,
         "accuracy": 0.9712, "loss": 0.0912},
        {"NumIters": 300.0, "Seconds": seconds("20:41.500000"), "LearningRate": 9.8543e-03,
         "accuracy": 0.9801, "loss": 0.0634},
    ])


def test_parse_log_tool_writes_csv_files(caffe_log, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert parse_log_tool.main([str(caffe_log), str(out_dir)]) == 0
    with open(out_dir / "lenet.log.train") as f:
        train = list(csv.reader(f))
    with open(out_dir / "lenet.log.test") as f:
        test = list(csv.reader(f))
    assert train[0] == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert test[0] == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert len(train) == 4 and len(test) == 4
    assert [float(v) for v in train[2]] == pytest.approx([100, 20.1, 0.01, 0.86, 0.5])
    assert [float(v) for v in test[3]] == pytest.approx([300, 91.376544, 9.8543e-03, 0.9801,
                                                         0.0634])
    # Default output folder: beside the log; other delimiter.
    assert parse_log_tool.main([str(caffe_log), "--delimiter", ";"]) == 0
    header = (tmp_path / "lenet.log.test").read_text().splitlines()[0]
    assert header == "NumIters;Seconds;LearningRate;accuracy;loss"


def test_parse_log_tool_errors(tmp_path):
    with pytest.raises(CaffeError, match="cannot read log file"):
        parse_log_tool.main([str(tmp_path / "missing.log"), str(tmp_path)])
    with pytest.raises(CaffeError, match="usage: parse_log"):
        parse_log_tool.main([])
    with pytest.raises(CaffeError, match="does not exist"):
        parse_log_tool.main([str(tmp_path / "x.log"), str(tmp_path / "nope")])


def test_new_year_single_test_and_nan():
    lines = """\
I1231 23:59:50.000000 1 solver.cpp:272] Solving Net
I1231 23:59:55.500000 1 solver.cpp:330] Iteration 0, Testing net (#0)
I1231 23:59:56.000000 1 solver.cpp:397]     Test net output #0: accuracy = 0.5
I0101 00:00:10.250000 1 solver.cpp:218] Iteration 10, loss = nan
I0101 00:00:10.250000 1 solver.cpp:237]     Train net output #0: loss = nan
I0101 00:00:11.000000 1 solver.cpp:237] Iteration 10, lr = 1e-3
I0101 00:00:20.750000 1 solver.cpp:218] Iteration 20, loss = inf
I0101 00:00:20.750000 1 solver.cpp:237]     Train net output #0: loss = -inf
""".splitlines(keepends=True)
    train, test = parse_lines(lines, 2023)
    # The log crossed into 2024: 20.25 s, not minus a year.
    assert [r["NumIters"] for r in train] == [10.0, 20.0]
    assert [r["Seconds"] for r in train] == pytest.approx([20.25, 30.75])
    assert math.isnan(train[0]["loss"]) and train[1]["loss"] == -math.inf
    assert train[0]["LearningRate"] == train[1]["LearningRate"] == 1e-3
    # A log with one test still has its row.
    assert len(test) == 1 and test[0]["accuracy"] == 0.5 and test[0]["Seconds"] == 6.0
    assert math.isnan(test[0]["LearningRate"])


def test_log_without_solving_line_starts_at_first_timestamp():
    lines = ["I0301 10:00:00.000000 1 solver.cpp:218] Iteration 500, loss = 1\n",
             "I0301 10:00:02.500000 1 solver.cpp:237]     Train net output #0: loss = 1\n"]
    train, test = parse_lines(lines, 2020)
    assert train == [{"NumIters": 500.0, "Seconds": 2.5, "LearningRate": train[0]["LearningRate"],
                      "loss": 1.0}] and test == []
    assert parse_lines([], 2020) == ([], [])


def test_extract_datetime():
    when = extract_datetime_from_line("I0210 13:39:22.381027 25210 solver.cpp:204] x", 2015)
    assert (when.year, when.month, when.day, when.hour, when.minute, when.second,
            when.microsecond) == (2015, 2, 10, 13, 39, 22, 381027)
    with pytest.raises(ValueError):
        extract_datetime_from_line("test_iter: 100", 2015)


def test_caffepy_glog_lines_parse():
    """caffepy's solver logs through caffe.log's glog formatter: those lines parse too."""
    from caffe.log import GlogFormatter, logger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(GlogFormatter())
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        logger.info("Solving %s", "TinyNet")
        logger.info("Iteration %d, Testing net (#%d)", 0, 0)
        logger.info("    Test net output #%d: %s = %g (* %g = %g loss)", 0, "loss", 0.75, 1,
                    0.75)
        logger.info("Iteration %d, loss = %g", 0, 0.8)
        logger.info("    Train net output #%d: %s = %g", 0, "loss", 0.8)
        logger.info("Iteration %d, lr = %g", 0, 0.1)
        logger.info("Iteration %d, loss = %g", 5, 0.4)
        logger.info("    Train net output #%d: %s = %g", 0, "loss", 0.4)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = stream.getvalue().splitlines(keepends=True)
    assert lines[0].startswith("I") and "] Solving TinyNet" in lines[0]
    train, test = parse_lines(lines, 2024)
    assert [(r["NumIters"], r["loss"], r["LearningRate"]) for r in train] == \
        [(0.0, 0.8, 0.1), (5.0, 0.4, 0.1)]
    assert [(r["NumIters"], r["loss"]) for r in test] == [(0.0, 0.75)]
    assert all(0 <= r["Seconds"] < 5 for r in train + test)


def test_chart_types_match_caffe():
    assert plot_training_log.get_supported_chart_types() == [
        "Test accuracy  vs. Iters", "Test accuracy  vs. Seconds",
        "Test loss  vs. Iters", "Test loss  vs. Seconds",
        "Train learning rate  vs. Iters", "Train learning rate  vs. Seconds",
        "Train loss  vs. Iters", "Train loss  vs. Seconds"]


def test_chart_data(caffe_log):
    assert plot_training_log.chart_data(0, str(caffe_log)) == ([0.0, 200.0, 300.0],
                                                               [0.1032, 0.9712, 0.9801])
    x, y = plot_training_log.chart_data(3, str(caffe_log))
    assert x == pytest.approx([1.5, 52.5, 91.376544]) and y == [2.30895, 0.0912, 0.0634]
    assert plot_training_log.chart_data(4, str(caffe_log)) == ([0.0, 100.0, 200.0],
                                                               [0.01, 0.01, 0.00992565])
    assert plot_training_log.chart_data(6, str(caffe_log))[1] == [2.32, 0.5, 0.15]
    with pytest.raises(CaffeError, match="not a valid chart type"):
        plot_training_log.get_field_descriptions(8)


def test_plot_training_log_writes_png(caffe_log, tmp_path):
    pytest.importorskip("matplotlib")
    second = tmp_path / "second.log"
    second.write_text(CAFFE_LOG.replace("accuracy = 0.9801", "accuracy = 0.99"))
    out = tmp_path / "chart.png"
    assert plot_training_log.main(["0", str(out), str(caffe_log), str(second)]) == 0
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    with pytest.raises(CaffeError, match="does not exist"):
        plot_training_log.main(["0", str(out), str(tmp_path / "none.log")])
    with pytest.raises(CaffeError, match="usage: plot_training_log"):
        plot_training_log.main(["0", str(out)])
