"""Test isolation: each test starts in CPU mode with the ``caffe`` logger as it was."""

import logging

import pytest

import caffe


@pytest.fixture(autouse=True)
def _isolate_caffe_state():
    logger = logging.getLogger("caffe")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
    caffe.set_mode_cpu()
