"""SGD: stochastic gradient descent with momentum (Caffe's SGDSolver, type "SGD").

Reads base_lr, lr_policy (with gamma, power, stepsize, stepvalue, max_iter), momentum,
weight_decay, regularization_type, clip_gradients and iter_size from the SolverParameter;
per-parameter lr_mult and decay_mult from the net's ParamSpecs.

    V <- momentum * V + local_rate * dW        (V: the history blob of W)
    W <- W - V

This class also holds what every Caffe solver inherits from SGDSolver: the learning-rate
policies, global L2-norm gradient clipping, 1/iter_size normalization, L2 / L1 regularization,
the history blobs, and writing / reading them in a SolverState (binary proto or HDF5).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from caffe import common
from caffe.blob import Blob
from caffe.errors import CaffeError, SolverError
from caffe.net import Net
from caffe.proto import caffe_pb2
from caffe.solver import Solver, register_solver

log = logging.getLogger("caffe")

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
REGULARIZATION_TYPES = ("L2", "L1")


# Rates are computed as C++ Caffe's float arithmetic computes them: an overflow gives inf and a
# fractional power of a negative number nan, where Python would raise or go complex.
def c_pow(base: float, exponent: float) -> float:
    """``base ** exponent`` as C's pow (bit for bit where both are defined): +-inf on overflow,
    inf for 0 to a negative power, nan for a negative base to a fractional power."""
    try:
        return math.pow(base, exponent)
    except OverflowError:
        odd = float(exponent).is_integer() and int(exponent) % 2 == 1
        return -math.inf if base < 0 and odd else math.inf
    except ValueError:
        return math.inf if base == 0 else math.nan


def c_exp(x: float) -> float:
    """``exp(x)`` as C's: inf on overflow."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def c_sqrt(x: float) -> float:
    """``sqrt(x)`` as C's: nan for a negative x."""
    return math.sqrt(x) if x >= 0 else math.nan


def c_div(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` as IEEE float division: +-inf or nan for a zero divisor."""
    if denominator:
        return numerator / denominator
    if numerator == 0 or math.isnan(numerator):
        return math.nan
    return math.copysign(math.inf, numerator) * math.copysign(1.0, denominator)


def torch_scalar(value: float, dtype: torch.dtype) -> float:
    """``value`` as a scalar torch takes for ``dtype`` tensors: out of the type's range it is
    +-inf (as in C++ Caffe's Dtype arithmetic), where torch would refuse it."""
    if math.isfinite(value) and abs(value) > torch.finfo(dtype).max:
        return math.copysign(math.inf, value)
    return value


def update_mean_square(mean: torch.Tensor, g: torch.Tensor, buffer: torch.Tensor,
                       decay: float) -> None:
    """mean <- decay * mean + (1 - decay) * g^2 (``buffer`` receives g^2)."""
    torch.square(g, out=buffer)
    mean.mul_(decay).add_(buffer, alpha=1.0 - decay)


def rms_scaled_update(numerator: torch.Tensor, mean_square: torch.Tensor, buffer: torch.Tensor,
                      delta: float, rate: float, out: torch.Tensor) -> None:
    """out <- rate * numerator / (sqrt(mean_square) + delta) (``buffer`` is scratch space).

    The step of AdaGrad, RMSProp and Adam."""
    torch.sqrt(mean_square, out=buffer)
    buffer.add_(delta)
    torch.div(numerator, buffer, out=buffer)
    torch.mul(buffer, rate, out=out)


@register_solver("SGD")
class SGDSolver(Solver):
    """Caffe's SGDSolver; the base of the other update rules.

    ``history_sets`` says how many history blobs per learnable parameter the rule keeps (and
    snapshots): sets follow one another in ``history``, the i-th parameter's k-th at
    ``history[k * n + i]``.
    """

    history_sets = 1

    def __init__(self, param, source: str | None = None) -> None:
        super().__init__(param, source=source)
        self.pre_solve()

    # --- setup --------------------------------------------------------------------------------
    def check_parameters(self) -> None:
        p = self.param
        if p.HasField("lr_policy") and p.lr_policy not in LR_POLICIES:
            raise SolverError(f"Unknown learning rate policy: {p.lr_policy!r} (known policies: "
                              f"{', '.join(LR_POLICIES)})")
        if p.lr_policy == "step" and p.stepsize <= 0:
            raise SolverError(f"lr_policy 'step' needs a positive stepsize, got {p.stepsize}")
        if p.lr_policy == "poly" and p.max_iter <= 0:
            raise SolverError(f"lr_policy 'poly' needs a positive max_iter, got {p.max_iter}")
        if p.regularization_type not in REGULARIZATION_TYPES:
            raise SolverError(f"Unknown regularization type: {p.regularization_type!r} "
                              f"(known types: {', '.join(REGULARIZATION_TYPES)})")

    def _new_history_set(self) -> list[Blob]:
        return [Blob(blob.shape, dtype=blob.dtype) for blob in self.net.learnable_params]

    def pre_solve(self) -> None:
        """Zeroed history blobs (``history_sets`` per learnable parameter), and one update and
        one temp blob per learnable parameter."""
        self.history: list[Blob] = []
        for _ in range(self.history_sets):
            self.history += self._new_history_set()
        self.update: list[Blob] = self._new_history_set()
        self.temp: list[Blob] = self._new_history_set()

    def check_no_momentum(self) -> None:
        """The adaptive rules that take no momentum refuse one (Caffe's CHECK_EQ)."""
        if self.param.momentum != 0:
            raise SolverError(f"Momentum cannot be used with {self.type_name} (momentum: "
                              f"{self.param.momentum:g})")

    # --- learning rate ------------------------------------------------------------------------
    def get_learning_rate(self) -> float:
        """The rate for the current iteration under ``lr_policy`` (Caffe's formulas):

        fixed: base_lr; step: base_lr * gamma ^ floor(iter / stepsize); exp: base_lr *
        gamma ^ iter; inv: base_lr * (1 + gamma * iter) ^ -power; multistep: base_lr *
        gamma ^ (number of stepvalues passed); poly: base_lr * (1 - iter / max_iter) ^ power;
        sigmoid: base_lr / (1 + exp(-gamma * (iter - stepsize))).
        """
        p = self.param
        policy = p.lr_policy
        it = self.iter
        if policy == "fixed":
            return p.base_lr
        if policy == "step":
            self.current_step = it // p.stepsize
            return p.base_lr * c_pow(p.gamma, self.current_step)
        if policy == "exp":
            return p.base_lr * c_pow(p.gamma, it)
        if policy == "inv":
            return p.base_lr * c_pow(1.0 + p.gamma * it, -p.power)
        if policy == "multistep":
            if self.current_step < len(p.stepvalue) and it >= p.stepvalue[self.current_step]:
                self.current_step += 1
                log.info("MultiStep Status: Iteration %d, step = %d", it, self.current_step)
            return p.base_lr * c_pow(p.gamma, self.current_step)
        if policy == "poly":
            return p.base_lr * c_pow(1.0 - it / p.max_iter, p.power)
        if policy == "sigmoid":
            return p.base_lr / (1.0 + c_exp(-p.gamma * (it - p.stepsize)))
        raise SolverError(f"Unknown learning rate policy: {policy!r} (set lr_policy to one of "
                          f"{', '.join(LR_POLICIES)})")

    # --- the update ---------------------------------------------------------------------------
    def apply_update(self) -> None:
        """Learning rate, clipping, then per parameter normalize, regularize and compute the
        update value into its diff; finally W -= diff for every learnable parameter."""
        p = self.param
        rate = self.get_learning_rate()
        if p.display and self.iter % p.display == 0 and common.root_solver():
            with np.errstate(over="ignore"):  # a rate beyond float range shows as inf
                shown = float(np.float32(rate))
            log.info("Iteration %d, lr = %s", self.iter, f"{shown:g}")
        self.clip_gradients()
        if self._plain_sgd():
            self._fused_update(rate)
            return
        for param_id, blob in enumerate(self.net.learnable_params):
            self.normalize(param_id)
            self.regularize(param_id)
            if blob.count:  # an empty parameter has nothing to update
                self.compute_update_value(param_id, rate)
        self.net.update()

    def _plain_sgd(self) -> bool:
        """True when the update is exactly SGD's: no subclass step, no iter_size, L2 decay; on
        CPU only, where foreach ops run the per-tensor kernels (CUDA's fused foreach kernels
        are not yet checked bit for bit against the per-blob path)."""
        cls = type(self)
        params = self.net.learnable_params
        if getattr(self, "_blob_types_key", None) != (id(params), len(params)):
            # The blobs' classes are fixed per net: checked once, not every iteration.
            self._plain_blobs = all(type(b).update is Blob.update for b in params)
            self._blob_types_key = (id(params), len(params))
        return (common.mode() == common.CPU
                and cls.compute_update_value is SGDSolver.compute_update_value
                and cls.regularize is SGDSolver.regularize
                and cls.normalize is SGDSolver.normalize
                and self.param.iter_size == 1 and self.param.regularization_type == "L2"
                and type(self.net).update is Net.update and self._plain_blobs)

    def _fused_update(self, rate: float) -> None:
        """regularize + compute_update_value + Net.update as one pass of torch._foreach_* ops
        per group of parameters sharing decay, lr_mult and dtype; each foreach op applies the
        same elementwise op to each tensor (on CPU, literally one after another), so the numbers
        are the per-blob path's, bit for bit, with a handful of Python calls per group instead
        of ~10 per blob."""
        params = self.net.learnable_params
        key = (id(params), len(params))
        if getattr(self, "_groups_key", None) != key:  # the grouping is fixed per net
            groups: dict[tuple, list[int]] = {}
            for param_id, blob in enumerate(params):
                if blob.count:
                    decay = self.param.weight_decay * self.net.params_weight_decay[param_id]
                    group = (torch_scalar(decay, blob.dtype), self.net.params_lr[param_id],
                             blob.dtype)
                    groups.setdefault(group, []).append(param_id)
            self._groups = [(ids, decay, lr_mult, dtype)
                            for (decay, lr_mult, dtype), ids in groups.items()]
            self._groups_key = key
        momentum = self.param.momentum
        for ids, decay, lr_mult, dtype in self._groups:
            blobs = [params[i] for i in ids]
            diffs = [b.mutable_device_diff() for b in blobs]
            history = [self.history[i].mutable_device_data() for i in ids]
            if decay:
                torch._foreach_add_(diffs, [b.device_data() for b in blobs], alpha=decay)
            # By a 0-d tensor: the same float rounding as the Python number, without torch
            # wrapping that number once per tensor (~2 us each on small blobs).
            torch._foreach_mul_(history, self._momentum_tensor(momentum, dtype))
            torch._foreach_add_(history, diffs, alpha=torch_scalar(rate * lr_mult, dtype))
            torch._foreach_copy_(diffs, history)
            torch._foreach_sub_([b.mutable_device_data() for b in blobs], diffs)

    def _momentum_tensor(self, momentum: float, dtype: torch.dtype) -> torch.Tensor:
        """``momentum`` as a 0-d host tensor of ``dtype``, made once per value."""
        cache = self.__dict__.setdefault("_momentum_tensors", {})
        tensor = cache.get((momentum, dtype))
        if tensor is None:
            tensor = cache[(momentum, dtype)] = torch.tensor(torch_scalar(momentum, dtype),
                                                             dtype=dtype)
        return tensor

    def clip_gradients(self) -> None:
        """Scale all diffs by clip / ||dW|| when the global L2 norm exceeds clip_gradients."""
        clip = self.param.clip_gradients
        if clip < 0:
            return
        diffs = [b.device_diff() for b in self.net.learnable_params if b.count]
        if not diffs:
            return
        sumsq = torch.stack([d.square().sum() for d in diffs]).sum()
        l2norm = float(torch.sqrt(sumsq))
        if l2norm > clip:
            scale = clip / l2norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale "
                     "factor %g", l2norm, clip, scale)
            for blob in self.net.learnable_params:
                blob.scale_diff(scale)

    def normalize(self, param_id: int) -> None:
        """Undo the accumulation of iter_size backward passes."""
        if self.param.iter_size == 1:
            return
        self.net.learnable_params[param_id].scale_diff(1.0 / self.param.iter_size)

    def regularize(self, param_id: int) -> None:
        """dW += decay * W (L2) or decay * sign(W) (L1), decay = weight_decay * decay_mult."""
        blob = self.net.learnable_params[param_id]
        local_decay = self.param.weight_decay * self.net.params_weight_decay[param_id]
        if not local_decay or not blob.count:
            return
        local_decay = torch_scalar(local_decay, blob.dtype)
        diff = blob.mutable_device_diff()
        if self.param.regularization_type == "L2":
            diff.add_(blob.device_data(), alpha=local_decay)
        else:
            sign = self.temp[param_id].mutable_device_data()
            torch.sign(blob.device_data(), out=sign)
            diff.add_(sign, alpha=local_decay)

    def local_rate(self, param_id: int, rate: float) -> float:
        """rate * lr_mult, as a scalar torch takes for the parameter's dtype."""
        return torch_scalar(rate * self.net.params_lr[param_id],
                            self.net.learnable_params[param_id].dtype)

    def compute_update_value(self, param_id: int, rate: float) -> None:
        """Turn the (non-empty) parameter's diff into the step that ``Net.update`` subtracts."""
        g = self.net.learnable_params[param_id].mutable_device_diff()
        h = self.history[param_id].mutable_device_data()
        h.mul_(self.param.momentum).add_(g, alpha=self.local_rate(param_id, rate))
        g.copy_(h)

    # --- solver state -------------------------------------------------------------------------
    def _param_label(self, history_id: int) -> str:
        """'layer ip1, param 0' for a history blob (history sets repeat the param order)."""
        learnable_id = history_id % max(len(self.net.learnable_params), 1)
        for net_pid, lid in enumerate(self.net.learnable_param_ids):
            if lid == learnable_id and self.net.param_owners[net_pid] == -1:
                layer_id, pid = self.net.param_layer_indices[net_pid]
                return f"layer '{self.net._layer_names[layer_id]}', param {pid}"
        return f"learnable param {learnable_id}"

    def snapshot_solver_state(self, model_filename: str) -> None:
        if self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            self._snapshot_state_to_hdf5(model_filename)
        else:
            self._snapshot_state_to_binary_proto(model_filename)

    def _snapshot_state_to_binary_proto(self, model_filename: str) -> None:
        from caffe.protoio import write_binary_proto

        state = caffe_pb2.SolverState()
        state.iter = self.iter
        state.learned_net = model_filename
        state.current_step = self.current_step
        for blob in self.history:
            blob.to_proto(state.history.add())
        filename = self.snapshot_filename(".solverstate")
        log.info("Snapshotting solver state to binary proto file %s", filename)
        write_binary_proto(filename, state)

    def _snapshot_state_to_hdf5(self, model_filename: str) -> None:
        import h5py

        from caffe.protoio import atomic_output

        filename = self.snapshot_filename(".solverstate.h5")
        log.info("Snapshotting solver state to HDF5 file %s", filename)
        try:
            with atomic_output(filename) as tmp, h5py.File(tmp, "w") as f:
                f.create_dataset("iter", data=np.array([self.iter], dtype=np.int32))
                f.create_dataset("learned_net", data=np.bytes_(model_filename.encode("utf-8")))
                f.create_dataset("current_step",
                                 data=np.array([self.current_step], dtype=np.int32))
                group = f.create_group("history")
                for i, blob in enumerate(self.history):
                    group.create_dataset(str(i), data=blob.cpu_data())
        except CaffeError:
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            # h5py reports a full disk as a RuntimeError or OSError raised from its flush/close.
            raise SolverError(f"Failed to write solver state to HDF5 file {filename}: "
                              f"{type(exc).__name__}: {exc}") from exc

    def _check_history(self, state_file: str, shapes: list[tuple[int, ...]],
                       protos=None) -> None:
        """The state's history blobs match this solver's in number and shape (``protos``, when
        given, let legacy 4-D shapes match as Caffe's ShapeEquals pads them)."""
        if len(shapes) != len(self.history):
            raise SolverError(f"{state_file}: Incorrect length of history blobs: the state holds "
                              f"{len(shapes)}, this {self.type_name} solver's net needs "
                              f"{len(self.history)}; was it saved from a different net or "
                              f"solver type?")
        protos = protos if protos is not None else [None] * len(shapes)
        for i, (shape, blob, proto) in enumerate(zip(shapes, self.history, protos)):
            if tuple(shape) != blob.shape and not (proto is not None and
                                                   blob.shape_equals(proto)):
                raise SolverError(f"{state_file}: history blob {i} ({self._param_label(i)}) has "
                                  f"shape {list(shape)} but the net's parameter has shape "
                                  f"{list(blob.shape)}; the snapshot is from a different net")

    @staticmethod
    def _check_counters(state_file: str, iteration: int, current_step: int) -> None:
        """A solver state's iter and current_step count iterations and steps: never negative."""
        if iteration < 0:
            raise SolverError(f"{state_file}: solver state iter is {iteration}; it counts the "
                              f"iterations done and cannot be negative")
        if current_step < 0:
            raise SolverError(f"{state_file}: solver state current_step is {current_step}; it "
                              f"counts learning rate steps and cannot be negative")

    @staticmethod
    def _decode_learned_net(state_file: str, learned_net: str | bytes) -> str:
        """The weights file name a solver state holds, which must be UTF-8 text."""
        if isinstance(learned_net, str):
            return learned_net
        try:
            return learned_net.decode("utf-8")
        except UnicodeDecodeError:
            shown = learned_net[:40] + (b"..." if len(learned_net) > 40 else b"")
            raise SolverError(f"{state_file}: solver state learned_net is not a UTF-8 file name "
                              f"({shown!r})") from None

    def _copy_learned_net(self, state_file: str, learned_net: str) -> None:
        path = self._learned_net_path(learned_net, state_file)
        try:
            self.net.copy_from(path)
        except SolverError:
            raise
        except CaffeError as exc:
            raise SolverError(f"{state_file}: its weights {path!r} do not fit this solver's "
                              f"net: {exc}") from None

    def restore_solver_state_from_binary_proto(self, state_file: str) -> None:
        from caffe.blob import proto_shape
        from caffe.protoio import read_binary_proto

        state = read_binary_proto(state_file, caffe_pb2.SolverState(), "solver state")
        self._check_counters(state_file, state.iter, state.current_step)
        self._check_history(state_file, [tuple(proto_shape(h)) for h in state.history],
                            list(state.history))
        if state.HasField("learned_net"):
            learned_net = self._decode_learned_net(state_file, state.learned_net)
            self._copy_learned_net(state_file, learned_net)
        self.iter = state.iter
        self.current_step = state.current_step
        log.info("SGDSolver: restoring history")
        for blob, proto in zip(self.history, state.history):
            blob.from_proto(proto, reshape=False)

    def restore_solver_state_from_hdf5(self, state_file: str) -> None:
        """Resume from a .solverstate.h5: history shapes are checked before any data is read,
        and every h5py failure becomes a ``SolverError`` naming the file and the dataset."""
        import h5py

        try:
            f = h5py.File(state_file, "r")
        except (OSError, ValueError, RuntimeError) as exc:
            raise SolverError(f"Couldn't open solver state file {state_file}: {exc}") from None
        where = ""
        try:
            with f:
                for key in ("iter", "current_step", "history"):
                    if key not in f:
                        raise SolverError(f"{state_file}: not a solver state: no '{key}' in the "
                                          f"HDF5 file")
                group = f["history"]
                if not isinstance(group, h5py.Group):
                    raise SolverError(f"{state_file}: 'history' is not an HDF5 group")
                datasets = []
                for i in range(len(group)):
                    dataset = group.get(str(i))
                    if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind not in "fiub":
                        raise SolverError(f"{state_file}: history dataset '{i}' is missing or "
                                          f"not numeric")
                    datasets.append(dataset)
                self._check_history(state_file, [d.shape for d in datasets])
                arrays = []
                for i, dataset in enumerate(datasets):
                    where = f" (dataset 'history/{i}')"
                    arrays.append(dataset[()])
                where = " (dataset 'iter')"
                iteration = int(np.asarray(f["iter"]).reshape(-1)[0])
                where = " (dataset 'current_step')"
                current_step = int(np.asarray(f["current_step"]).reshape(-1)[0])
                if "learned_net" in f:
                    where = " (dataset 'learned_net')"
                    learned_net = f["learned_net"][()]
                    if isinstance(learned_net, np.ndarray):
                        learned_net = learned_net.reshape(-1)[0]
                    if isinstance(learned_net, bytes):
                        learned_net = learned_net.decode("utf-8")
                    self._copy_learned_net(state_file, str(learned_net))
        except CaffeError:
            raise
        except (OSError, KeyError, ValueError, TypeError, IndexError, OverflowError,
                RuntimeError, UnicodeDecodeError) as exc:
            raise SolverError(f"Error reading solver state from HDF5 file {state_file}{where}: "
                              f"{type(exc).__name__}: {exc}") from None
        self._check_counters(state_file, iteration, current_step)
        self.iter = iteration
        self.current_step = current_step
        for blob, values in zip(self.history, arrays):
            blob.data[...] = values
