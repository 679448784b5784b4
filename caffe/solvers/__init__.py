"""The update rules: one module per Caffe solver type, each registered by its type string.

``SGD`` (sgd.py) holds what they share: learning-rate policies, gradient clipping, iter_size
normalization, L2/L1 regularization and the history blobs that snapshots carry. The others
override ``compute_update_value`` (AdaDelta and Adam also keep a second history set:
``history_sets = 2``).
"""

from caffe.solvers.adadelta import AdaDeltaSolver
from caffe.solvers.adagrad import AdaGradSolver
from caffe.solvers.adam import AdamSolver
from caffe.solvers.nesterov import NesterovSolver
from caffe.solvers.rmsprop import RMSPropSolver
from caffe.solvers.sgd import SGDSolver

__all__ = ["AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "NesterovSolver", "RMSPropSolver",
           "SGDSolver"]
