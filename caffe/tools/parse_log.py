"""Parse a Caffe training log into train and test CSV tables.

Usage: parse_log logfile_path [output_dir] [--delimiter ,] [--verbose]. Writes
``<output_dir>/<log name>.train`` and ``<output_dir>/<log name>.test`` (output_dir defaults to
the log's folder), as Caffe's tools/extra/parse_log.py does.

The log is glog text, from C++ Caffe or caffepy (``I1122 00:19:10.123456 12345 solver.cpp:218]
message``). Timing starts at the "Solving <net>" line. Each row has ``NumIters``, ``Seconds``
(since Solving), ``LearningRate`` (the last "lr = X" seen), then one column per net output,
from "Train net output #k: name = X" / "Test net output #k: name = X (* w = Y loss)" lines;
"Iteration N" on any line sets the iteration. A row is complete when it has as many columns as
the first row; the first row's NaN learning rate (lr is printed only after the first update)
is taken from the second row.
"""

from __future__ import annotations

import csv
import datetime
import io
import logging
import math
import os
import re
from collections.abc import Iterable

from caffe.errors import CaffeError
from caffe.protoio import atomic_write
from caffe.tools.flags import FlagSet

COMMAND = "parse_log"

logger = logging.getLogger("caffe")

Row = dict[str, float]

_NUMBER = r"[-+]?(?:nan|inf|[.\deE+-]+)"
_ITERATION = re.compile(r"Iteration (\d+)")
_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = (" + _NUMBER + ")")
_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = (" + _NUMBER + ")")
_LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")
_GLOG_PREFIX = re.compile(r"^\s*[IWEF](\d\d)(\d\d) (\d+):(\d+):(\d+)\.(\d+)\s")


def extract_datetime_from_line(line: str, year: int) -> datetime.datetime:
    """The time of a glog line (``I0210 13:39:22.381027 ...``) in ``year``; ValueError if the
    line has no glog prefix."""
    match = _GLOG_PREFIX.match(line)
    if match is None:
        raise ValueError(f"not a glog line: {line[:60]!r}")
    month, day, hour, minute, second = (int(g) for g in match.groups()[:5])
    micros = int(match.group(6).ljust(6, "0")[:6])
    return datetime.datetime(year, month, day, hour, minute, second, micros)


def get_log_created_year(path: str | os.PathLike) -> int:
    """glog lines carry no year: take it from the log file's timestamp."""
    return datetime.datetime.fromtimestamp(os.path.getctime(path)).year


def get_start_time(lines: Iterable[str], year: int) -> datetime.datetime | None:
    """The time of the first "Solving" line, or None."""
    for line in lines:
        if "Solving" in line:
            try:
                return extract_datetime_from_line(line, year)
            except ValueError:
                continue
    return None


def _net_output(regex: re.Pattern, line: str, row: Row | None, rows: list[Row],
                iteration: float, seconds: float, learning_rate: float) -> Row | None:
    """Fold one line into the table ``rows``; return the row still being filled."""
    match = regex.search(line)
    if match:
        if row is None or row["NumIters"] != iteration:
            # A new iteration: the row being filled (only ever the first one, whose width is
            # not yet known) is done.
            if row is not None:
                rows.append(row)
            row = {"NumIters": iteration, "Seconds": seconds, "LearningRate": learning_rate}
        row[match.group(2)] = float(match.group(3))
    if row is not None and rows and len(row) == len(rows[0]):
        rows.append(row)
        row = None
    return row


def _fix_initial_nan_learning_rate(rows: list[Row]) -> None:
    if len(rows) > 1:
        rows[0]["LearningRate"] = rows[1]["LearningRate"]


def parse_lines(lines: list[str], year: int) -> tuple[list[Row], list[Row]]:
    """``(train_rows, test_rows)`` of a log given as lines, its timestamps read in ``year``."""
    start_index = next((i for i, line in enumerate(lines) if "Solving" in line), None)
    start_time = None
    if start_index is not None:
        start_time = get_start_time(lines[start_index:start_index + 1], year)
        lines = lines[start_index + 1:]
    if start_time is None:
        # A log without the Solving line (a resumed or trimmed log): time from its first line.
        for line in lines:
            try:
                start_time = extract_datetime_from_line(line, year)
                break
            except ValueError:
                continue
    if start_time is None:
        return [], []

    iteration = -1.0
    learning_rate = math.nan
    train_rows: list[Row] = []
    test_rows: list[Row] = []
    train_row: Row | None = None
    test_row: Row | None = None
    last_time = start_time
    for line in lines:
        match = _ITERATION.search(line)
        if match:
            iteration = float(match.group(1))
        if iteration == -1:
            continue
        try:
            time = extract_datetime_from_line(line, year)
            if time.month < last_time.month:
                # The log ran past new year.
                year += 1
                time = extract_datetime_from_line(line, year)
        except ValueError:
            continue
        last_time = time
        seconds = (time - start_time).total_seconds()
        match = _LEARNING_RATE.search(line)
        if match:
            learning_rate = float(match.group(1))
        train_row = _net_output(_TRAIN_OUTPUT, line, train_row, train_rows, iteration, seconds,
                                learning_rate)
        test_row = _net_output(_TEST_OUTPUT, line, test_row, test_rows, iteration, seconds,
                               learning_rate)
    # A log with a single test (or display) has its only row still open at the end.
    for row, rows in ((train_row, train_rows), (test_row, test_rows)):
        if row is not None and not rows:
            rows.append(row)
    _fix_initial_nan_learning_rate(train_rows)
    _fix_initial_nan_learning_rate(test_rows)
    return train_rows, test_rows


def parse_log(path_to_log: str | os.PathLike) -> tuple[list[Row], list[Row]]:
    """``(train_rows, test_rows)``: lists of dicts ``NumIters, Seconds, LearningRate, <output
    name>...`` read from a Caffe training log."""
    try:
        with open(path_to_log, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError as exc:
        raise CaffeError(f"parse_log: cannot read log file {os.fspath(path_to_log)!r}: "
                         f"{exc.strerror or exc}") from None
    return parse_lines(lines, get_log_created_year(path_to_log))


def csv_text(rows: list[Row], delimiter: str = ",") -> str:
    """The rows as CSV text with a header row (columns of the first row)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), delimiter=delimiter,
                            lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_csv(output_filename: str, rows: list[Row], delimiter: str = ",",
              verbose: bool = False) -> bool:
    """Write ``rows`` as CSV; nothing is written for an empty table. Returns whether written."""
    if not rows:
        if verbose:
            print(f"Not writing {output_filename}; no lines to write")
        return False
    atomic_write(output_filename, csv_text(rows, delimiter).encode("utf-8"))
    if verbose:
        print(f"Wrote {output_filename}")
    return True


def save_csv_files(logfile_path: str, output_dir: str, train_rows: list[Row],
                   test_rows: list[Row], delimiter: str = ",", verbose: bool = False) \
        -> tuple[str, str]:
    """Write ``<log name>.train`` and ``<log name>.test`` into ``output_dir``."""
    base = os.path.join(output_dir, os.path.basename(logfile_path))
    write_csv(base + ".train", train_rows, delimiter, verbose)
    write_csv(base + ".test", test_rows, delimiter, verbose)
    return base + ".train", base + ".test"


def main(argv: list[str]) -> int:
    """Run ``caffe parse_log`` on ``argv`` (its flags and positional arguments); returns the exit
    status."""
    flags = FlagSet("parse_log", "logfile_path [output_dir] [flags]")
    flags.define("delimiter", ",", "column delimiter in the output files")
    flags.define("verbose", False, "print the names of the files written")
    values, positional = flags.parse(argv)
    if len(positional) not in (1, 2):
        raise CaffeError("usage: parse_log logfile_path [output_dir] [--delimiter ,] "
                         "[--verbose]")
    logfile = positional[0]
    output_dir = positional[1] if len(positional) == 2 else os.path.dirname(logfile) or "."
    if not os.path.isdir(output_dir):
        raise CaffeError(f"parse_log: output directory {output_dir!r} does not exist")
    delimiter = str(values["delimiter"])
    if len(delimiter) != 1:
        raise CaffeError(f"parse_log: the delimiter must be one character, got {delimiter!r}")
    train_rows, test_rows = parse_log(logfile)
    save_csv_files(logfile, output_dir, train_rows, test_rows, delimiter,
                   bool(values["verbose"]))
    return 0
