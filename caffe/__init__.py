"""caffepy: BVLC Caffe 1.0 in Python. ``import caffe`` offers what pycaffe offered."""

from caffe.blob import Blob
from caffe.common import (
    has_nccl,
    set_device,
    set_mode_cpu,
    set_mode_gpu,
    set_multiprocess,
    set_random_seed,
    set_solver_count,
    set_solver_rank,
    solver_count,
    solver_rank,
)
from caffe.errors import CaffeError
from caffe.layer import layer_type_list
from caffe.layers.python import PythonLayer as Layer
from caffe.net import Net
from caffe.proto.caffe_pb2 import TEST, TRAIN

__version__ = "1.0.0"

__all__ = [
    "Blob", "CaffeError", "Layer", "Net", "TEST", "TRAIN", "has_nccl", "layer_type_list",
    "set_device", "set_mode_cpu", "set_mode_gpu", "set_multiprocess", "set_random_seed",
    "set_solver_count", "set_solver_rank", "solver_count", "solver_rank",
]
