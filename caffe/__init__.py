"""caffepy: BVLC Caffe 1.0 in Python. ``import caffe`` offers what pycaffe offered."""

# _threads comes first: it sets torch's OpenMP wait policy before anything imports torch.
# pycaffe exposes caffe.io as an attribute; caffe.log is callable (caffe.log(message), as
# pycaffe) and, imported, puts glog lines on stderr as pycaffe does
from caffe import _threads, io, log  # noqa: F401  (_threads: imported for its effect)
from caffe.blob import Blob
from caffe.classifier import Classifier
from caffe.common import (
    has_nccl,
    set_device,
    set_mode_cpu,
    set_mode_gpu,
    set_multiprocess,
    set_num_threads,
    set_random_seed,
    set_solver_count,
    set_solver_rank,
    solver_count,
    solver_rank,
)
from caffe.detector import Detector
from caffe.errors import CaffeError
from caffe.layer import layer_type_list
from caffe.layers.python import PythonLayer as Layer
from caffe.log import init_log
from caffe.net import Net
from caffe.net_spec import NetSpec, layers, params, to_proto
from caffe.parallel import NCCL, train_parallel
from caffe.phase import TEST, TRAIN, Phase
from caffe.solver import get_solver
from caffe.solvers import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
)
from caffe.timer import Timer

__version__ = "1.0.0"

__all__ = [
    "AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "NesterovSolver", "RMSPropSolver",
    "SGDSolver", "get_solver", "NCCL", "train_parallel",
    "Blob", "CaffeError", "Classifier", "Detector", "Layer", "Net", "NetSpec", "Timer", "io",
    "init_log", "log",
    "layers", "params", "to_proto", "Phase", "TEST", "TRAIN", "has_nccl", "layer_type_list",
    "set_device", "set_mode_cpu", "set_mode_gpu", "set_multiprocess", "set_num_threads",
    "set_random_seed",
    "set_solver_count", "set_solver_rank", "solver_count", "solver_rank",
]
