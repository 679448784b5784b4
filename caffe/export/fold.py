"""TEST-time simplification of a Net: fold BatchNorm / Scale into the layer before, drop
Dropout and Split.

``fold_net(net)`` returns a new TEST-phase :class:`caffe.Net` (its own NetParameter and
blobs; ``net`` is untouched) that computes the same outputs with fewer layers:

- **BatchNorm** with global statistics, y = (x - m / s) / sqrt(v / s + eps) (s the scale-factor
  blob, 1/s taken as 0 when s is 0, as the layer does), and a **Scale** after it,
  z = y * gamma (+ beta), are folded into the Convolution, Deconvolution or InnerProduct whose
  top feeds them: per output channel c, a_c = gamma_c / sqrt(v_c / s + eps), the weights of
  channel c are multiplied by a_c and the bias becomes b_c * a_c + beta_c - a_c * m_c / s.
  A layer without a bias gains one. A Scale straight after such a layer folds the same way.
  Folding is done only where it is exact in real arithmetic: the producer's top version is
  consumed by the BatchNorm / Scale alone (post-split, so in-place chains count as one
  consumer each), it is not a net output or a ``keep`` blob, parameters are not shared with
  other layers, the producer has one bottom and one top, the channel axis is 1 (InnerProduct
  ``axis: 1``; Scale ``axis: 1, num_axes: 1`` with a learned scale), and the BatchNorm uses
  global statistics.
- **Dropout** whose TEST output is the identity (``scale_train`` true, Caffe 1.0's only
  behaviour) and **Split** are removed; their consumers read the bottom instead (a Split
  with a consumer running in place on one of its tops stays: its tops share data).

Blob names of the net outputs (and of ``keep``) are preserved: a folded producer takes the top
name of the last layer folded into it, and a Dropout or Split whose own top name must stay
(other than in place) is kept. The NetParameter the new net is built from has no Split layers;
the net inserts its own where one blob feeds several layers (``insert_splits``, as every caffe
Net does), so ``folded.layers`` and ``folded.param`` may list some again.

Fusing Convolution + ReLU is a concern of the target runtime (an ONNX runtime or
``torch.compile`` fuses them itself), so no such fusion is done here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from caffe import filler
from caffe.errors import NetError
from caffe.proto import caffe_pb2

_PRODUCERS = ("Convolution", "Deconvolution", "InnerProduct")


@dataclass
class _Fold:
    """One producer layer with the BatchNorm and/or Scale layers folded into it."""

    producer: int
    folded: list[int] = field(default_factory=list)


def fold_net(net, *, keep: Iterable[str] = (), share_weights: bool = False):
    """An equivalent TEST-phase Net with BatchNorm/Scale folded and Dropout/Split removed.

    ``keep`` names blobs that must survive with their names (besides the net outputs), e.g.
    the ``outputs=`` of a partial export. ``share_weights``: the layers that are not folded
    share their blobs' storage with ``net``'s (``Blob.share_data``) instead of copying it.
    Raises :class:`caffe.errors.NetError` for a TRAIN net (batch statistics and active Dropout
    have no test-time equivalent).
    """
    from caffe.net import Net

    if net.phase != caffe_pb2.TEST:
        raise NetError(f"fold_net: net {net.name!r} is in the TRAIN phase; folding is a "
                       f"test-time simplification (build the net with caffe.TEST)")
    protected = set(net.outputs) | set(keep)
    graph = _Graph(net)
    folds = graph.find_folds(protected)
    param = graph.rebuild(folds, protected)
    with filler.skipped():  # every parameter is written by _copy_weights
        folded = Net(param, caffe_pb2.TEST, dtype=net.dtype,
                     allow_python_layers=net.allow_python_layers)
    _copy_weights(net, folded, folds, share_weights)
    return folded


class _Graph:
    """The post-split layer list of a net with, for every top version, its consumers."""

    def __init__(self, net) -> None:
        self.net = net
        self.layers = net.layers
        self.params = [layer.layer_param for layer in net.layers]
        # consumers[(layer, top index)] = [(layer, bottom index), ...]
        self.consumers: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self.producer_of: dict[tuple[int, int], tuple[int, int]] = {}
        current: dict[str, tuple[int, int]] = {}
        self.in_place_readers: set[tuple[int, int]] = set()
        for i, lp in enumerate(self.params):
            for j, name in enumerate(lp.bottom):
                source = current.get(name)
                if source is not None:
                    self.consumers.setdefault(source, []).append((i, j))
                    self.producer_of[(i, j)] = source
                    if j < len(lp.top) and lp.top[j] == name:
                        self.in_place_readers.add(source)
            for j, name in enumerate(lp.top):
                current[name] = (i, j)
                self.consumers.setdefault((i, j), [])
        # A name's last version is what ``net.blobs[name]`` holds after forward.
        self.last_version = current
        names = Counter(spec.name for lp in self.params for spec in lp.param if spec.name)
        self.shared = {i for i, lp in enumerate(self.params)
                       if any(spec.name and names[spec.name] > 1 for spec in lp.param)}

    # -- which layers fold ---------------------------------------------------------------------
    def is_protected(self, layer_id: int, j: int, protected: set[str]) -> bool:
        """Whether top ``j`` of the layer is the version of a protected name that survives."""
        name = self.params[layer_id].top[j]
        return name in protected and self.last_version.get(name) == (layer_id, j)

    def _sole_consumer(self, layer_id: int, protected: set[str]) -> int | None:
        lp = self.params[layer_id]
        if len(lp.top) != 1 or self.is_protected(layer_id, 0, protected):
            return None
        users = self.consumers[(layer_id, 0)]
        if len(users) != 1:
            return None
        consumer, _ = users[0]
        return consumer

    def _foldable_producer(self, i: int) -> bool:
        lp = self.params[i]
        if lp.type not in _PRODUCERS or len(lp.bottom) != 1 or len(lp.top) != 1:
            return False
        if i in self.shared or not self.layers[i].blobs:
            return False
        if lp.type == "InnerProduct":
            axes = self.net.blobs[lp.bottom[0]].num_axes
            axis = lp.inner_product_param.axis
            return (axis if axis >= 0 else axis + axes) == 1
        return True

    def _foldable_bn(self, k: int) -> bool:
        return (self.params[k].type == "BatchNorm" and k not in self.shared
                and bool(self.layers[k].use_global_stats))

    def _foldable_scale(self, k: int, channels: int) -> bool:
        lp, layer = self.params[k], self.layers[k]
        if lp.type != "Scale" or len(lp.bottom) != 1 or k in self.shared:
            return False
        axes = self.net.blobs[lp.bottom[0]].num_axes
        axis = lp.scale_param.axis
        scale = layer.blobs[0]
        return ((axis if axis >= 0 else axis + axes) == 1 and scale.num_axes == 1
                and scale.count == channels)

    def find_folds(self, protected: set[str]) -> list[_Fold]:
        folds = []
        taken: set[int] = set()
        for i in range(len(self.params)):
            if i in taken or not self._foldable_producer(i):
                continue
            channels = _out_channels(self.layers[i])
            fold = _Fold(i)
            at = i
            nxt = self._sole_consumer(at, protected)
            if nxt is not None and self._foldable_bn(nxt) \
                    and self.layers[nxt].channels == channels:
                fold.folded.append(nxt)
                at = nxt
                nxt = self._sole_consumer(at, protected)
            if nxt is not None and self._foldable_scale(nxt, channels):
                fold.folded.append(nxt)
            if fold.folded:
                folds.append(fold)
                taken.update(fold.folded)
        return folds

    # -- the new NetParameter ------------------------------------------------------------------
    def _removable(self, i: int, protected: set[str]) -> bool:
        lp = self.params[i]
        if lp.type not in ("Split", "Dropout") or not lp.bottom:
            return False
        if any(self.is_protected(i, j, protected) and top != lp.bottom[0]
               for j, top in enumerate(lp.top)):
            return False  # a name that must stay, and nothing else can produce it
        if lp.type == "Split":
            # Split tops share the bottom's data: a consumer running in place on one changes
            # them all, which reading the bottom directly would not reproduce.
            return not any((i, j) in self.in_place_readers for j in range(len(lp.top)))
        layer = self.layers[i]  # a Dropout: the identity at TEST when it does not rescale
        return getattr(layer, "test_scale", 1.0) == 1.0 and len(lp.bottom) == 1

    def rebuild(self, folds: list[_Fold], protected: set[str]) -> caffe_pb2.NetParameter:
        """The folded NetParameter: layers copied without their phase rules (the net is
        already filtered), bottoms renamed through the aliases of removed layers."""
        dropped = {k for f in folds for k in f.folded}
        last_top = {f.producer: self.params[f.folded[-1]].top[0] for f in folds}
        alias: dict[str, str] = {}
        kept: list[caffe_pb2.LayerParameter] = []
        for i, old in enumerate(self.params):
            if i in dropped:
                continue  # its top name is taken over by the producer (``last_top``)
            if self._removable(i, protected):
                source = alias.get(old.bottom[0], old.bottom[0])
                for top in old.top:
                    alias[top] = source
                continue
            lp = caffe_pb2.LayerParameter()
            lp.CopyFrom(old)
            del lp.include[:]
            del lp.exclude[:]
            for j, name in enumerate(lp.bottom):
                lp.bottom[j] = alias.get(name, name)
            if i in last_top:
                # The producer now computes what the last folded layer wrote, under its name:
                # its own top (and the BatchNorm's) was read by the folded layers only.
                lp.top[0] = last_top[i]
                _prepare_bias(lp)
            for name in lp.top:
                alias.pop(name, None)
            kept.append(lp)
        param = caffe_pb2.NetParameter()
        param.CopyFrom(self.net.param)
        del param.layer[:]
        param.layer.extend(kept)
        param.state.phase = caffe_pb2.TEST
        return param


def _out_channels(layer) -> int:
    lp = layer.layer_param
    if lp.type == "InnerProduct":
        return lp.inner_product_param.num_output
    if lp.type == "Deconvolution":
        return layer.blobs[0].shape[1] * max(1, lp.convolution_param.group)
    return layer.blobs[0].shape[0]


def _channel_affine(net, fold: _Fold, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (a, c) with folded(x) = a * x + c, in float64."""
    a = np.ones(channels)
    c = np.zeros(channels)
    for k in fold.folded:
        layer = net.layers[k]
        blobs = [b.cpu_data().astype(np.float64).reshape(-1) for b in layer.blobs]
        if layer.layer_param.type == "BatchNorm":
            factor = blobs[2][0]
            inv = 0.0 if factor == 0 else 1.0 / factor
            mean, var = blobs[0] * inv, blobs[1] * inv
            # Caffe adds eps in the blob's precision; so does the layer.
            inv_std = 1.0 / np.sqrt(var + np.float64(np.float32(layer.eps)))
            a, c = a * inv_std, (c - mean) * inv_std
        else:
            gamma = blobs[0]
            beta = blobs[1] if layer.bias_term else 0.0
            a, c = a * gamma, c * gamma + beta
    return a, c


def _folded_weights(net, fold: _Fold) -> tuple[np.ndarray, np.ndarray]:
    layer = net.layers[fold.producer]
    lp = layer.layer_param
    weight = layer.blobs[0].cpu_data().astype(np.float64)
    channels = _out_channels(layer)
    has_bias = len(layer.blobs) > 1
    bias = layer.blobs[1].cpu_data().astype(np.float64).reshape(-1) if has_bias \
        else np.zeros(channels)
    a, c = _channel_affine(net, fold, channels)
    if lp.type == "InnerProduct" and lp.inner_product_param.transpose:
        weight = weight * a.reshape(1, -1)  # (K, N)
    elif lp.type == "Deconvolution":
        group = max(1, lp.convolution_param.group)
        shape = weight.shape
        w = weight.reshape(group, shape[0] // group, shape[1], -1)
        w = w * a.reshape(group, 1, shape[1], 1)
        weight = w.reshape(shape)
    else:
        weight = weight * a.reshape((-1,) + (1,) * (weight.ndim - 1))
    return weight, bias * a + c


def _copy_weights(net, folded, folds: list[_Fold], share: bool) -> None:
    by_producer = {net.layers[f.producer].layer_param.name: f for f in folds}
    old_layers = {layer.layer_param.name: layer for layer in net.layers}
    for layer in folded.layers:
        name = layer.layer_param.name
        fold = by_producer.get(name)
        if fold is not None:
            weight, bias = _folded_weights(net, fold)
            layer.blobs[0].data[...] = weight.reshape(layer.blobs[0].shape)
            layer.blobs[1].data[...] = bias.reshape(layer.blobs[1].shape)
            continue
        old = old_layers.get(name)
        if old is None:
            continue
        for target, source in zip(layer.blobs, old.blobs, strict=True):
            if share:
                target.share_data(source)
            else:
                target.data[...] = source.cpu_data()


def _prepare_bias(lp: caffe_pb2.LayerParameter) -> None:
    """Give a folded producer a bias term (Caffe's bias blob is its second parameter)."""
    if lp.type == "InnerProduct":
        lp.inner_product_param.bias_term = True
    else:
        lp.convolution_param.bias_term = True
    if len(lp.param) == 1:
        # A ParamSpec for the new bias: no learning of a folded layer's bias is implied.
        lp.param.add()
