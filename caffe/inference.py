"""Optimized TEST-time execution of a Net: ``net.optimize_for_inference()``.

The per-layer path keeps every blob of the net readable after a forward, as pycaffe does, and
pays for it: each layer writes into its blob's fixed NCHW storage (one extra copy for
convolutions), runs through Python one layer at a time, and holds every activation in memory.
Deployment rarely needs that. ``optimize_for_inference`` turns the net (after its leading data
layers) into one ``caffe.export`` module and runs that instead:

- ``fold``: BatchNorm/Scale folded into the convolution or inner product before them, Dropout and
  Split removed (``caffe.export.fold``; exact in real arithmetic);
- ``channels_last``: 4-D activations in NHWC memory order, which sends convolutions to oneDNN's
  kernels on CPU (NCHW convolutions there use a slower im2col path);
- ``precision``: ``"float32"`` (default), or ``"bfloat16"``/``"float16"`` through
  ``caffe.export.precision`` (accuracy bounds in the docs' precision page);
- ``compile``: ``torch.compile`` of that module (kernels fused and generated at the first
  forward, which takes seconds to a minute; off by default);
- memory: activations live only while the module needs them, and the blobs that are not
  outputs (or named in ``keep``) give their storage back. Reading such a blob's values through
  ``.data``/``.diff`` raises a CaffeError that says which blobs are kept.

The module holds converted copies of the weights taken when it is built: ``copy_from``,
``copy_trained_layers_from``, ``load_hdf5`` and ``share_with`` rebuild it, and a change made
through ``net.params[...]`` needs another ``optimize_for_inference`` call (the docs say so).
Only the whole-net forward runs the module; ``forward(start=..., end=...)`` and ``backward``
raise until ``net.clear_inference_optimization()`` restores the per-layer path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from caffe import common
from caffe.errors import CaffeError, NetError
from caffe.proto import caffe_pb2
from caffe.syncedmem import SyncedMemory

# Layers the module cannot hold that may still lead the net: they run per layer first and their
# tops become the module's inputs.
_LEADING_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData",
                  "DenseImageData", "ImageSegData", "AnnotatedData", "Input", "Python"}


@dataclass(frozen=True)
class InferenceOptions:
    """What ``optimize_for_inference`` was asked for (``net.inference_options``)."""

    keep: tuple[str, ...] = ()
    fold: bool = True
    channels_last: bool = True
    precision: str = "float32"
    compile: bool = False


class ReleasedMemory(SyncedMemory):
    """The storage of a blob that optimized inference does not keep: torch-side access
    allocates as usual (a layer's reshape may touch it), host (numpy) reads raise."""

    __slots__ = ("blob_name", "kept")

    def __init__(self, size: int, dtype: torch.dtype, blob_name: str,
                 kept: Sequence[str]) -> None:
        super().__init__(size, dtype)
        self.blob_name = blob_name
        self.kept = tuple(kept)

    def _refuse(self):
        raise CaffeError(
            f"blob {self.blob_name!r} is not kept by optimize_for_inference(): its values are "
            f"not computed into it (kept blobs: {list(self.kept)}). Pass "
            f"keep=[{self.blob_name!r}] to optimize_for_inference, or call "
            f"net.clear_inference_optimization() for pycaffe's per-layer forward")

    def cpu_data(self):
        self._refuse()

    def mutable_cpu_data(self):
        self._refuse()


def _compiled(module, net_name: str):
    """``torch.compile`` of the module; its first forward builds the kernels (a C++ compiler
    is needed on CPU), so failures are reported there, naming the net."""
    compiled = torch.compile(module)

    def run(*inputs):
        try:
            return compiled(*inputs)
        except Exception as exc:  # inductor's errors are many and version dependent
            if isinstance(exc, CaffeError):
                raise
            raise CaffeError(f"optimize_for_inference(compile=True) of net {net_name!r}: "
                             f"torch.compile failed ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); on CPU it needs "
                             f"a C++ compiler (g++ or clang). compile=False runs the same "
                             f"module eagerly") from None

    return run


def _precision_dtype(precision: str) -> torch.dtype:
    if precision in ("float32", "fp32"):
        return torch.float32
    from caffe.export.precision import parse_precision

    return parse_precision(precision)


class InferenceEngine:
    """The module standing in for a Net's layers after ``optimize_for_inference``."""

    def __init__(self, net, options: InferenceOptions) -> None:
        if net.phase != caffe_pb2.TEST:
            raise NetError(f"optimize_for_inference: net {net.name!r} is in the TRAIN phase; "
                           f"build it with caffe.TEST (batch statistics and Dropout are "
                           f"training behaviour)")
        names = net._blob_names
        unknown = [k for k in options.keep if k not in net.blob_names_index]
        if unknown:
            raise NetError(f"optimize_for_inference: keep= names blob(s) {unknown} that net "
                           f"{net.name!r} does not have")
        self.net = net
        self.options = options
        # Leading layers the module cannot hold run per layer; their tops feed the module.
        self.leading = 0
        while (self.leading < len(net.layers) and not net.bottom_id_vecs[self.leading]
               and net.layers[self.leading].type in _LEADING_TYPES):
            self.leading += 1
        fed = [names[b] for i in range(self.leading) for b in net.top_id_vecs[i]]
        self.inputs = list(dict.fromkeys(list(net.inputs) + fed))
        self.outputs = list(dict.fromkeys(list(net.outputs) + [
            k for k in options.keep if k not in self.inputs]))
        self.device = common.device() if common.mode() == common.GPU else torch.device("cpu")
        self.mode = common.mode()
        from caffe.export.torch_module import CaffeModule, build_plan

        with common.preserved_rng():  # folding builds a Net, whose fillers would draw
            # The weights that need no conversion stay views of the net's blobs.
            module = CaffeModule(build_plan(net, self.inputs, self.outputs, options.fold,
                                            share_weights=True))
        module = module.eval().to(self.device)
        if options.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.dtype = _precision_dtype(options.precision)
        if self.dtype != torch.float32:
            from caffe.export.precision import cast_module

            module = cast_module(module, self.dtype)
        if options.compile:
            module = _compiled(module, net.name)
        self.module = module
        self.loss_weights = [float(net.blob_loss_weights[o]) for o in self.outputs]
        self._input_blobs = [net.blobs[n] for n in self.inputs]
        self._output_blobs = [net.blobs[n] for n in self.outputs]
        self.release()

    def release(self) -> None:
        """Give back the storage of every blob that is neither fed nor computed into."""
        kept = set(self.inputs) | set(self.outputs)
        kept_memory = {id(self.net.blobs[n].data_mem) for n in kept}
        kept_list = sorted(kept)
        for name, blob in self.net.blobs.items():
            if name in kept or id(blob.data_mem) in kept_memory:
                continue
            if isinstance(blob.data_mem, ReleasedMemory):
                continue
            blob.replace_memory(ReleasedMemory(blob.capacity, blob.dtype, name, kept_list),
                                ReleasedMemory(blob.capacity, blob.dtype, name, kept_list))

    def _input(self, blob) -> torch.Tensor:
        x = blob.device_data()
        if self.options.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self) -> float:
        """Run the leading layers, then the module; write the outputs; return the loss."""
        net = self.net
        if common.mode() != self.mode:
            raise NetError(f"net {net.name!r} was optimized for inference in "
                           f"{'GPU' if self.mode == common.GPU else 'CPU'} mode; call "
                           f"optimize_for_inference() again after changing the mode")
        loss = net.forward_from_to(0, self.leading - 1) if self.leading else 0.0
        with torch.inference_mode():
            outs = self.module(*[self._input(b) for b in self._input_blobs])
        for blob, out, weight in zip(self._output_blobs, outs, self.loss_weights):
            if blob.shape != tuple(out.shape):
                blob.reshape(list(out.shape))
            blob.mutable_device_data().copy_(out)
            if weight:
                loss += weight * float(out.sum())
        return loss


def optimize(net, keep: Sequence[str] = (), fold: bool = True, channels_last: bool = True,
             precision: str = "float32", compile: bool = False) -> None:
    """Make ``net``'s whole-net forward run as one optimized module (see this module's doc)."""
    if isinstance(keep, str):
        raise CaffeError(f"optimize_for_inference: keep= takes a list of blob names, got the "
                         f"string {keep!r}; write keep=[{keep!r}]")
    options = InferenceOptions(keep=tuple(keep), fold=bool(fold),
                               channels_last=bool(channels_last), precision=str(precision),
                               compile=bool(compile))
    clear(net)
    net._inference = InferenceEngine(net, options)


def clear(net) -> None:
    """Back to the per-layer path; released blobs get fresh (zero) storage, as at net build."""
    engine = getattr(net, "_inference", None)
    net._inference = None
    if engine is None:
        return
    for blob in net.blobs.values():
        if isinstance(blob.data_mem, ReleasedMemory):
            blob.replace_memory(SyncedMemory(blob.capacity, blob.dtype),
                                SyncedMemory(blob.capacity, blob.dtype))


def refresh(net) -> None:
    """Rebuild the module after the net's weights were replaced (copy_from and friends)."""
    engine = getattr(net, "_inference", None)
    if engine is not None:
        optimize(net, **vars(engine.options))
