"""Upgrade a V0/V1 net prototxt to the current format (``layer { type: "..." }``).

Usage: upgrade_net_proto_text v0_net_proto_file_in net_proto_file_out. The output is written
even when the input needs no upgrade (it is then a copy, and the tool says so). Exit status:
0 on success, 1 when the upgrade reported problems or the arguments are wrong, 2 when the input
cannot be parsed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from google.protobuf.message import Message

from caffe.errors import ProtoError
from caffe.proto import caffe_pb2
from caffe.protoio import (
    read_binary_proto,
    read_text_proto,
    write_binary_proto,
    write_text_proto,
)
from caffe.tools.flags import FlagSet
from caffe.upgrade import net_needs_upgrade, upgrade_net_as_needed

COMMAND = "upgrade_net_proto_text"

logger = logging.getLogger("caffe")


class _ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@contextmanager
def count_logged_errors() -> Iterator[_ErrorCounter]:
    """Count the errors logged on the ``caffe`` logger inside the block: the upgrade functions
    report problems there and carry on, as Caffe's upgrade returns false and carries on."""
    counter = _ErrorCounter()
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)


def two_file_arguments(program: str, argv: list[str], what_in: str, what_out: str) \
        -> tuple[str, str] | None:
    """The input and output paths, or None (after logging the usage) when not exactly two."""
    _, positional = FlagSet(program, f"{what_in} {what_out}").parse(argv)
    if len(positional) != 2:
        logger.error("Usage: %s %s %s", program, what_in, what_out)
        return None
    return positional[0], positional[1]


def upgrade_proto_file(program: str, argv: list[str], what_in: str, what_out: str,
                       message: Message, what: str, needs_upgrade: Callable[[Message], bool],
                       upgrade: Callable[[Message, str], Message], binary: bool = False) -> int:
    """The upgrade tools' main: read ``message`` (text or binary) from the input file, upgrade
    it if needed, and write it in the same encoding to the output file."""
    paths = two_file_arguments(program, argv, what_in, what_out)
    if paths is None:
        return 1
    input_file, output_file = paths
    read: Callable = read_binary_proto if binary else read_text_proto
    encoding = "binary" if binary else "text"
    type_name = message.DESCRIPTOR.name
    try:
        message = read(input_file, message, what)
    except ProtoError as exc:
        logger.error("Failed to parse input %s file as %s: %s (%s)", encoding, type_name,
                     input_file, exc)
        return 2
    success = True
    if needs_upgrade(message):
        with count_logged_errors() as errors:
            message = upgrade(message, os.fspath(input_file))
        if errors.count:
            success = False
            logger.error("Encountered error(s) while upgrading prototxt; see details above.")
    else:
        logger.error("File already in latest proto format: %s", input_file)
    write = write_binary_proto if binary else write_text_proto
    write(output_file, message)
    logger.info("Wrote upgraded %s %s proto to %s", type_name, encoding, output_file)
    return 0 if success else 1


def upgrade_net_file(program: str, argv: list[str], binary: bool) -> int:
    """Read a net (text or binary), upgrade it if needed, write it in the same encoding."""
    return upgrade_proto_file(program, argv, "v0_net_proto_file_in", "net_proto_file_out",
                              caffe_pb2.NetParameter(), "net proto", net_needs_upgrade,
                              upgrade_net_as_needed, binary)


def main(argv: list[str]) -> int:
    """Run ``caffe upgrade_net_proto_text`` on ``argv`` (its flags and positional arguments);
    returns the exit status."""
    return upgrade_net_file(COMMAND, argv, binary=False)
