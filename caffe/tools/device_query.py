"""show GPU diagnostic information

Usage: caffe device_query -gpu ids|all. Logs the properties of each CUDA device, as Caffe's
``caffe device_query`` does; ``-gpu`` on a machine without CUDA is an error.
"""

from __future__ import annotations

import logging

import torch

from caffe import common
from caffe.tools.train import parse_flags, parse_gpus

COMMAND = "device_query"

log = logging.getLogger("caffe")

# (label, torch device property); the ones a torch build lacks are skipped.
_PROPERTIES = (
    ("Major revision number", "major"),
    ("Minor revision number", "minor"),
    ("Name", "name"),
    ("Total global memory", "total_memory"),
    ("Total shared memory per block", "shared_memory_per_block"),
    ("Total registers per multiprocessor", "regs_per_multiprocessor"),
    ("Warp size", "warp_size"),
    ("Maximum threads per multiprocessor", "max_threads_per_multi_processor"),
    ("Number of multiprocessors", "multi_processor_count"),
    ("L2 cache size", "L2_cache_size"),
    ("Integrated", "is_integrated"),
)


def device_query(device_id: int) -> list[str]:
    """Caffe's DeviceQuery lines for one device."""
    props = torch.cuda.get_device_properties(device_id)
    lines = [f"Device id:                     {device_id}"]
    for label, attr in _PROPERTIES:
        if hasattr(props, attr):
            value = getattr(props, attr)
            if isinstance(value, bool):
                value = "Yes" if value else "No"
            lines.append(f"{label + ':':<31}{value}")
    return lines


def main(argv: list[str]) -> int:
    """Run ``caffe device_query`` on ``argv`` (its flags and positional arguments); returns the exit
    status."""
    flags = parse_flags(COMMAND, argv)
    log.info("Querying GPUs %s", flags["gpu"])
    gpus = parse_gpus(flags["gpu"])
    if not gpus:
        log.info("No device given: use -gpu <id>[,<id>...] or -gpu all")
    for gpu in gpus:
        common.set_device(gpu)
        for line in device_query(gpu):
            log.info("%s", line)
    return 0
