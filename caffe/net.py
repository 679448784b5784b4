"""Net: a graph of layers built from a NetParameter, with Caffe's Init and run-time semantics.

Building follows C++ Caffe: upgrade legacy formats, filter layers by NetState, insert Split
layers where one top feeds several bottoms, then for each layer link bottoms, create tops
(in place when a top reuses its bottom's name), set it up, record loss weights and share
parameters named in ParamSpec; finally work out which layers need backward.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NoReturn

import numpy as np
import torch

from caffe.blob import Blob
from caffe.errors import CaffeError, NetError, add_note
from caffe.layer import Layer, create_layer
from caffe.proto import caffe_pb2

log = logging.getLogger("caffe")

# The name Caffe's Net::AppendTop gives the tops it creates for a layer's AutoTopBlobs().
AUTOMATIC_TOP = "(automatic)"


# --- NetState filtering -----------------------------------------------------------------------
def state_meets_rule(state, rule, layer_name: str = "") -> bool:
    """Whether a NetState satisfies one NetStateRule (phase, level range, stages)."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Keep the layers whose include/exclude rules admit the net's state."""
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(param)
    del filtered.layer[:]
    for layer in param.layer:
        if len(layer.include) and len(layer.exclude):
            raise NetError(f"layer {layer.name!r}: specify either include rules or exclude rules; "
                           f"not both")
        included = len(layer.include) == 0
        if any(state_meets_rule(param.state, r, layer.name) for r in layer.exclude):
            included = False
        if any(state_meets_rule(param.state, r, layer.name) for r in layer.include):
            included = True
        if included:
            filtered.layer.add().CopyFrom(layer)
    return filtered


# --- Split insertion ----------------------------------------------------------------------------
def split_layer_name(layer_name: str, blob_name: str, top_index: int) -> str:
    """Caffe's name of the Split layer inserted for top ``top_index`` of a layer:
    ``<blob>_<layer>_<i>_split``."""
    return f"{blob_name}_{layer_name}_{top_index}_split"


def split_blob_name(layer_name: str, blob_name: str, top_index: int, split_index: int) -> str:
    """Caffe's name of one Split output: ``<blob>_<layer>_<i>_split_<j>``."""
    return f"{blob_name}_{layer_name}_{top_index}_split_{split_index}"


def insert_splits(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Route every top consumed more than once (a loss use counts) through a Split layer,
    with Caffe's split layer and blob names."""
    last_top: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    uses: dict[tuple[int, int], int] = {}
    loss_weight_of: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(param.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_top:
                error = NetError(f"Unknown bottom blob '{name}' (layer '{layer.name}', bottom "
                                 f"index {j}); blobs available at this point: "
                                 f"{sorted(last_top) or 'none'}")
                error.layer_name = layer.name
                raise error
            source_of[(i, j)] = last_top[name]
            uses[last_top[name]] = uses.get(last_top[name], 0) + 1
        for j, name in enumerate(layer.top):
            last_top[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            idx = last_top[layer.top[j]]
            loss_weight_of[idx] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                uses[idx] = uses.get(idx, 0) + 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split: dict[tuple[int, int], int] = {}
    for i, src in enumerate(param.layer):
        layer = out.layer.add()
        layer.CopyFrom(src)
        for j in range(len(layer.bottom)):
            idx = source_of[(i, j)]
            if uses.get(idx, 0) > 1:
                producer = param.layer[idx[0]].name
                k = next_split.get(idx, 0)
                next_split[idx] = k + 1
                layer.bottom[j] = split_blob_name(producer, layer.bottom[j], idx[1], k)
        for j, name in enumerate(src.top):
            idx = (i, j)
            count = uses.get(idx, 0)
            if count <= 1:
                continue
            weight = loss_weight_of.get(idx, 0.0)
            split = out.layer.add()
            split.name = split_layer_name(src.name, name, j)
            split.type = "Split"
            split.bottom.append(name)
            for k in range(count):
                split.top.append(split_blob_name(src.name, name, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            if weight:
                del layer.loss_weight[:]
                next_split[idx] = next_split.get(idx, 0) + 1
    return out


def _name_list(kind: str, names: Sequence[str], wanted: str, limit: int = 40) -> str:
    """``kind: a, b, ...`` for an error message, close matches to ``wanted`` first."""
    import difflib

    close = difflib.get_close_matches(wanted, names, n=3)
    hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
    shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)"
                                        if len(names) > limit else "")
    return f"{hint}{kind}: {shown}"


ALLOW_PYTHON_LAYERS_ENV = "CAFFE_ALLOW_PYTHON_LAYERS"
_ENV_TRUE = ("1", "true", "yes", "on")
_ENV_FALSE = ("0", "false", "no", "off")


def python_layers_allowed(allow: bool | None = None) -> bool:
    """Whether a net may load Python layers: ``allow`` when given, else the
    ``CAFFE_ALLOW_PYTHON_LAYERS`` environment variable, else True (pycaffe's behaviour)."""
    if allow is not None:
        return bool(allow)
    value = os.environ.get(ALLOW_PYTHON_LAYERS_ENV, "").strip().lower()
    if not value or value in _ENV_TRUE:
        return True
    if value in _ENV_FALSE:
        return False
    raise CaffeError(f"{ALLOW_PYTHON_LAYERS_ENV}={value!r}: expected 0/1, true/false, yes/no "
                     f"or on/off")


# --- The Net --------------------------------------------------------------------------------------
class Net:
    """Caffe's Net with pycaffe's Python interface.

    ``Net(prototxt, phase)``, ``Net(prototxt, weights, phase)`` or
    ``Net(prototxt, phase, level=0, stages=[...], weights=...)``; ``prototxt`` may also be a
    NetParameter. ``allow_python_layers=False`` (or ``CAFFE_ALLOW_PYTHON_LAYERS=0`` when it is
    None) refuses a net with Python layers before their modules are imported, and keeps the
    files its layers read and write inside ``file_root`` (default: the prototxt's folder; see
    caffe.untrusted).
    """

    def __init__(self, network_file, *args, level: int = 0, stages: Sequence[str] = (),
                 weights: str | None = None, phase: int | None = None,
                 dtype: torch.dtype = torch.float32,
                 allow_python_layers: bool | None = None,
                 file_root: str | os.PathLike | None = None) -> None:
        self.allow_python_layers = python_layers_allowed(allow_python_layers)
        self._file_root_arg = file_root
        args = list(args)
        if args and isinstance(args[0], (str, os.PathLike)):
            weights = args.pop(0)
        if args:
            phase = args.pop(0)
        if args:
            raise CaffeError(f"Net(): unexpected extra arguments {args!r}")
        if phase is None:
            raise CaffeError("Net(): a phase is required: caffe.Net(prototxt, caffe.TEST) or "
                             "caffe.Net(prototxt, weights, caffe.TEST)")
        if phase not in (caffe_pb2.TRAIN, caffe_pb2.TEST):
            raise CaffeError(f"Net(): phase must be caffe.TRAIN or caffe.TEST, got {phase!r}")
        if isinstance(network_file, caffe_pb2.NetParameter):
            param = caffe_pb2.NetParameter()
            param.CopyFrom(network_file)
            from caffe.upgrade import upgrade_net_as_needed

            param = upgrade_net_as_needed(param, "<NetParameter>")
            self.source = "<NetParameter>"
        else:
            from caffe.protoio import read_net_param

            param = read_net_param(network_file)
            self.source = os.fspath(network_file)
        param.state.phase = phase
        param.state.level = level
        del param.state.stage[:]
        param.state.stage.extend(stages)
        self.dtype = dtype
        self.init(param)
        if weights:
            self.copy_from(weights)

    # ------------------------------------------------------------------------------------------
    def init(self, in_param: caffe_pb2.NetParameter) -> None:
        """Build the net (Caffe's Net::Init); untrusted nets within their file root."""
        from caffe import untrusted

        self.phase = in_param.state.phase
        filtered = filter_net(in_param)
        self.file_root = None
        if not getattr(self, "allow_python_layers", python_layers_allowed(None)):
            self._refuse_python_layers(filtered)
            self.file_root = untrusted.resolve_root(getattr(self, "source", None),
                                                    getattr(self, "_file_root_arg", None))
            untrusted.check_layer_paths(filtered, self.file_root, self._where)
        with untrusted.active_root(self.file_root):
            self._init_layers(filtered)

    def _init_layers(self, filtered: caffe_pb2.NetParameter) -> None:
        try:
            param = insert_splits(filtered)
        except NetError as exc:
            raise NetError(f"{self._where(getattr(exc, 'layer_name', ''))}: {exc}") from None
        self.name = param.name
        self.param = param
        self.debug_info = param.debug_info
        self.layers: list[Layer] = []
        self._layer_names: list[str] = []
        self.layer_names_index: dict[str, int] = {}
        self._blobs: list[Blob] = []
        self._blob_names: list[str] = []
        self.blob_names_index: dict[str, int] = {}
        self.blob_need_backward: list[bool] = []
        self.bottom_vecs: list[list[Blob]] = []
        self.bottom_id_vecs: list[list[int]] = []
        self.bottom_need_backward: list[list[bool]] = []
        self.top_vecs: list[list[Blob]] = []
        self.top_id_vecs: list[list[int]] = []
        self.layer_need_backward: list[bool] = []
        self._blob_loss_weights: list[float] = []
        self._inputs: list[int] = []
        self._outputs: list[int] = []
        self.params_list: list[Blob] = []
        self.param_id_vecs: list[list[int]] = []
        self.param_owners: list[int] = []
        self.param_display_names: list[str] = []
        self.param_layer_indices: list[tuple[int, int]] = []
        self.param_names_index: dict[str, int] = {}
        self.learnable_params: list[Blob] = []
        self.learnable_param_ids: list[int] = []
        self.params_lr: list[float] = []
        self.has_params_lr: list[bool] = []
        self.params_weight_decay: list[float] = []
        self.has_params_decay: list[bool] = []
        # Net::Callback lists (pycaffe's before_forward(fn) etc.), called with a layer index.
        self._before_forward: list[Callable[[int], object]] = []
        self._after_forward: list[Callable[[int], object]] = []
        self._before_backward: list[Callable[[int], object]] = []
        self._after_backward: list[Callable[[int], object]] = []

        available: dict[str, int] = {}
        for layer_id, lp in enumerate(param.layer):
            if not lp.HasField("phase"):
                lp.phase = self.phase
            layer = self._create(lp)
            self.layers.append(layer)
            self._layer_names.append(lp.name)
            if lp.name in self.layer_names_index:
                log.warning("duplicate layer name %r in net %r", lp.name, self.name)
            self.layer_names_index.setdefault(lp.name, layer_id)
            if len(lp.propagate_down) not in (0, len(lp.bottom)):
                raise NetError(f"layer {lp.name!r}: propagate_down param must be specified "
                               f"either 0 or bottom_size times ({len(lp.propagate_down)} given "
                               f"for {len(lp.bottom)} bottoms)")
            self.bottom_vecs.append([])
            self.bottom_id_vecs.append([])
            self.bottom_need_backward.append([])
            self.top_vecs.append([])
            self.top_id_vecs.append([])
            need_backward = False
            for j, name in enumerate(lp.bottom):
                blob_id = self._append_bottom(lp, layer_id, j, name, available)
                need_backward |= self.blob_need_backward[blob_id]
            for j, name in enumerate(lp.top):
                self._append_top(lp, layer_id, j, name, available)
            if layer.auto_top_blobs:  # e.g. a loss written without ``top:``
                for _ in range(len(lp.top), max(layer.min_top, layer.exact_num_top)):
                    self._append_auto_top(lp, layer_id)
            self._log_setup(layer, lp)
            try:
                layer.SetUp(self.bottom_vecs[layer_id], self.top_vecs[layer_id])
            except CaffeError as exc:
                shapes = [list(b.shape) for b in self.bottom_vecs[layer_id]]
                # A Python layer's error comes from user code: keep its traceback as the cause.
                raise type(exc)(f"{self._where(lp.name)}: {exc} (bottom shapes {shapes})") \
                    from (exc if lp.type == "Python" else None)
            except Exception as exc:
                self._layer_failed(layer_id, "setup", exc)
            for j, blob_id in enumerate(self.top_id_vecs[layer_id]):
                weight = layer.loss(j)
                self._blob_loss_weights[blob_id] = weight
                top = self._blobs[blob_id]
                log.info("Top shape: %s", top.shape_string())
                if weight:
                    log.info("    with loss weight %g", weight)
            n_blobs = len(layer.blobs)
            if len(lp.param) > n_blobs:
                raise NetError(f"Too many params specified for layer {lp.name!r} "
                               f"({len(lp.param)} param specs, {n_blobs} parameter blobs)")
            self.param_id_vecs.append([])
            for pid in range(n_blobs):
                spec = lp.param[pid] if pid < len(lp.param) else caffe_pb2.ParamSpec()
                param_need_backward = spec.lr_mult != 0
                need_backward |= param_need_backward
                layer.param_propagate_down[pid] = param_need_backward
                self._append_param(lp, layer_id, pid)
            self.layer_need_backward.append(need_backward)
            if need_backward:
                for blob_id in self.top_id_vecs[layer_id]:
                    self.blob_need_backward[blob_id] = True

        self._prune_backward(param)
        for name in available:
            log.info("This network produces output %s", name)
        self._outputs = [self.blob_names_index[name] for name in available]
        # As Caffe's blob_names_index_: every blob by name, the anonymous "(automatic)" tops too.
        self.blob_names_index = {name: i for i, name in enumerate(self._blob_names)}
        self._share_weights()
        log.info("Network initialization done.")

    def _create(self, lp) -> Layer:
        log.info("Creating Layer %s", lp.name)
        try:
            return create_layer(lp, dtype=self.dtype)
        except CaffeError as exc:
            # A Python layer's import or __init__ error stays chained (the user's traceback).
            raise type(exc)(f"{self._where(lp.name)}: {exc}") \
                from (exc.__cause__ if lp.type == "Python" else None)

    def _refuse_python_layers(self, param: caffe_pb2.NetParameter) -> None:
        """Untrusted-model mode: refuse a net with Python layers before any layer is created,
        so that no ``python_param.module`` is imported (its top-level code never runs)."""
        python = [lp for lp in param.layer if lp.type == "Python"]
        if not python:
            return
        lp = python[0]
        more = f" (and {len(python) - 1} more Python layer(s))" if len(python) > 1 else ""
        raise NetError(
            f"{self._where(lp.name)}: layer {lp.name!r} is a Python layer (python_param module "
            f"{lp.python_param.module!r}, layer {lp.python_param.layer!r}){more}; Python layers "
            f"are refused when allow_python_layers is False or {ALLOW_PYTHON_LAYERS_ENV}=0, "
            f"because loading one imports and runs that module. If you trust this model, pass "
            f"caffe.Net(..., allow_python_layers=True), give the tools -allow_python_layers, "
            f"or set {ALLOW_PYTHON_LAYERS_ENV}=1")

    def _where(self, layer_name: str) -> str:
        """``file:line`` of the layer named ``layer_name`` in the net's prototxt, for errors."""
        if not layer_name or not os.path.isfile(self.source):
            return self.source
        try:
            with open(self.source, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    if re.search(r"\bname\s*:\s*[\"']" + re.escape(layer_name) + r"[\"']", line):
                        return f"{self.source}:{number}"
        except OSError:
            pass
        return self.source

    def _log_setup(self, layer: Layer, lp) -> None:
        for name in lp.bottom:
            log.info("%s <- %s", lp.name, name)
        for name in lp.top:
            log.info("%s -> %s", lp.name, name)
        log.info("Setting up %s", lp.name)

    def _append_bottom(self, lp, layer_id: int, j: int, name: str, available: dict) -> int:
        if name not in available:
            raise NetError(f"{self._where(lp.name)}: Unknown bottom blob '{name}' (layer "
                           f"'{lp.name}', bottom index {j})")
        blob_id = available.pop(name)
        self.bottom_vecs[layer_id].append(self._blobs[blob_id])
        self.bottom_id_vecs[layer_id].append(blob_id)
        propagate = len(lp.propagate_down) == 0 or lp.propagate_down[j]
        self.bottom_need_backward[layer_id].append(self.blob_need_backward[blob_id] and propagate)
        return blob_id

    def _append_top(self, lp, layer_id: int, j: int, name: str, available: dict) -> None:
        if j < len(lp.bottom) and name == lp.bottom[j]:
            log.info("%s -> %s (in-place)", lp.name, name)
            blob_id = self.blob_names_index[name]
        elif name in self.blob_names_index:
            raise NetError(f"{self.source}: Top blob '{name}' produced by multiple sources "
                           f"(layer '{lp.name}', top index {j})")
        else:
            blob_id = len(self._blobs)
            self._blobs.append(Blob(dtype=self.dtype))
            self._blobs[blob_id].name = name
            self._blob_names.append(name)
            self.blob_names_index[name] = blob_id
            self.blob_need_backward.append(False)
            self._blob_loss_weights.append(0.0)
            if lp.type == "Input":
                self._inputs.append(blob_id)
        self.top_vecs[layer_id].append(self._blobs[blob_id])
        self.top_id_vecs[layer_id].append(blob_id)
        available[name] = blob_id

    def _append_auto_top(self, lp, layer_id: int) -> None:
        """An anonymous top, named "(automatic)" as Caffe names it; no later layer can take
        it as a bottom and it is no net output."""
        log.info("%s -> %s", lp.name, AUTOMATIC_TOP)
        blob_id = len(self._blobs)
        self._blobs.append(Blob(dtype=self.dtype))
        self._blob_names.append(AUTOMATIC_TOP)
        self.blob_need_backward.append(False)
        self._blob_loss_weights.append(0.0)
        self.top_vecs[layer_id].append(self._blobs[blob_id])
        self.top_id_vecs[layer_id].append(blob_id)

    def _append_param(self, lp, layer_id: int, pid: int) -> None:
        spec = lp.param[pid] if pid < len(lp.param) else caffe_pb2.ParamSpec()
        name = spec.name
        self.param_display_names.append(name or str(pid))
        net_param_id = len(self.params_list)
        blob = self.layers[layer_id].blobs[pid]
        self.params_list.append(blob)
        self.param_id_vecs[layer_id].append(net_param_id)
        self.param_layer_indices.append((layer_id, pid))
        if not name or name not in self.param_names_index:
            self.param_owners.append(-1)
            if name:
                self.param_names_index[name] = net_param_id
            self.learnable_param_ids.append(len(self.learnable_params))
            self.learnable_params.append(blob)
            self.has_params_lr.append(spec.HasField("lr_mult"))
            self.has_params_decay.append(spec.HasField("decay_mult"))
            self.params_lr.append(spec.lr_mult)
            self.params_weight_decay.append(spec.decay_mult)
            return
        owner_id = self.param_names_index[name]
        self.param_owners.append(owner_id)
        owner_layer, owner_pid = self.param_layer_indices[owner_id]
        owner_blob = self.layers[owner_layer].blobs[owner_pid]
        owner_name = self._layer_names[owner_layer]
        if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
            if owner_blob.count != blob.count:
                raise NetError(
                    f"Cannot share param '{name}' owned by layer '{owner_name}' with layer "
                    f"'{lp.name}'; count mismatch. Owner layer param shape is "
                    f"{owner_blob.shape_string()}; sharing layer shape is {blob.shape_string()}")
        elif owner_blob.shape != blob.shape:
            raise NetError(
                f"Cannot share param '{name}' owned by layer '{owner_name}' with layer "
                f"'{lp.name}'; shape mismatch. Owner layer param shape is "
                f"{owner_blob.shape_string()}; sharing layer expects shape {blob.shape_string()}")
        learnable_id = self.learnable_param_ids[owner_id]
        self.learnable_param_ids.append(learnable_id)
        if spec.HasField("lr_mult"):
            if self.has_params_lr[learnable_id]:
                if spec.lr_mult != self.params_lr[learnable_id]:
                    raise NetError(f"Shared param '{name}' has mismatched lr_mult "
                                   f"(layer '{lp.name}': {spec.lr_mult}, owner '{owner_name}': "
                                   f"{self.params_lr[learnable_id]})")
            else:
                self.has_params_lr[learnable_id] = True
                self.params_lr[learnable_id] = spec.lr_mult
        if spec.HasField("decay_mult"):
            if self.has_params_decay[learnable_id]:
                if spec.decay_mult != self.params_weight_decay[learnable_id]:
                    raise NetError(f"Shared param '{name}' has mismatched decay_mult "
                                   f"(layer '{lp.name}': {spec.decay_mult}, owner "
                                   f"'{owner_name}': {self.params_weight_decay[learnable_id]})")
            else:
                self.has_params_decay[learnable_id] = True
                self.params_weight_decay[learnable_id] = spec.decay_mult

    def _prune_backward(self, param) -> None:
        """Turn off backward for layers that do not contribute to any loss, and for bottoms
        whose gradient nobody needs; then apply force_backward."""
        under_loss: set[str] = set()
        skip_backprop: set[str] = set()
        for layer_id in reversed(range(len(self.layers))):
            layer = self.layers[layer_id]
            contributes = False
            skip_propagate = True
            for j, blob_id in enumerate(self.top_id_vecs[layer_id]):
                name = self._blob_names[blob_id]
                if layer.loss(j) or name in under_loss:
                    contributes = True
                if name not in skip_backprop:
                    skip_propagate = False
                if contributes and not skip_propagate:
                    break
            if self.layer_need_backward[layer_id] and skip_propagate:
                self.layer_need_backward[layer_id] = False
                self.bottom_need_backward[layer_id] = [False] * len(self.bottom_vecs[layer_id])
            if not contributes:
                self.layer_need_backward[layer_id] = False
            lname = self._layer_names[layer_id]
            if self.layer_need_backward[layer_id]:
                log.info("%s needs backward computation.", lname)
            else:
                log.info("%s does not need backward computation.", lname)
            for j, blob_id in enumerate(self.bottom_id_vecs[layer_id]):
                name = self._blob_names[blob_id]
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[layer_id][j] = False
                if not self.bottom_need_backward[layer_id][j]:
                    skip_backprop.add(name)
        if param.force_backward:
            for layer_id, layer in enumerate(self.layers):
                self.layer_need_backward[layer_id] = True
                for j, blob_id in enumerate(self.bottom_id_vecs[layer_id]):
                    need = self.bottom_need_backward[layer_id][j] or layer.allow_force_backward(j)
                    self.bottom_need_backward[layer_id][j] = need
                    self.blob_need_backward[blob_id] |= need
                layer.param_propagate_down = [True] * len(layer.blobs)

    def _share_weights(self) -> None:
        for i, owner in enumerate(self.param_owners):
            if owner >= 0:
                self.params_list[i].share_data(self.params_list[owner])
                self.params_list[i].share_diff(self.params_list[owner])

    # --- running -----------------------------------------------------------------------------
    def _layer_index(self, index_or_name, what: str) -> int:
        """The index of a layer given by name (pycaffe's start=/end=) or by index."""
        if isinstance(index_or_name, str):
            if index_or_name not in self.layer_names_index:
                raise NetError(f"{what}: no layer named {index_or_name!r} in net {self.name!r}"
                               f"{self._blob_hint(index_or_name)}; "
                               f"{_name_list('layers', self._layer_names, index_or_name)}")
            return self.layer_names_index[index_or_name]
        index = int(index_or_name)
        if not 0 <= index < len(self.layers):
            raise NetError(f"{what}: layer index {index} outside [0, {len(self.layers) - 1}]")
        return index

    def _blob_hint(self, name: str) -> str:
        """For a blob name given where a layer name belongs: the layers that produce it."""
        blob_id = self.blob_names_index.get(name)
        if blob_id is None:
            return ""
        producers = [self._layer_names[i] for i, ids in enumerate(self.top_id_vecs)
                     if blob_id in ids]
        return f" ({name!r} is a blob, a top of layer(s) {producers}; start/end name layers)"

    def _layer_failed(self, layer_id: int, what: str, exc: Exception) -> NoReturn:
        """Raise what a layer's foreign exception becomes: a Python layer's own exception,
        unchanged but for a note (pycaffe's callers catch it by type); anything else (a bug
        or bad input surfacing from torch/numpy) as a NetError naming the layer."""
        layer = self.layers[layer_id]
        name = self._layer_names[layer_id]
        shapes = f"bottom shapes {[list(b.shape) for b in self.bottom_vecs[layer_id]]}"
        if what == "backward":
            shapes = f"top shapes {[list(t.shape) for t in self.top_vecs[layer_id]]}, {shapes}"
        context = (f"{self._where(name)}: layer {name!r} (type {layer.type}) failed in {what} "
                   f"with {shapes}")
        if layer.type == "Python":
            add_note(exc, context)
            raise exc
        raise NetError(f"{context}: {type(exc).__name__}: {exc}") from exc

    def forward_from_to(self, start: int, end: int) -> float:
        """Forward layers start..end inclusive; returns the summed weighted loss."""
        if not self.layers:  # every layer filtered out: nothing runs, as in Caffe
            return 0.0
        if not 0 <= start <= end < len(self.layers):
            raise NetError(f"forward range [{start}, {end}] outside [0, {len(self.layers) - 1}]")
        before, after = self._before_forward, self._after_forward
        loss = 0.0
        for i in range(start, end + 1):
            if before:
                for callback in before:
                    callback(i)
            try:
                loss += self.layers[i].Forward(self.bottom_vecs[i], self.top_vecs[i])
            except CaffeError:
                raise
            except Exception as exc:
                self._layer_failed(i, "forward", exc)
            if self.debug_info:
                self._forward_debug_info(i)
            if after:
                for callback in after:
                    callback(i)
        return loss

    def backward_from_to(self, start: int, end: int) -> None:
        """Backward layers start down to end inclusive (start >= end)."""
        if not self.layers:
            return
        if not 0 <= end <= start < len(self.layers):
            raise NetError(f"backward range [{start}, {end}] outside [0, {len(self.layers) - 1}]")
        before, after = self._before_backward, self._after_backward
        for i in range(start, end - 1, -1):
            if before:  # as Caffe: callbacks run for every layer, even one without backward
                for callback in before:
                    callback(i)
            if self.layer_need_backward[i]:
                try:
                    self.layers[i].Backward(self.top_vecs[i], self.bottom_need_backward[i],
                                            self.bottom_vecs[i])
                except CaffeError:
                    raise
                except Exception as exc:
                    self._layer_failed(i, "backward", exc)
                if self.debug_info:
                    self._backward_debug_info(i)
            if after:
                for callback in after:
                    callback(i)

    # Net::Callback hooks, as pycaffe's Net.before_forward(fn) etc.: ``fn(layer_index)``.
    def before_forward(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(i)`` before layer i's forward (BVLC python/train.py's timers)."""
        self._before_forward.append(callback)

    def after_forward(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(i)`` after layer i's forward."""
        self._after_forward.append(callback)

    def before_backward(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(i)`` before layer i's backward (also for layers that skip it)."""
        self._before_backward.append(callback)

    def after_backward(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(i)`` after layer i's backward (also for layers that skip it)."""
        self._after_backward.append(callback)

    def forward_prefilled(self) -> float:
        """Forward the whole net; returns the loss (Caffe's Forward(&loss))."""
        if getattr(self, "_inference", None) is not None:
            return self._inference.forward()
        return self.forward_from_to(0, len(self.layers) - 1)

    def backward_all(self) -> None:
        """Backward the whole net (Caffe's Backward)."""
        self.backward_from_to(len(self.layers) - 1, 0)
        if self.debug_info:
            asum_data = sum(b.asum_data() for b in self.learnable_params)
            asum_diff = sum(b.asum_diff() for b in self.learnable_params)
            sumsq_data = sum(b.sumsq_data() for b in self.learnable_params)
            sumsq_diff = sum(b.sumsq_diff() for b in self.learnable_params)
            log.info("    [Backward] All net params (data, diff): L1 norm = (%g, %g); "
                     "L2 norm = (%g, %g)", asum_data, asum_diff, sumsq_data ** 0.5,
                     sumsq_diff ** 0.5)

    def forward_backward(self) -> float:
        """One forward and one backward pass over the current inputs; returns the loss."""
        loss = self.forward_prefilled()
        self.backward_all()
        return loss

    def clear_param_diffs(self) -> None:
        """Zero the diffs of the learnable parameters (the solver does it before each iteration)."""
        diffs = [blob.mutable_device_diff() for blob in self.learnable_params if blob.count]
        if diffs:  # one call for every blob, not one per blob
            torch._foreach_zero_(diffs)

    def update(self) -> None:
        """data -= diff for every learnable parameter (shared ones once, through the owner)."""
        for blob in self.learnable_params:
            blob.update()

    def reshape(self) -> None:
        """Propagate input shape changes through every layer."""
        for i, layer in enumerate(self.layers):
            layer.reshape(self.bottom_vecs[i], self.top_vecs[i])

    def _forward_debug_info(self, layer_id: int) -> None:
        name = self._layer_names[layer_id]
        for blob_id, top in zip(self.top_id_vecs[layer_id], self.top_vecs[layer_id]):
            log.info("    [Forward] Layer %s, top blob %s data: %g", name,
                     self._blob_names[blob_id], top.asum_data() / max(top.count, 1))
        for pid, blob in enumerate(self.layers[layer_id].blobs):
            net_pid = self.param_id_vecs[layer_id][pid]
            log.info("    [Forward] Layer %s, param blob %s data: %g", name,
                     self.param_display_names[net_pid], blob.asum_data() / max(blob.count, 1))

    def _backward_debug_info(self, layer_id: int) -> None:
        name = self._layer_names[layer_id]
        for j, bottom in enumerate(self.bottom_vecs[layer_id]):
            if self.bottom_need_backward[layer_id][j]:
                blob_name = self._blob_names[self.bottom_id_vecs[layer_id][j]]
                log.info("    [Backward] Layer %s, bottom blob %s diff: %g", name, blob_name,
                         bottom.asum_diff() / max(bottom.count, 1))
        for pid, blob in enumerate(self.layers[layer_id].blobs):
            if self.layers[layer_id].param_propagate_down[pid]:
                log.info("    [Backward] Layer %s, param blob %d diff: %g", name, pid,
                         blob.asum_diff() / max(blob.count, 1))

    # --- weights in and out ---------------------------------------------------------------------
    def copy_trained_layers_from(self, source: caffe_pb2.NetParameter, origin: str = "",
                                 packed: dict | None = None) -> None:
        """Copy parameters layer by layer, matched by name (Caffe's CopyTrainedLayersFrom).

        ``packed[(layer index, blob index)]``: blob values cut out of ``source`` by
        caffe.caffemodel, indexed as ``source.layer`` (or ``source.layers`` for V1), which the
        V1 upgrade keeps one to one.
        """
        where = f" from {origin}" if origin else ""
        packed = packed or {}
        source_layers = source.layer
        if not len(source_layers) and len(source.layers):
            from caffe.upgrade import upgrade_net_as_needed

            names = [layer.name for layer in source.layers]
            source = upgrade_net_as_needed(source, origin or "<weights>")
            source_layers = source.layer
            shift = len(source_layers) - len(names)  # an Input layer put in front of them
            if packed and [layer.name for layer in source_layers][shift:] != names:
                raise NetError(f"{origin or '<weights>'}: the V1 upgrade did not keep the "
                               f"layers in order; cannot place their blob values")
            packed = {(index + shift, j): values for (index, j), values in packed.items()}
        for index, src in enumerate(source_layers):
            target_id = self.layer_names_index.get(src.name)
            if target_id is None:
                log.info("Ignoring source layer %s", src.name)
                continue
            log.debug("Copying source layer %s", src.name)
            targets = self.layers[target_id].blobs
            if len(targets) != len(src.blobs):
                raise NetError(f"Incompatible number of blobs for layer {src.name}{where}: "
                               f"source has {len(src.blobs)}, target expects {len(targets)}")
            for j, (target, proto) in enumerate(zip(targets, src.blobs)):
                if not target.shape_equals(proto):
                    from caffe.blob import proto_shape

                    src_shape = proto_shape(proto)
                    raise NetError(
                        f"Cannot copy param {j} weights from layer '{src.name}'{where}; shape "
                        f"mismatch. Source param shape is {' '.join(map(str, src_shape))}; "
                        f"target param shape is {target.shape_string()}. To learn this layer's "
                        f"parameters from scratch rather than copying from a saved net, rename "
                        f"the layer.")
                try:
                    target.from_proto(proto, reshape=False, packed=packed.get((index, j)))
                except CaffeError as exc:
                    raise NetError(f"{origin or '<weights>'}: layer {src.name!r}, param {j}: "
                                   f"{exc}") from None
        self._refresh_inference()

    def copy_from(self, filename: str) -> None:
        """Load weights from a binary or HDF5 .caffemodel (pycaffe's copy_from)."""
        filename = os.fspath(filename)
        if filename.endswith((".h5", ".hdf5")):
            self.load_hdf5(filename)
            return
        from caffe.caffemodel import read_caffemodel
        from caffe.protoio import read_binary_proto

        reader = read_caffemodel(filename)  # packed values read straight into the blobs
        if reader is None:  # an encoding the fast scan leaves to protobuf, or a broken file
            param = read_binary_proto(filename, caffe_pb2.NetParameter(), "caffemodel")
            self.copy_trained_layers_from(param, filename)
            return
        with reader:
            self.copy_trained_layers_from(reader.param, filename, reader.packed)

    def share_with(self, other: Net) -> None:
        """Share parameter data with ``other`` by layer name (ShareTrainedLayersWith)."""
        for i, layer in enumerate(other.layers):
            name = other._layer_names[i]
            target_id = self.layer_names_index.get(name)
            if target_id is None:
                continue
            targets = self.layers[target_id].blobs
            if len(targets) != len(layer.blobs):
                raise NetError(f"Incompatible number of blobs for layer {name}")
            for j, (target, src) in enumerate(zip(targets, layer.blobs)):
                if target.shape != src.shape:
                    raise NetError(f"Cannot share param {j} weights from layer '{name}'; shape "
                                   f"mismatch. Source param shape is {src.shape_string()}; "
                                   f"target param shape is {target.shape_string()}")
                target.share_data(src)
        self._refresh_inference()

    def to_proto(self, write_diff: bool = False) -> caffe_pb2.NetParameter:
        """The net's layers with their current blobs (Caffe's Net::ToProto)."""
        param = caffe_pb2.NetParameter()
        param.name = self.name
        for layer in self.layers:
            param.layer.add().CopyFrom(layer.to_proto(write_diff))
        return param

    def save(self, filename: str, write_diff: bool = False) -> None:
        """Write a binary .caffemodel atomically."""
        from caffe.protoio import write_binary_proto

        write_binary_proto(filename, self.to_proto(write_diff))

    def save_hdf5(self, filename: str, write_diff: bool = False) -> None:
        """Write weights in Caffe's HDF5 layout: /data/<layer>/<i> (and /diff/...)."""
        import h5py

        from caffe.protoio import atomic_output

        with atomic_output(filename) as tmp, h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            diff = f.create_group("diff") if write_diff else None
            for layer_id, layer in enumerate(self.layers):
                name = self._layer_names[layer_id]
                gdata = data.create_group(name)
                gdiff = diff.create_group(name) if diff is not None else None
                for pid, blob in enumerate(layer.blobs):
                    net_pid = self.param_id_vecs[layer_id][pid]
                    if self.param_owners[net_pid] == -1:
                        gdata.create_dataset(str(pid), data=blob.cpu_data())
                    if gdiff is not None:
                        gdiff.create_dataset(str(pid), data=blob.cpu_diff())

    def load_hdf5(self, filename: str) -> None:
        """Load weights from Caffe's HDF5 layout.

        Every dataset's declared shape is checked against its blob before it is read, and any
        h5py failure (truncated or garbage file, wrong object kinds) becomes a ``NetError``
        naming the file and the dataset.
        """
        import h5py

        if not os.path.exists(filename):
            raise CaffeError(f"weights file not found: {filename!r}")
        where = ""
        try:
            with h5py.File(filename, "r") as f:
                data = f.get("data")
                if not isinstance(data, h5py.Group):
                    raise NetError(f"Error reading weights from {filename}: no /data group")
                where = " (group /data)"
                for name in data:
                    target_id = self.layer_names_index.get(name)
                    if target_id is None:
                        log.info("Ignoring source layer %s", name)
                        continue
                    where = f" (layer '{name}')"
                    group = data[name]
                    if not isinstance(group, h5py.Group):
                        raise NetError(f"Error reading weights from {filename}: /data/{name} "
                                       f"is not a group")
                    targets = self.layers[target_id].blobs
                    if len(group) > len(targets):
                        raise NetError(f"Incompatible number of blobs for layer {name} in "
                                       f"{filename}: {len(group)} datasets, {len(targets)} "
                                       f"blobs")
                    for j, target in enumerate(targets):
                        net_pid = self.param_id_vecs[target_id][j]
                        where = f" (dataset /data/{name}/{j})"
                        dataset = group.get(str(j))
                        if dataset is None:
                            if self.param_owners[net_pid] != -1:
                                continue
                            raise NetError(f"Incompatible number of blobs for layer {name} in "
                                           f"{filename}: dataset {j} missing")
                        if not isinstance(dataset, h5py.Dataset) \
                                or dataset.dtype.kind not in "fiub":
                            raise NetError(f"Error reading weights from {filename}: "
                                           f"/data/{name}/{j} is not a numeric dataset")
                        shape = tuple(dataset.shape)
                        if shape != target.shape:
                            raise NetError(
                                f"Cannot copy param {j} weights from layer '{name}' in "
                                f"{filename}; shape mismatch. Source param shape is "
                                f"{' '.join(map(str, shape))} ({dataset.size}); target "
                                f"param shape is {target.shape_string()}. To learn this "
                                f"layer's parameters from scratch rather than copying from a "
                                f"saved net, rename the layer.")
                        target.data[...] = dataset[()]
                    where = " (group /data)"
        except CaffeError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeDecodeError) as exc:
            raise NetError(f"Error reading weights from HDF5 file {filename}{where}: "
                           f"{type(exc).__name__}: {exc}") from None
        self._refresh_inference()

    # --- pycaffe surface -----------------------------------------------------------------------
    @property
    def blobs(self) -> OrderedDict[str, Blob]:
        """pycaffe's ``net.blobs``: blob name to Blob, in the order the net created them."""
        return OrderedDict(zip(self._blob_names, self._blobs))

    @property
    def layer_dict(self) -> OrderedDict[str, Layer]:
        """Layer name to Layer, in net order."""
        return OrderedDict(zip(self._layer_names, self.layers))

    @property
    def params(self) -> OrderedDict[str, list[Blob]]:
        """pycaffe's ``net.params``: layer name to its parameter blobs, for layers that have any."""
        return OrderedDict((name, layer.blobs) for name, layer in
                           zip(self._layer_names, self.layers) if layer.blobs)

    @property
    def blob_loss_weights(self) -> OrderedDict[str, float]:
        """Blob name to the loss weight its gradient is scaled by (0 for non-loss blobs)."""
        return OrderedDict(zip(self._blob_names, self._blob_loss_weights))

    @property
    def inputs(self) -> list[str]:
        """Names of the net's input blobs (Input layers' tops and legacy ``input:`` fields)."""
        return [self._blob_names[i] for i in self._inputs]

    @property
    def outputs(self) -> list[str]:
        """Names of the net's output blobs: tops that no layer consumes."""
        return [self._blob_names[i] for i in self._outputs]

    @property
    def top_names(self) -> OrderedDict[str, list[str]]:
        """Layer name to the names of its top blobs."""
        return OrderedDict((name, [self._blob_names[b] for b in ids]) for name, ids in
                           zip(self._layer_names, self.top_id_vecs))

    @property
    def bottom_names(self) -> OrderedDict[str, list[str]]:
        """Layer name to the names of its bottom blobs."""
        return OrderedDict((name, [self._blob_names[b] for b in ids]) for name, ids in
                           zip(self._layer_names, self.bottom_id_vecs))

    def _bottom_ids(self, layer_id: int) -> list[int]:
        """Blob indices of layer ``layer_id``'s bottoms (pycaffe's Net._bottom_ids)."""
        return list(self.bottom_id_vecs[layer_id])

    def _top_ids(self, layer_id: int) -> list[int]:
        """Blob indices of layer ``layer_id``'s tops (pycaffe's Net._top_ids)."""
        return list(self.top_id_vecs[layer_id])

    def _forward(self, start: int, end: int) -> float:
        if getattr(self, "_inference", None) is not None:
            if (start, end) != (0, len(self.layers) - 1):
                raise NetError(f"net {self.name!r} is optimized for inference: only the whole "
                               f"net runs (no start=/end=); call "
                               f"net.clear_inference_optimization() for layer ranges")
            return self._inference.forward()
        return self.forward_from_to(start, end)

    def _backward(self, start: int, end: int) -> None:
        if getattr(self, "_inference", None) is not None:
            raise NetError(f"net {self.name!r} is optimized for inference, which has no "
                           f"backward pass; call net.clear_inference_optimization() first")
        self.backward_from_to(start, end)

    # --- optimized inference (caffe.inference) ---------------------------------------------
    def optimize_for_inference(self, keep: Sequence[str] = (), fold: bool = True,
                               channels_last: bool = True, precision: str = "float32",
                               compile: bool = False) -> None:
        """Run the whole-net forward of this TEST net as one optimized module: BatchNorm and
        Scale folded (``fold``), NHWC activations (``channels_last``), ``precision``
        "float32", "bfloat16" or "float16", ``torch.compile`` (``compile``); only the outputs
        and the ``keep`` blobs hold values afterwards. See caffe.inference; undo with
        clear_inference_optimization()."""
        from caffe import inference

        inference.optimize(self, keep=keep, fold=fold, channels_last=channels_last,
                           precision=precision, compile=compile)

    def clear_inference_optimization(self) -> None:
        """Back to pycaffe's per-layer forward, where every blob holds its values."""
        from caffe import inference

        inference.clear(self)

    def _refresh_inference(self) -> None:
        """New weights: an optimized forward rebuilds its module from them."""
        if getattr(self, "_inference", None) is not None:
            from caffe import inference

            inference.refresh(self)

    @property
    def inference_options(self):
        """The options of optimize_for_inference in effect (an InferenceOptions), or None."""
        engine = getattr(self, "_inference", None)
        return None if engine is None else engine.options

    def _blob_ids(self, names, what: str) -> list[int]:
        """Blob indices of the names a caller asked for (``blobs=``/``diffs=``), checked."""
        if names is None:
            return []
        if isinstance(names, str):
            raise NetError(f"{what}= takes a list of blob names, got the string {names!r}; "
                           f"write {what}=[{names!r}]")
        ids = []
        for name in names:
            if name not in self.blob_names_index:
                raise NetError(f"{what}=: no blob named {name!r} in net {self.name!r}; "
                               f"{_name_list('blobs', self._blob_names, str(name))}")
            ids.append(self.blob_names_index[name])
        return ids

    def _check_arrays(self, arrays: dict, names: list[str], what: str, kind: str) -> dict:
        """pycaffe's checks of forward/backward keyword arrays: exactly the net's ``names``,
        batch sized, and assignable to the blob (numpy broadcasting, as pycaffe's ``[...] =``)."""
        if set(arrays) != set(names):
            raise NetError(f"{what} arguments {sorted(arrays)} do not match net {kind} {names}")
        checked = {}
        for name, value in arrays.items():
            blob = self._blobs[self.blob_names_index[name]]
            value = np.asarray(value)
            if blob.num_axes and (value.ndim == 0 or value.shape[0] != blob.shape[0]):
                raise NetError(f"{what} {name!r} is not batch sized: got shape "
                               f"{list(value.shape)}, blob shape {list(blob.shape)}")
            try:
                fits = np.broadcast_shapes(value.shape, blob.shape) == blob.shape
            except ValueError:
                fits = False
            if not fits:
                raise NetError(f"{what} {name!r} has shape {list(value.shape)} but the blob has "
                               f"shape {list(blob.shape)}; call net.blobs[{name!r}].reshape(...) "
                               f"and net.reshape() first")
            checked[name] = value
        return checked

    def forward(self, blobs: Sequence[str] | None = None, start: str | None = None,
                end: str | None = None, **kwargs) -> dict[str, np.ndarray]:
        """Forward pass (pycaffe): write ``kwargs`` into the input blobs, run the layers named
        ``start`` to ``end`` (inclusive), return ``{blob name: data}`` for the end layer's
        tops (the net outputs when ``end`` is None) and the ``blobs`` asked for.
        Everything is checked before any layer runs."""
        extra = self._blob_ids(blobs, "blobs")
        start_ind = 0 if start is None else self._layer_index(start, "forward start")
        if end is None:
            end_ind, out_ids = len(self.layers) - 1, list(self._outputs)
        else:
            end_ind = self._layer_index(end, "forward end")
            out_ids = list(self.top_id_vecs[end_ind])
        if start_ind > end_ind and self.layers:
            raise NetError(f"forward: start layer {self._layer_names[start_ind]!r} (index "
                           f"{start_ind}) comes after end layer {self._layer_names[end_ind]!r} "
                           f"(index {end_ind})")
        if kwargs:
            arrays = self._check_arrays(kwargs, self.inputs, "Input blob", "inputs")
            for name, value in arrays.items():
                self._blobs[self.blob_names_index[name]].data[...] = value
        self._forward(start_ind, end_ind)
        return {self._blob_names[i]: self._blobs[i].data for i in out_ids + extra}

    def backward(self, diffs: Sequence[str] | None = None, start: str | None = None,
                 end: str | None = None, **kwargs) -> dict[str, np.ndarray]:
        """Backward pass (pycaffe): write ``kwargs`` into the output blobs' diffs, run the
        layers named ``start`` down to ``end`` (inclusive), return ``{blob name: diff}`` for
        the end layer's bottoms (the net inputs when ``end`` is None) and the ``diffs`` asked
        for. Everything is checked before any layer runs."""
        extra = self._blob_ids(diffs, "diffs")
        start_ind = (len(self.layers) - 1 if start is None
                     else self._layer_index(start, "backward start"))
        if end is None:
            end_ind, out_ids = 0, list(self._inputs)
        else:
            end_ind = self._layer_index(end, "backward end")
            out_ids = list(self.bottom_id_vecs[end_ind])
        if start_ind < end_ind and self.layers:
            raise NetError(f"backward: start layer {self._layer_names[start_ind]!r} (index "
                           f"{start_ind}) comes before end layer {self._layer_names[end_ind]!r} "
                           f"(index {end_ind}); backward runs from start down to end")
        if kwargs:
            arrays = self._check_arrays(kwargs, self.outputs, "Top diff", "outputs")
            for name, value in arrays.items():
                self._blobs[self.blob_names_index[name]].diff[...] = value
        self._backward(start_ind, end_ind)
        return {self._blob_names[i]: self._blobs[i].diff for i in out_ids + extra}

    def _batch(self, blobs: dict) -> list[dict]:
        """Split input arrays into net-batch-sized chunks (the last padded with zeros)."""
        num = len(next(iter(blobs.values())))
        batch_size = self.blobs[next(iter(blobs))].shape[0]
        chunks = []
        for b in range(0, num, batch_size):
            chunk = {}
            for name, array in blobs.items():
                part = np.asarray(array[b:b + batch_size])
                if len(part) < batch_size:
                    pad = np.zeros((batch_size - len(part),) + part.shape[1:], dtype=part.dtype)
                    part = np.concatenate([part, pad])
                chunk[name] = part
            chunks.append(chunk)
        return chunks

    def forward_all(self, blobs: Sequence[str] | None = None, **kwargs) -> dict[str, np.ndarray]:
        """Forward over every item of the input arrays, batch by batch; outputs concatenated."""
        all_outs: dict[str, list] = {out: [] for out in set(self.outputs + list(blobs or []))}
        if not kwargs:
            out = self.forward(blobs=blobs)
            return {k: v.copy() for k, v in out.items()}
        num = len(next(iter(kwargs.values())))
        for chunk in self._batch(kwargs):
            outs = self.forward(blobs=blobs, **chunk)
            for name, value in outs.items():
                all_outs[name].extend(value.copy())
        return {name: np.asarray(values[:num]) for name, values in all_outs.items()}

    def forward_backward_all(self, blobs: Sequence[str] | None = None,
                             diffs: Sequence[str] | None = None, **kwargs):
        """forward_all and backward over every batch; returns (forward outs, backward diffs)."""
        all_outs = {out: [] for out in set(self.outputs + list(blobs or []))}
        all_diffs = {d: [] for d in set(self.inputs + list(diffs or []))}
        forward_batches = self._batch({k: v for k, v in kwargs.items() if k in self.inputs})
        top_diffs = {k: v for k, v in kwargs.items() if k in self.outputs}
        backward_batches = self._batch(top_diffs) if top_diffs else [{}] * len(forward_batches)
        num = len(next(iter(kwargs.values())))
        for fb, bb in zip(forward_batches, backward_batches):
            outs = self.forward(blobs=blobs, **fb)
            grads = self.backward(diffs=diffs, **bb)
            for name, value in outs.items():
                all_outs[name].extend(value.copy())
            for name, value in grads.items():
                all_diffs[name].extend(value.copy())
        return ({k: np.asarray(v[:num]) for k, v in all_outs.items()},
                {k: np.asarray(v[:num]) for k, v in all_diffs.items()})

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray, layer_idx: int = 0) -> None:
        """Feed arrays to a MemoryData layer (pycaffe's set_input_arrays): N x C x H x W
        float32 data and N (or N x 1 x 1 x 1) float32 labels, referenced, not copied."""
        if layer_idx == 0:
            self._set_input_arrays(data, labels)
            return
        self._memory_data_layer(layer_idx).reset(data, labels)

    def _set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """pycaffe's low-level form: the first layer must be MemoryData."""
        self._memory_data_layer(0).reset(data, labels)

    def _memory_data_layer(self, layer_idx: int) -> Layer:
        layer = self.layers[layer_idx] if 0 <= layer_idx < len(self.layers) else None
        if layer is not None and layer.type == "MemoryData":
            return layer
        found = (f"layer {layer_idx} ({layer.name!r}) is a {layer.type} layer" if layer
                 else f"the net has no layer {layer_idx}")
        if layer_idx == 0:  # pycaffe's message
            raise NetError(f"set_input_arrays may only be called if the first layer is a "
                           f"MemoryDataLayer; {found}")
        raise NetError(f"set_input_arrays(layer_idx={layer_idx}) needs a MemoryData layer "
                       f"there; {found}")

    def __repr__(self) -> str:
        return f"<caffe.Net {self.name!r}: {len(self.layers)} layers, {len(self._blobs)} blobs>"
