"""Python: a layer whose class the prototxt names (python_param { module layer param_str }).

The class must derive from ``caffe.Layer`` and implement ``setup``, ``reshape``, ``forward`` and
``backward`` over numpy views (``bottom[0].data``, ``top[0].diff``...), as in pycaffe. An
exception raised inside it reaches the caller as the same object and type (pycaffe's
behaviour, which ``except`` clauses rely on), with a PEP 678 note naming the layer, its
module.class and the method; the net adds the prototxt line and the bottom shapes.
"""

from __future__ import annotations

import importlib
import sys

from caffe.errors import CaffeError, LayerError, add_note
from caffe.layer import Layer, register


class PythonLayer(Layer):
    """Base class of user layers (exported as ``caffe.Layer``).

    ``self.param_str``, ``self.phase`` and ``self.blobs`` (a BlobVec) are set before ``setup``
    runs; ``self.blobs.add_blob(*shape)`` appends a learnable parameter blob. ``self.phase``
    equals caffe.TRAIN / caffe.TEST (0 / 1, as in pycaffe) and ``str()`` gives 'TRAIN' /
    'TEST', as in the Faster R-CNN fork, whose layers also read ``self.param_str_``.
    """

    type_name = "Python"

    def __init__(self, param, dtype=None) -> None:
        import torch

        super().__init__(param, dtype or torch.float32)
        self.param_str = param.python_param.param_str

    @property
    def param_str_(self) -> str:
        """The Faster R-CNN fork's spelling of ``param_str`` (the same string)."""
        return self.param_str

    @param_str_.setter
    def param_str_(self, value: str) -> None:
        self.param_str = value

    def add_blob(self, *shape) -> None:
        """Append a learnable blob of ``shape``: a shorthand for pycaffe's
        ``self.blobs.add_blob(*shape)`` (``self.blobs`` is a BlobVec)."""
        self.blobs.add_blob(*shape)

    def _call(self, method: str, *args):
        """Run the user's ``method``; what it raises keeps its type, with a note added."""
        try:
            return getattr(self, method)(*args)
        except CaffeError:
            raise
        except Exception as exc:
            py = self.layer_param.python_param
            add_note(exc, f"Python layer {self.name!r} ({py.module}.{py.layer}) raised in "
                          f"{method}()")
            raise

    def SetUp(self, bottom, top) -> None:  # noqa: N802
        self.check_blob_counts(bottom, top)
        self._call("setup", bottom, top)
        if len(self.param_propagate_down) < len(self.blobs):
            self.param_propagate_down += [True] * (len(self.blobs) - len(self.param_propagate_down))
        self._call("reshape", bottom, top)
        self.set_loss_weights(top)

    def Forward(self, bottom, top) -> float:  # noqa: N802
        self._call("reshape", bottom, top)
        self._call("forward", bottom, top)
        return self._weighted_loss(top)

    def Backward(self, top, propagate_down, bottom) -> None:  # noqa: N802
        self._call("backward", top, list(propagate_down), bottom)

    def _weighted_loss(self, top) -> float:
        loss = 0.0
        for i, weight in enumerate(self.loss_weights):
            if weight:
                loss += float((top[i].cpu_data() * top[i].cpu_diff()).sum())
        return loss

    def forward(self, bottom, top) -> None:
        raise NotImplementedError(f"Python layer {self.name!r} does not implement forward()")


@register("Python")
def create_python_layer(param, dtype=None) -> Layer:
    """Import ``python_param.module`` and instantiate its ``python_param.layer`` class."""
    py = param.python_param
    if not py.module or not py.layer:
        raise LayerError(f"Python layer {param.name!r}: python_param needs both 'module' and "
                         f"'layer' (got module={py.module!r}, layer={py.layer!r})")
    try:
        module = importlib.import_module(py.module)
    except ImportError as exc:
        raise LayerError(f"Python layer {param.name!r}: cannot import module {py.module!r} "
                         f"({exc}); is its folder on PYTHONPATH? sys.path = {sys.path[:4]}...") \
            from exc
    except Exception as exc:  # a SyntaxError, or the module's own code raising at import
        raise LayerError(f"Python layer {param.name!r}: importing module {py.module!r} failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    cls = getattr(module, py.layer, None)
    if cls is None:
        raise LayerError(f"Python layer {param.name!r}: module {py.module!r} has no class "
                         f"{py.layer!r}")
    if not (isinstance(cls, type) and issubclass(cls, PythonLayer)):
        raise LayerError(f"Python layer {param.name!r}: {py.module}.{py.layer} must be a class "
                         f"derived from caffe.Layer")
    try:
        layer = cls(param) if dtype is None else cls(param, dtype)
    except Exception as exc:
        raise LayerError(f"Python layer {param.name!r}: {py.module}.{py.layer}.__init__ raised "
                         f"{type(exc).__name__}: {exc}") from exc
    layer.type_name = "Python"
    return layer
