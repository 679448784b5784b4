"""Layer base class and the registry of layer types (Caffe's Layer and LayerRegistry)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

import torch

from caffe.blob import Blob, BlobVec
from caffe.errors import CaffeError, LayerError
from caffe.phase import Phase

_REGISTRY: dict[str, type[Layer]] = {}


def register(*type_names: str) -> Callable[[type[Layer]], type[Layer]]:
    """Class decorator: make a layer class available under Caffe type string(s)."""

    def wrap(cls: type[Layer]) -> type[Layer]:
        for name in type_names:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise CaffeError(f"layer type {name!r} is already registered")
            _REGISTRY[name] = cls
        if not getattr(cls, "type_name", None) or cls.type_name == "Layer":
            cls.type_name = type_names[0]
        return cls

    return wrap


def layer_type_list() -> list[str]:
    """Every registered layer type, sorted (pycaffe's caffe.layer_type_list())."""
    _load_builtin_layers()
    return sorted(_REGISTRY)


def create_layer(param, dtype: torch.dtype = torch.float32) -> Layer:
    """Instantiate the layer that ``param`` (a LayerParameter) names by its type."""
    _load_builtin_layers()
    cls = _REGISTRY.get(param.type)
    if cls is None:
        close = difflib.get_close_matches(param.type, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise LayerError(f"Unknown layer type: {param.type!r} (layer {param.name!r}){hint} "
                         f"Known types: caffe.layer_type_list()")
    return cls(param, dtype=dtype)


def _load_builtin_layers() -> None:
    import caffe.layers  # noqa: F401  (registers every built-in type on import)


#: torch's parallel grain size (at::internal::GRAIN_SIZE): below it torch's own elementwise
#: kernels stay on one thread, but some (softmax, convolution) still open a parallel region,
#: which costs ~60 us on a busy 2-core machine against ~3 us of work
SMALL_LAYER_COUNT = 32768


def _one_thread_if_small(layer: Layer, bottom: Sequence[Blob], top: Sequence[Blob]) -> int:
    """Drop torch to one thread for a parameter-free layer whose blobs hold fewer than
    SMALL_LAYER_COUNT values in all; returns the thread count to restore afterwards (0: nothing
    changed). Layers with parameters keep the pool: their GEMMs can round differently on one
    thread than on two (LeNet's weights moved by 6e-8), and numbers must not depend on this."""
    threads = torch.get_num_threads()
    if threads == 1 or len(layer.blobs):
        return 0
    if sum(b.count for b in bottom) + sum(b.count for b in top) >= SMALL_LAYER_COUNT:
        return 0
    torch.set_num_threads(1)
    return threads


class Layer:
    """One computation over lists of bottom and top Blobs.

    Subclasses implement ``setup`` (read the parameter message, make ``self.blobs``),
    ``reshape`` (shape tops from bottoms; runs before every forward), ``forward`` and
    ``backward``. Built-in layers overwrite bottom diffs and accumulate into parameter diffs.
    The framework entry points are ``SetUp``, ``Forward`` and ``Backward``, as in Caffe.
    """

    type_name = "Layer"
    # Blob-count declarations (-1: unchecked), as Caffe's ExactNumBottomBlobs() and friends.
    exact_num_bottom = -1
    min_bottom = -1
    max_bottom = -1
    exact_num_top = -1
    min_top = -1
    max_top = -1
    equal_num_bottom_top = False
    # Caffe's AutoTopBlobs(): the net creates anonymous tops up to max(min_top, exact_num_top).
    auto_top_blobs = False

    def __init__(self, param, dtype: torch.dtype = torch.float32) -> None:
        self.layer_param = param
        # An int that prints as its name: pycaffe's int and the Faster R-CNN fork's enum.
        self.phase = Phase(param.phase)
        self.dtype = dtype
        self.blobs = BlobVec(dtype=dtype)
        for proto in param.blobs:
            blob = Blob(dtype=dtype)
            blob.from_proto(proto)
            self.blobs.append(blob)
        self.param_propagate_down: list[bool] = []
        self.loss_weights: list[float] = []

    # --- identity ----------------------------------------------------------------------------
    @property
    def blobs(self) -> BlobVec:
        """The parameter blobs (pycaffe's BlobVec); a list assigned here is wrapped in one."""
        return self._blob_vec

    @blobs.setter
    def blobs(self, value) -> None:
        self._blob_vec = value if isinstance(value, BlobVec) else BlobVec(value, self.dtype)

    @property
    def type(self) -> str:
        """The layer's Caffe type string, e.g. ``"Convolution"``."""
        return self.type_name

    @property
    def name(self) -> str:
        """The layer's name from its LayerParameter."""
        return self.layer_param.name

    def check(self, condition: bool, message: str) -> None:
        """Caffe's CHECK: raise a LayerError naming this layer when ``condition`` fails."""
        if not condition:
            raise LayerError(f"{self.type_name} layer {self.name!r}: {message}")

    def allow_force_backward(self, bottom_index: int) -> bool:
        """Whether force_backward may send a gradient to this bottom (not to labels, say)."""
        return True

    # --- to implement ------------------------------------------------------------------------
    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """Layer-specific one-time setup (Caffe's LayerSetUp)."""

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """Shape the tops (and internal buffers) from the bottoms."""

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """Compute the tops from the bottoms (Caffe's Forward_cpu/gpu); a loss layer writes its loss
        into its top."""
        raise NotImplementedError

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool],
                 bottom: Sequence[Blob]) -> None:
        """Compute bottom diffs; layers with no gradient leave this as a no-op."""

    # --- framework -----------------------------------------------------------------------------
    def SetUp(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:  # noqa: N802
        """Check blob counts, run setup and reshape, and install loss weights in top diffs."""
        self.check_blob_counts(bottom, top)
        self.setup(bottom, top)
        if len(self.param_propagate_down) < len(self.blobs):
            self.param_propagate_down += [True] * (len(self.blobs) - len(self.param_propagate_down))
        self.reshape(bottom, top)
        self.set_loss_weights(top)

    def Forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> float:  # noqa: N802
        """Reshape, run forward, and return the weighted loss of the loss-bearing tops."""
        self.reshape(bottom, top)
        threads = _one_thread_if_small(self, bottom, top)
        try:
            self.forward(bottom, top)
        finally:
            if threads:
                torch.set_num_threads(threads)
        loss = 0.0
        for i, weight in enumerate(self.loss_weights):
            if weight and i < len(top):
                data, diff = top[i].device_data(), top[i].device_diff()
                if top[i].count == 1:  # scalar losses: skip the dot product's overhead
                    loss += data.item() * diff.item()
                else:
                    loss += float(torch.dot(data.reshape(-1), diff.reshape(-1)))
        return loss

    def Backward(self, top: Sequence[Blob], propagate_down: Sequence[bool],  # noqa: N802
                 bottom: Sequence[Blob]) -> None:
        """C++ Caffe's spelling of ``backward``."""
        threads = _one_thread_if_small(self, bottom, top)
        try:
            self.backward(top, propagate_down, bottom)
        finally:
            if threads:
                torch.set_num_threads(threads)

    def check_blob_counts(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """Raise a LayerError naming the layer when the bottom or top count breaks the class's
        exact/min/max counts."""
        nb, nt = len(bottom), len(top)
        if self.exact_num_bottom >= 0:
            self.check(nb == self.exact_num_bottom,
                       f"takes {self.exact_num_bottom} bottom blob(s) as input, got {nb}")
        if self.min_bottom >= 0:
            self.check(nb >= self.min_bottom,
                       f"takes at least {self.min_bottom} bottom blob(s) as input, got {nb}")
        if self.max_bottom >= 0:
            self.check(nb <= self.max_bottom,
                       f"takes at most {self.max_bottom} bottom blob(s) as input, got {nb}")
        if self.exact_num_top >= 0:
            self.check(nt == self.exact_num_top,
                       f"produces {self.exact_num_top} top blob(s) as output, got {nt}")
        if self.min_top >= 0:
            self.check(nt >= self.min_top,
                       f"produces at least {self.min_top} top blob(s) as output, got {nt}")
        if self.max_top >= 0:
            self.check(nt <= self.max_top,
                       f"produces at most {self.max_top} top blob(s) as output, got {nt}")
        if self.equal_num_bottom_top:
            self.check(nb == nt, f"needs as many top blobs as bottom blobs ({nb} vs {nt})")

    def set_loss_weights(self, top: Sequence[Blob]) -> None:
        """Record each top's loss weight and write it into the top's diff (Caffe's trick that
        lets Forward's dot(data, diff) be the weighted loss and seeds the backward pass)."""
        weights = list(self.layer_param.loss_weight)
        if weights:
            self.check(len(weights) == len(top),
                       f"loss_weight must be unspecified or given once per top blob "
                       f"({len(weights)} weights, {len(top)} tops)")
        self.loss_weights = weights + [0.0] * (len(top) - len(weights))
        for blob, weight in zip(top, self.loss_weights):
            if weight:
                blob.mutable_device_diff().fill_(weight)

    def loss(self, top_index: int) -> float:
        """The loss weight of top ``top_index`` (0 for tops that are not losses)."""
        return self.loss_weights[top_index] if top_index < len(self.loss_weights) else 0.0

    def to_proto(self, write_diff: bool = False):
        """The LayerParameter with this layer's current blobs."""
        param = type(self.layer_param)()
        param.CopyFrom(self.layer_param)
        del param.blobs[:]
        for blob in self.blobs:
            blob.to_proto(param.blobs.add(), write_diff=write_diff)
        return param

    def __repr__(self) -> str:
        return f"<{self.type_name} layer {self.name!r}>"


class LossLayer(Layer):
    """Base for losses: two bottoms (prediction, target), one scalar top, weight 1 by default."""

    exact_num_bottom = 2
    exact_num_top = 1
    # A loss written without ``top:`` still gets its top: the net makes an unnamed one.
    auto_top_blobs = True

    def __init__(self, param, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(param, dtype)

    def set_loss_weights(self, top: Sequence[Blob]) -> None:
        if not self.layer_param.loss_weight:
            self.layer_param.loss_weight.append(1.0)
            self.layer_param.loss_weight.extend([0.0] * (len(top) - 1))
        super().set_loss_weights(top)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        if bottom[0].num_axes and bottom[1].num_axes and bottom[0].shape[0] != bottom[1].shape[0]:
            self.check(False, f"The data and label should have the same first dimension "
                              f"(bottom shapes {list(bottom[0].shape)} and "
                              f"{list(bottom[1].shape)})")
        top[0].reshape([])


class NeuronLayer(Layer):
    """Base for elementwise layers: one bottom, one top of the same shape (in-place allowed)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])
