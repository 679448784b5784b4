"""Export a caffe Net onward: a ``torch.nn.Module``, standalone PyTorch source, or ONNX.

``to_torch(net)`` builds a module from the net's layers and blobs, ``write_pytorch(net, dir)``
writes readable ``model.py`` + ``weights.pt`` that need only torch, ``to_onnx(net, path)`` writes
an ONNX graph. Per-layer converters are registered by Caffe type, as layers are.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "to_torch": "caffe.export.torch_module",
    "write_pytorch": "caffe.export.codegen",
    "to_onnx": "caffe.export.onnx_writer",
    "fold_net": "caffe.export.fold",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import each exporter on first use, so ``import caffe.export`` needs neither onnx nor
    the torch tracing machinery."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'caffe.export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
