"""Draw a graph of a net's architecture (PNG, SVG, PDF, ... through Graphviz).

Usage: draw_net input_net_proto_file output_image_file [--rankdir LR] [--phase ALL]
[--display_lrm]. The output format follows the file's extension.
"""

from __future__ import annotations

import logging

from caffe import draw
from caffe.errors import CaffeError
from caffe.proto import caffe_pb2
from caffe.protoio import read_text_proto
from caffe.tools.flags import FlagSet

COMMAND = "draw_net"

logger = logging.getLogger("caffe")


def flag_set() -> FlagSet:
    """The flags of ``caffe draw_net``, as ``-help`` lists them."""
    flags = FlagSet("draw_net", "input_net_proto_file output_image_file [flags]")
    flags.define("rankdir", "LR", "graph direction: LR (left-right), TB (top-bottom), RL or BT; "
                 "see Graphviz's rankdir attribute")
    flags.define("phase", "ALL", "which net to draw: TRAIN, TEST, or ALL (every layer)")
    flags.define("display_lrm", False, "show the learning rate multipliers of Convolution, "
                 "Deconvolution and InnerProduct layers")
    return flags


def main(argv: list[str]) -> int:
    """Run ``caffe draw_net`` on ``argv`` (its flags and positional arguments); returns the exit
    status."""
    flags = flag_set()
    values, positional = flags.parse(argv)
    if len(positional) != 2:
        raise CaffeError("usage: draw_net input_net_proto_file output_image_file [--rankdir LR] "
                         f"[--phase TRAIN|TEST|ALL] [--display_lrm] (got {len(positional)} "
                         "arguments)")
    net_file, image_file = positional
    phase_name = str(values["phase"]).upper()
    if phase_name not in ("TRAIN", "TEST", "ALL"):
        raise CaffeError(f"draw_net: unknown phase {values['phase']!r}: use TRAIN, TEST or ALL")
    phase = None if phase_name == "ALL" else caffe_pb2.Phase.Value(phase_name)
    net = read_text_proto(net_file, caffe_pb2.NetParameter(), "net prototxt")
    print(f"Drawing net to {image_file}")
    draw.draw_net_to_file(net, image_file, str(values["rankdir"]), phase,
                          bool(values["display_lrm"]))
    logger.info("Wrote the drawing of %s to %s", net_file, image_file)
    return 0
