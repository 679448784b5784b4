"""Text generators for the docs' reference pages; plain Python, no Sphinx needed.

``cli_reference`` documents every ``caffe`` command and its flags (as ``caffe.tools.cli``
discovers them), ``layer_reference`` every registered layer type (from the layer classes'
docstrings), ``api_modules`` the modules the API page documents, and ``undocumented`` lists the
public callables without a docstring (the test suite requires none). Sphinx glue lives in
``caffe_sphinx.py`` next to this file.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import pkgutil
import re
import textwrap

# Modules whose names are not public API: the generated protobuf module, ``__main__`` (it runs
# the CLI on import), and any module or package named with a leading underscore.
_SKIP_MODULES = {"caffe.proto.caffe_pb2", "caffe.__main__"}


def caffe_modules() -> list[str]:
    """Every importable public module of the ``caffe`` package, sorted."""
    import caffe

    names = ["caffe"]
    for info in pkgutil.walk_packages(caffe.__path__, "caffe."):
        if info.name in _SKIP_MODULES or any(p.startswith("_") for p in info.name.split(".")):
            continue
        names.append(info.name)
    return sorted(names)


def _public_members(module) -> list[tuple[str, object]]:
    """The functions and classes ``module`` defines under names without a leading underscore
    (``__all__`` when the module declares one)."""
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    found = []
    for name in names:
        obj = getattr(module, name, None)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and \
                getattr(obj, "__module__", None) == module.__name__:
            found.append((name, obj))
    return found


def _public_methods(cls) -> list[tuple[str, object]]:
    """Methods and properties a class defines itself under names without a leading underscore."""
    found = []
    for name, attr in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if inspect.isfunction(attr) or isinstance(attr, property):
            found.append((name, attr))
    return found


def public_callables() -> list[tuple[str, object, str | None]]:
    """``(qualified name, object, docstring)`` for every public module, function, class and
    method of caffe. A method overriding a documented base-class method inherits its docstring
    (``inspect.getdoc``'s rule, which autodoc follows too)."""
    rows = []
    for modname in caffe_modules():
        module = importlib.import_module(modname)
        rows.append((modname, module, inspect.getdoc(module)))
        for name, obj in _public_members(module):
            rows.append((f"{modname}.{name}", obj, inspect.getdoc(obj)))
            if inspect.isclass(obj):
                for mname, meth in _public_methods(obj):
                    doc = inspect.getdoc(meth) if isinstance(meth, property) else \
                        inspect.getdoc(getattr(obj, mname, meth))
                    rows.append((f"{modname}.{name}.{mname}", meth, doc))
    return rows


def undocumented() -> list[str]:
    """Qualified names of the public callables without a docstring."""
    return [name for name, _, doc in public_callables() if not (doc or "").strip()]


# --- the CLI -------------------------------------------------------------------------------------
class _Captured(Exception):
    """Raised by the patched ``FlagSet.parse`` to stop a tool once its flags are declared."""

    def __init__(self, flag_set) -> None:
        super().__init__()
        self.flag_set = flag_set


def command_flag_set(module):
    """The FlagSet that a tool module's ``main`` parses, or None for a tool without flags.

    Tools declare their flags in different places (a ``flag_set()`` function, a shared builder,
    inline in ``main``), so ``main(["-help"])`` is run with ``FlagSet.parse`` patched to hand
    the FlagSet back before anything else happens.
    """
    from caffe.tools import flags as flags_module

    original = flags_module.FlagSet.parse

    def capture(self, argv):
        raise _Captured(self)

    flags_module.FlagSet.parse = capture
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            module.main(["-help"])
    except _Captured as got:
        return got.flag_set
    except BaseException:  # noqa: BLE001 - a tool without a FlagSet may exit any way on -help
        return None
    finally:
        flags_module.FlagSet.parse = original
    return None


def _rst_literal(value: object) -> str:
    text = repr(value)
    return f"``{text}``" if text else "``''``"


def _escape(text: str) -> str:
    """Plain text made safe inside reStructuredText: markup characters backslash-escaped."""
    return re.sub(r"([\\`*_|])", r"\\\1", text)


def _literal_block(text: str) -> list[str]:
    """Docstrings are plain text with formulas (``y = |x|``, ``a * b``): shown verbatim."""
    return ["::", "", textwrap.indent(text, "    "), ""] if text.strip() else []


def _heading(text: str, char: str) -> list[str]:
    return [text, char * len(text), ""]


def cli_reference() -> str:
    """reStructuredText for every ``caffe`` command: summary, usage, and a table of its flags
    with type, default and help, then glog's flags that every command takes."""
    from caffe.tools.cli import commands
    from caffe.tools.flags import GLOG_FLAGS

    lines = ["Every command runs as ``caffe <command> [flags]`` (or ``python -m caffe``); the ",
             "tools Caffe shipped as separate programs also install under their own names ",
             "(``convert_imageset``, ``draw_net``, ...). ``caffe <command> -help`` prints the ",
             "same flags. This page is generated from the flag definitions.", ""]
    table = commands()
    for name in sorted(table):
        module = table[name]
        doc = inspect.getdoc(module) or ""
        lines += _heading(f"caffe {name}", "-")
        summary, _, details = doc.partition("\n")
        lines += [_escape(summary), ""] + _literal_block(details.strip("\n"))
        flag_set = command_flag_set(module)
        if flag_set is None:
            lines += ["This command takes positional arguments only (see above).", ""]
            continue
        if flag_set.usage:
            lines += ["Usage::", "", textwrap.indent(flag_set.usage, "    "), ""]
        own = [f for f in flag_set.flags.values() if f.own]
        if not own:
            lines += ["No flags of its own.", ""]
            continue
        lines += [".. list-table::", "   :header-rows: 1", "   :widths: 20 10 15 55", "",
                  "   * - Flag", "     - Type", "     - Default", "     - Help"]
        for flag in own:
            lines += [f"   * - ``-{flag.name}``", f"     - {flag.kind.__name__}",
                      f"     - {_rst_literal(flag.default)}",
                      f"     - {_escape(flag.help) or '(no help text)'}"]
        lines.append("")
    lines += _heading("Logging flags", "-")
    lines += ["Every command also takes glog's flags, which may be set as ``GLOG_<name>`` "
              "environment variables instead:", ""]
    lines += [f"``-{name}``\n    {_escape(text)}\n" for name, text in GLOG_FLAGS.items()]
    return "\n".join(lines)


# --- the layer catalogue --------------------------------------------------------------------------
# Words in a layer's docstrings that name the fork it comes from, first match wins.
_FORKS = (
    ("SSD", "SSD (weiliu89/caffe, ssd branch)"),
    ("R-FCN", "R-FCN (daijifeng001/caffe-rfcn)"),
    ("Faster R-CNN", "Faster R-CNN (rbgirshick/caffe-fast-rcnn)"),
    ("py-faster-rcnn", "Faster R-CNN (rbgirshick/py-faster-rcnn)"),
    ("DeepLab", "DeepLab (caffe-deeplab)"),
    ("SegNet", "SegNet (alexgkendall/caffe-segnet)"),
    ("brocolli", "brocolli"),
    ("MobileNet", "MobileNet (farmingyard/caffe-mobilenet)"),
    ("ShuffleNet", "ShuffleNet (farmingyard/ShuffleNet)"),
)


def layer_fork(cls) -> str:
    """The fork(s) a layer class comes from, as named in the summary line of its class
    docstring, else of its module's (BVLC Caffe 1.0 layers name none: an empty string)."""
    for obj in (cls, inspect.getmodule(cls)):
        text = (inspect.getdoc(obj) or "").strip().split("\n", 1)[0]
        hits = sorted((text.find(word), label) for word, label in _FORKS if word in text)
        if hits:
            break
    labels: list[str] = []
    for _, label in hits:
        if label not in labels:
            labels.append(label)
    return ", ".join(labels)


def _layer_class(type_name: str):
    from caffe.layer import _REGISTRY

    return _REGISTRY[type_name]


def _count(cls, what: str) -> str:
    """``"1"``, ``"2-3"``, ``">= 1"``, ... from a layer class's exact/min/max counts."""
    exact = getattr(cls, f"exact_num_{what}", -1)
    low = getattr(cls, f"min_{what}", -1)
    high = getattr(cls, f"max_{what}", -1)
    if exact is None:
        return "set by the layer"
    if exact >= 0:
        return str(exact)
    if low >= 0 and high >= 0:
        return f"{low} to {high}"
    if low >= 0:
        return f"at least {low}"
    if high >= 0:
        return f"at most {high}"
    return "any"


def layer_entries() -> list[dict[str, str]]:
    """One entry per ``caffe.layer_type_list()`` type: ``type``, ``cls`` (dotted name),
    ``param`` (the LayerParameter field it reads, or "none"), ``bottoms``, ``tops``, ``fork``
    (empty for BVLC Caffe 1.0 layers) and ``doc`` (class docstring, plus the module's when the
    class defers to it)."""
    import caffe

    entries = []
    for type_name in caffe.layer_type_list():
        cls = _layer_class(type_name)
        module = inspect.getmodule(cls)
        doc = inspect.getdoc(cls) or ""
        module_doc = inspect.getdoc(module) or ""
        full = doc if "module docstring" not in doc and "see the module" not in doc \
            else f"{doc}\n\n{module_doc}"
        if not full.strip():
            full = module_doc
        params = re.findall(r"\b([a-z0-9_]+_param)\b", full)
        if not params:
            try:
                params = re.findall(r"layer_param\.([a-z0-9_]+_param)\b", inspect.getsource(cls))
            except (OSError, TypeError):
                params = []
        fork = layer_fork(cls)
        entries.append({"type": type_name, "cls": f"{cls.__module__}.{cls.__qualname__}",
                        "param": params[0] if params else "none", "bottoms": _count(cls, "bottom"),
                        "tops": _count(cls, "top"), "fork": fork, "doc": full.strip()})
    return entries


def layer_reference() -> str:
    """reStructuredText for the layer catalogue: a summary table and one section per type."""
    entries = layer_entries()
    lines = ["Every layer type the registry knows (``caffe.layer_type_list()``), generated from ",
             "the layer classes. *Fork* names the Caffe fork a type comes from; types without ",
             "one are BVLC Caffe 1.0's.", "",
             ".. list-table::", "   :header-rows: 1", "", "   * - Type", "     - Parameter",
             "     - Bottoms", "     - Tops", "     - Fork"]
    for e in entries:
        lines += [f"   * - :ref:`{e['type']} <layer-{e['type']}>`", f"     - ``{e['param']}``",
                  f"     - {e['bottoms']}", f"     - {e['tops']}", f"     - {e['fork'] or '-'}"]
    lines.append("")
    for e in entries:
        lines += [f".. _layer-{e['type']}:", ""]
        lines += _heading(e["type"], "-")
        fields = [f":Class: ``{e['cls']}``", f":Parameter: ``{e['param']}``",
                  f":Bottoms: {e['bottoms']}", f":Tops: {e['tops']}"]
        if e["fork"]:
            fields.append(f":Fork: {e['fork']}")
        lines += fields + [""] + _literal_block(e["doc"])
    return "\n".join(lines)


# --- the Python API -------------------------------------------------------------------------------
def api_modules() -> list[str]:
    """Modules on the API page: every public caffe module except the layer implementations
    (the layer catalogue covers those) and the CLI's tool modules (the CLI page does)."""
    return [m for m in caffe_modules()
            if not m.startswith(("caffe.layers.", "caffe.tools.")) and m != "caffe.proto"]
