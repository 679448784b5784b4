"""Plot Caffe training logs: test accuracy/loss or train loss/learning rate vs. iterations or
seconds.

Usage: plot_training_log chart_type /where/to/save.png /path/to/first.log [more.log ...].
Chart types (as in Caffe's tools/extra/plot_training_log.py.example):
  0: Test accuracy  vs. Iters      1: Test accuracy  vs. Seconds
  2: Test loss  vs. Iters          3: Test loss  vs. Seconds
  4: Train learning rate  vs. Iters  5: Train learning rate  vs. Seconds
  6: Train loss  vs. Iters         7: Train loss  vs. Seconds
Each log is one line on the chart, labelled with its file name (without ``.log``). The image
format follows the output file's extension (PNG, SVG, PDF); matplotlib draws it off screen.
"""

from __future__ import annotations

import os

from caffe.errors import CaffeError
from caffe.protoio import atomic_output
from caffe.tools.flags import FlagSet
from caffe.tools.parse_log import Row, parse_log

COMMAND = "plot_training_log"

_SEPARATOR = "  vs. "
_X_FIELDS = {"Iters": "NumIters", "Seconds": "Seconds"}
_Y_FIELDS = ["Test accuracy", "Test loss", "Train learning rate", "Train loss"]
_MARKERS = ["o", "s", "^", "v", "D", "*", "x", "+", "<", ">", "p", "h"]


def get_supported_chart_types() -> list[str]:
    """Descriptions of the chart types, indexed by chart type number."""
    return [f"{y}{_SEPARATOR}{x}" for y in _Y_FIELDS for x in _X_FIELDS]


def get_chart_type_description(chart_type: int) -> str:
    """The description of chart type ``chart_type``; an unknown number is an error listing the
    types."""
    types = get_supported_chart_types()
    if not 0 <= chart_type < len(types):
        raise CaffeError(f"{chart_type} is not a valid chart type (0-{len(types) - 1}):\n"
                         + chart_types_help())
    return types[chart_type]


def chart_types_help() -> str:
    """The numbered list of chart types, for the usage text."""
    return "\n".join(f"    {i}: {d}" for i, d in enumerate(get_supported_chart_types()))


def get_field_descriptions(chart_type: int) -> tuple[str, str]:
    """``(x axis field, y axis field)`` of a chart type."""
    y_field, x_field = get_chart_type_description(chart_type).split(_SEPARATOR)
    return x_field, y_field


def get_data_label(path_to_log: str) -> str:
    """A log's legend label: its file name without ``.log``."""
    name = os.path.basename(path_to_log)
    return name[:-len(".log")] if name.endswith(".log") else name


def get_legend_loc(chart_type: int) -> str:
    """Where the legend goes: upper right for loss and learning-rate charts, lower right
    otherwise."""
    _, y_field = get_field_descriptions(chart_type)
    return "upper right" if "loss" in y_field or "learning rate" in y_field else "lower right"


def _output_column(rows: list[Row], kind: str, path: str, table: str) -> str:
    """The column holding ``kind`` (loss or accuracy): the output named exactly so, else the
    first output whose name contains it."""
    columns = [c for c in rows[0] if c not in ("NumIters", "Seconds", "LearningRate")]
    if kind in columns:
        return kind
    short = "acc" if kind == "accuracy" else kind
    for column in columns:
        if short in column.lower():
            return column
    raise CaffeError(f"{path}: no {table} net output looks like {kind} (outputs: "
                     f"{', '.join(columns) or 'none'})")


def chart_data(chart_type: int, path_to_log: str) -> tuple[list[float], list[float]]:
    """The x and y values that ``chart_type`` plots for one log."""
    x_field, y_field = get_field_descriptions(chart_type)
    train_rows, test_rows = parse_log(path_to_log)
    table = y_field.split()[0]
    rows = train_rows if table == "Train" else test_rows
    if not rows:
        raise CaffeError(f"{path_to_log}: the log has no {table.lower()} net outputs to plot")
    if y_field == "Train learning rate":
        column = "LearningRate"
    else:
        column = _output_column(rows, y_field.split()[-1], path_to_log, table.lower())
    x_column = _X_FIELDS[x_field]
    return [row[x_column] for row in rows], [row[column] for row in rows]


def plot_chart(chart_type: int, path_to_png: str, path_to_log_list: list[str]) -> None:
    """Draw one line per log and save the chart to ``path_to_png``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CaffeError("plotting needs matplotlib: pip install matplotlib") from None

    x_field, y_field = get_field_descriptions(chart_type)
    figure = Figure(figsize=(8, 6))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for index, path_to_log in enumerate(path_to_log_list):
        x, y = chart_data(chart_type, path_to_log)
        axes.plot(x, y, label=get_data_label(path_to_log), linewidth=0.75,
                  marker=_MARKERS[index % len(_MARKERS)])
    axes.legend(loc=get_legend_loc(chart_type), ncol=1)
    axes.set_title(get_chart_type_description(chart_type))
    axes.set_xlabel(x_field)
    axes.set_ylabel(y_field)
    extension = os.path.splitext(path_to_png)[1].lstrip(".").lower() or "png"
    with atomic_output(path_to_png) as tmp:
        figure.savefig(tmp, format=extension)


def main(argv: list[str]) -> int:
    """Run ``caffe plot_training_log`` on ``argv`` (its flags and positional arguments); returns the
    exit status."""
    flags = FlagSet("plot_training_log", "chart_type /where/to/save.png /path/to/first.log ...")
    _, positional = flags.parse(argv)
    if len(positional) < 3:
        raise CaffeError("usage: plot_training_log chart_type[0-7] /where/to/save.png "
                         "/path/to/first.log [...]\nSupported chart types:\n"
                         + chart_types_help())
    try:
        chart_type = int(positional[0])
    except ValueError:
        raise CaffeError(f"chart type must be a number, got {positional[0]!r}:\n"
                         + chart_types_help()) from None
    get_chart_type_description(chart_type)
    path_to_png = positional[1]
    for path_to_log in positional[2:]:
        if not os.path.exists(path_to_log):
            raise CaffeError(f"plot_training_log: log file does not exist: {path_to_log}")
    plot_chart(chart_type, path_to_png, positional[2:])
    print(f"Wrote {path_to_png}")
    return 0
