"""``write_pytorch(net, dir)``: a caffe Net as standalone PyTorch source plus a state dict.

``DIR/model.py`` holds one ``nn.Module`` class: each layer's blobs in ``__init__`` and the
wiring in ``forward``, one line per layer calling the ``caffe.functional`` function that the
layer itself and ``caffe.export.to_torch`` run. Those functions (and what they call) are
copied into the file from their source with ``inspect.getsource``, so there is no second,
hand-written copy of any layer's math, and the file imports only torch (and ``os`` to find its
weights). ``DIR/weights.pt`` is the state dict, with the same keys as ``to_torch(net)``'s.
"""

from __future__ import annotations

import builtins
import dis
import inspect
import math
import os
import tempfile
import textwrap
import types
from collections.abc import Callable, Sequence

import torch

from caffe import functional as CF
from caffe.errors import CaffeError
from caffe.export.torch_module import CaffeModule, Plan, build_plan, python_name

_ALLOWED_MODULES = {"torch": "import torch", "torch.nn.functional": "import torch.nn.functional",
                    "math": "import math"}
_TUPLE_RESULTS = {CF.slice_blob}
# Options written by name: (function, option) -> prefix of caffe.functional's constants.
_ENUM_OPTIONS = {("pooling", "method"): "POOL_", ("eltwise", "operation"): "ELTWISE_",
                 ("reduction", "operation"): "REDUCE_", ("lrn", "norm_region"): "_CHANNEL",
                 ("softmax_with_loss", "normalization"): "NORM_",
                 ("sigmoid_cross_entropy_loss", "normalization"): "NORM_"}


def _enum_name(func: str, option: str, value) -> str | None:
    """The caffe.functional constant naming ``value`` of an enum option, if any."""
    key = _ENUM_OPTIONS.get((func, option))
    if key is None or not isinstance(value, int):
        return None
    for name, constant in vars(CF).items():
        if name.isupper() and (name.startswith(key) or name.endswith(key)) and \
                constant == value and type(constant) is int:
            return name
    return None


def _code_names(code: types.CodeType) -> set[str]:
    """Global names a function's code (and its nested code: inner defs, comprehensions) loads;
    attribute names (``x.reshape``) are not globals and are left out."""
    names = {ins.argval for ins in dis.get_instructions(code)
             if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


class _Sources:
    """The helper functions, constants and imports that a set of functions needs."""

    def __init__(self) -> None:
        self.functions: dict[str, tuple[Callable, str]] = {}
        self.constants: dict[str, object] = {}
        self.imports: dict[str, str] = {}

    def add(self, fn: Callable, name: str | None = None) -> str:
        name = name or fn.__name__
        known = self.functions.get(name)
        if known is not None:
            if known[0] is not fn:
                raise CaffeError(f"codegen: two helper functions are both called {name!r} "
                                 f"({known[0].__module__} and {fn.__module__})")
            return name
        source = textwrap.dedent(inspect.getsource(fn))
        if name != fn.__name__:  # imported under another name: define it under that one
            source = source.replace(f"def {fn.__name__}(", f"def {name}(", 1)
        self.functions[name] = (fn, source)
        scope = fn.__globals__
        for ref in sorted(_code_names(fn.__code__)):
            if ref not in scope:
                continue  # a builtin, or an attribute name
            value = scope[ref]
            if isinstance(value, types.ModuleType):
                if value.__name__ not in _ALLOWED_MODULES:
                    raise CaffeError(f"codegen: {fn.__module__}.{fn.__name__} uses module "
                                     f"{value.__name__}; standalone code may use only torch "
                                     f"and math")
                line = _ALLOWED_MODULES[value.__name__]
                if ref != value.__name__.rsplit(".", 1)[-1] or "." in value.__name__:
                    line = f"{line} as {ref}"
                self.imports[ref] = line
            elif isinstance(value, types.FunctionType):
                self.add(value, ref)
            elif isinstance(value, (bool, int, float, str, tuple, type(None))):
                if ref in self.constants and self.constants[ref] != value:
                    raise CaffeError(f"codegen: constant {ref!r} has two values")
                self.constants[ref] = value
            elif isinstance(value, (type, torch.dtype)) and \
                    getattr(value, "__module__", "torch").startswith("torch"):
                continue  # an annotation or dtype reached through the torch import
            else:
                raise CaffeError(f"codegen: {fn.__module__}.{fn.__name__} uses {ref!r} "
                                 f"({type(value).__name__}), which cannot be copied")
        return name


def _literal(value) -> str:
    """Python source for an option value."""
    if isinstance(value, float):
        if math.isnan(value):
            return "math.nan"
        if math.isinf(value):
            return "math.inf" if value > 0 else "-math.inf"
        return repr(value)
    if isinstance(value, tuple):
        items = ", ".join(_literal(v) for v in value)
        return f"({items},)" if len(value) == 1 else f"({items})"
    if isinstance(value, (bool, int, str, type(None))):
        return repr(value)
    raise CaffeError(f"codegen: cannot write option value {value!r}")


def _needs_math(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, tuple):
        return any(_needs_math(v) for v in value)
    return False


_LAYER_HOLDER = '''
def _layer(parameters=(), buffers=(), frozen=()):
    """A holder for one Caffe layer's blobs, shaped here and filled by load_state_dict."""
    holder = torch.nn.Module()
    for name, shape in parameters:
        holder.register_parameter(name, torch.nn.Parameter(
            torch.zeros(shape, dtype=DTYPE), requires_grad=name not in frozen))
    for name, shape in buffers:
        holder.register_buffer(name, torch.zeros(shape, dtype=DTYPE))
    return holder
'''

_LOADER = '''
def load(directory=None, map_location="cpu"):
    """{cls} with the weights saved beside this file (or in ``directory``)."""
    folder = directory or os.path.dirname(os.path.abspath(__file__))
    model = {cls}()
    state = torch.load(os.path.join(folder, "weights.pt"), map_location=map_location,
                       weights_only=True)
    model.load_state_dict(state)
    return model
'''


def _shape(t: torch.Tensor) -> str:
    return _literal(tuple(int(d) for d in t.shape))


def generate_source(plan: Plan, class_name: str = "CaffeNet",
                    dtype: torch.dtype = torch.float32) -> str:
    """The text of ``model.py`` for ``plan``."""
    sources = _Sources()
    uses_math = False
    for op in plan.ops:
        if op.alias:
            continue
        if not isinstance(op.func, types.FunctionType):
            raise CaffeError(f"layer {op.layer!r} ({op.type}) cannot be written as standalone "
                             f"code (it runs caffepy's own implementation); use "
                             f"caffe.export.to_torch, or outputs= before it")
        sources.add(op.func)
        uses_math |= any(_needs_math(v) for v in op.kwargs.values())
    if uses_math:
        sources.imports["math"] = "import math"
    reserved = set(sources.functions) | set(sources.constants) | set(sources.imports) | set(
        dir(builtins)) | {"self", "torch", "os", "math", "DTYPE", "load", "_layer", class_name}
    reserved |= {n for n in vars(CF) if n.isupper()}  # enum names added while writing
    taken: set[str] = set()
    var = {}
    for name in plan.inputs:
        var[name] = python_name(name, taken, reserved)

    init = []
    for child, entry in plan.children.items():
        parts = []
        if entry["params"]:
            items = ", ".join(f"({n!r}, {_shape(t)})" for n, t in entry["params"].items())
            parts.append(f"parameters=[{items}]")
        if entry["buffers"]:
            items = ", ".join(f"({n!r}, {_shape(t)})" for n, t in entry["buffers"].items())
            parts.append(f"buffers=[{items}]")
        if entry["frozen"]:
            parts.append(f"frozen={_literal(tuple(sorted(entry['frozen'])))}")
        init.append(f"        self.{child} = _layer({', '.join(parts)})")

    body = []
    for op in plan.ops:
        if op.alias:
            for t in op.tops:
                var[t] = var[op.bottoms[0]]
            continue
        args = [f"{a}=self.{c}.{n}" for a, (c, n) in op.tensors.items()]
        for k, v in op.kwargs.items():
            enum = _enum_name(op.func.__name__, k, v)
            if enum is not None:
                sources.constants[enum] = v
            args.append(f"{k}={enum or _literal(v)}")
        if op.training:
            args.append("training=self.training")
        bottoms = [var[b] for b in op.bottoms] if op.use_bottoms else []
        calls = [[b] for b in bottoms] if op.per_bottom else [bottoms]
        groups = [[t] for t in op.tops] if op.per_bottom else [op.tops]
        body.append(f"        # {op.layer} ({op.type})")
        for call_bottoms, tops in zip(calls, groups):
            names = []
            for t in tops:
                # Rebind a blob's own variable (in place: ``x = relu(x)``), but never one that
                # another blob name still refers to (Split's aliases).
                shared = t in var and any(o != t and v == var[t] for o, v in var.items())
                if t not in var or shared:
                    var[t] = python_name(t, taken, reserved)
                names.append(var[t])
            target = ", ".join(names)
            if op.func in _TUPLE_RESULTS and len(names) == 1:
                target += ","
            call = f"{op.func.__name__}({', '.join(call_bottoms + args)})"
            body.append(_wrap(f"        {target} = {call}"))
    outputs = ", ".join(var[o] for o in plan.outputs)
    if len(plan.outputs) == 1:
        outputs += ","

    shapes = ", ".join(f"{n} {list(s)}" for n, s in plan.input_shapes.items())
    lines = [
        f'"""Net {plan.name!r} as a PyTorch module, written by caffepy (caffe.export).',
        "",
        f"Inputs (exported shapes): {shapes}.",
        f"Outputs, as a tuple: {', '.join(plan.outputs)}.",
        "Usage: ``model = load(); outputs = model(*inputs)``. The layer functions below are",
        "copied from caffe.functional; the module needs only torch.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        *sorted({"import os"} | {v for v in sources.imports.values() if "torch" not in v}),
        "",
        *sorted({v for v in sources.imports.values() if "torch" in v} | {"import torch"}),
        "",
        f"DTYPE = torch.{str(dtype).split('.')[-1]}",
        *[f"{k} = {_literal(v)}" for k, v in sorted(sources.constants.items())],
        "",
    ]
    for _, source in sources.functions.values():
        lines += ["", source.rstrip(), ""]
    lines += [_LAYER_HOLDER.rstrip(), "", ""]
    lines += [
        f"class {class_name}(torch.nn.Module):",
        f'    """Caffe net {plan.name!r}: forward({", ".join(var[n] for n in plan.inputs)})'
        f' -> ({outputs})."""',
        "",
        f"    input_names = {_literal(tuple(plan.inputs))}",
        f"    output_names = {_literal(tuple(plan.outputs))}",
        f"    loss_weights = {_literal(tuple(plan.loss_weights))}",
        "",
        "    def __init__(self):",
        "        super().__init__()",
        *init,
        f"        self.train({plan.training})",
        "",
        f"    def forward(self, {', '.join(var[n] for n in plan.inputs)}):",
        *body,
        f"        return ({outputs})",
        "",
        _LOADER.format(cls=class_name).rstrip(),
        "",
    ]
    return "\n".join(lines)


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the ", " separators that lie outside brackets and quotes."""
    parts, depth, start, quote = [], 0, 0, None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 1 and text[i + 1:i + 2] == " ":
            parts.append(text[start:i])
            start = i + 2
    parts.append(text[start:])
    return parts


def _wrap(line: str, width: int = 100) -> str:
    """Break a long call after its top-level commas, continuation lines aligned inside the
    parenthesis."""
    if len(line) <= width or "(" not in line:
        return line
    indent = " " * (line.index("(") + 1)
    out, current = [], ""
    for piece in _split_top_level(line):
        candidate = f"{current}, {piece}" if current else piece
        if current and len(candidate) > width - 1:
            out.append(current + ",")
            current = indent + piece
        else:
            current = candidate
    out.append(current)
    return "\n".join(out)


def _write_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` then rename onto ``path``, so a reader never sees a half-written file."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_pytorch(net, directory, *, inputs: Sequence[str] | None = None,
                  outputs: Sequence[str] | None = None, fold: bool = False,
                  class_name: str = "CaffeNet") -> dict[str, str]:
    """Write ``directory/model.py`` (class ``class_name`` and a ``load()`` function) and
    ``directory/weights.pt``; returns ``{"model": path, "weights": path}``. ``inputs``,
    ``outputs`` and ``fold`` are those of ``caffe.export.to_torch``."""
    if not class_name.isidentifier():
        raise CaffeError(f"class_name must be a Python identifier, got {class_name!r}")
    plan = build_plan(net, inputs, outputs, fold)
    dtype = getattr(net, "dtype", torch.float32)
    source = generate_source(plan, class_name, dtype)
    state = {k: v.detach().cpu().clone() for k, v in CaffeModule(plan).state_dict().items()}
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    model_path = os.path.join(directory, "model.py")
    weights_path = os.path.join(directory, "weights.pt")

    def write_source(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(source)

    _write_atomically(weights_path, lambda tmp: torch.save(state, tmp))
    _write_atomically(model_path, write_source)
    return {"model": model_path, "weights": weights_path}
