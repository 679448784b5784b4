"""Test isolation: each test starts in CPU mode with the ``caffe`` logger as it was.

Tests use one torch thread (and their subprocesses one OpenMP thread): the tensors here are
tiny, and on a loaded 2-core machine a second thread makes small kernels stall.
"""

import logging
import os

import pytest
import torch

import caffe

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolate_caffe_state():
    logger = logging.getLogger("caffe")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
    caffe.set_mode_cpu()
