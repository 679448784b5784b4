"""export a model to PyTorch source or ONNX

Usage: caffe export -model net.prototxt [-weights w.caffemodel] -format pytorch|onnx|torchscript
-output PATH [-opset N] [-fold] [-inputs a,b] [-outputs c,d] [-nocheck] [-phase TEST|TRAIN]
[-level N] [-stage s1,s2] [-gpu id].

caffepy's own command (C++ Caffe has none). Builds the net (TEST phase unless ``-phase`` says
otherwise), loads ``-weights`` if given (else the layers keep their fillers' random values, as
``caffe time`` runs them) and writes:

- ``pytorch``: ``PATH/model.py`` (one ``nn.Module`` class, importing only torch) and
  ``PATH/weights.pt`` (its state dict);
- ``onnx``: the ONNX graph at ``PATH`` (``-opset`` chooses the opset, default the writer's);
- ``torchscript``: ``torch.jit.trace`` of the torch module, saved at ``PATH``.

``-inputs`` / ``-outputs`` (blob names, comma-separated) export part of the net; ``-fold``
folds BatchNorm/Scale into the layer before and drops Dropout/Split. With ``-check`` (the
default) the net runs on a random standard-normal batch, the exported model runs on the same
values of its input blobs, and one line per output gives the largest absolute difference and
that difference relative to the output's largest magnitude. Each file written is printed.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from caffe.errors import CaffeError
from caffe.net import ALLOW_PYTHON_LAYERS_ENV, python_layers_allowed
from caffe.proto import caffe_pb2
from caffe.tools.flags import FlagSet
from caffe.tools.train import parse_gpus, parse_phase, parse_stages, use_devices

COMMAND = "export"

FORMATS = ("pytorch", "onnx", "torchscript")

log = logging.getLogger("caffe")


def export_flags() -> FlagSet:
    """The flags of ``caffe export``, as ``-help`` lists them."""
    summary, usage = (__doc__ or "").strip().split("\n\n")[:2]
    usage = " ".join(usage.split()).removeprefix("Usage: ")
    flags = FlagSet("caffe export", f"{summary}\nusage: {usage}")
    flags.define("model", "", "The model definition protocol buffer text file.")
    flags.define("weights", "", "Optional; trained weights (.caffemodel or .h5), separated by "
                                "','. Without them the fillers' random values are exported.")
    flags.define("format", "", "pytorch (DIR/model.py + DIR/weights.pt), onnx or torchscript.")
    flags.define("output", "", "Where to write: a directory for pytorch, a file otherwise.")
    flags.define("opset", 0, "Optional; the ONNX opset (0: the writer's default).")
    flags.define("fold", False, "Optional; fold BatchNorm/Scale into the layer before, drop "
                                "Dropout and Split.")
    flags.define("inputs", "", "Optional; blob names the exported model takes, separated by "
                               "',' (default: the net's inputs).")
    flags.define("outputs", "", "Optional; blob names the exported model returns, separated by "
                                "',' (default: the net's outputs).")
    flags.define("check", True, "Compare the exported model with caffepy on a random batch "
                                "and print the largest differences.")
    flags.define("phase", "", "Optional; network phase (TRAIN or TEST, default TEST).")
    flags.define("level", 0, "Optional; network level.")
    flags.define("stage", "", "Optional; network stages, separated by ','.")
    flags.define("gpu", "", "Optional; build and check the net on this GPU device.")
    flags.define("allow_python_layers", python_layers_allowed(None),
                 "Optional; load the net's Python layers (they cannot be exported; use "
                 f"-outputs to stop before them). Default from {ALLOW_PYTHON_LAYERS_ENV}.")
    return flags


def _names(spec: str) -> list[str] | None:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    return names or None


def main(argv: list[str]) -> int:
    """Run ``caffe export`` on ``argv`` (its flags and positional arguments); returns the exit
    status."""
    flags, positional = export_flags().parse(argv)
    if positional:
        raise CaffeError(f"unexpected arguments {positional}; flags are given as -name value")
    if not flags["model"]:
        raise CaffeError("Need a model definition to export (-model net.prototxt).")
    fmt = flags["format"].lower()
    if fmt not in FORMATS:
        raise CaffeError(f"-format {flags['format']!r}: expected one of {', '.join(FORMATS)}")
    if not flags["output"]:
        raise CaffeError(f"Need an output path (-output {'DIR' if fmt == 'pytorch' else 'FILE'})")
    inputs, outputs = _names(flags["inputs"]), _names(flags["outputs"])

    phase = parse_phase(flags["phase"], caffe_pb2.TEST)
    use_devices(parse_gpus(flags["gpu"]))
    from caffe.net import Net

    net = Net(flags["model"], phase, level=flags["level"], stages=parse_stages(flags["stage"]),
              allow_python_layers=flags["allow_python_layers"])
    for weights in (w for w in flags["weights"].split(",") if w):
        net.copy_from(weights)
    if not flags["weights"]:
        log.info("No -weights: exporting the fillers' random values.")

    output = Path(flags["output"])
    written, model = _export(net, fmt, output, flags, inputs, outputs)
    for path in written:
        print(f"Wrote {path}")
    if flags["check"]:
        for line in check_lines(net, model, inputs, outputs):
            print(line)
    return 0


def _exporters():
    try:
        import caffe.export as export
    except ImportError as exc:  # pragma: no cover - the package ships with caffe
        raise CaffeError(f"caffe.export is unavailable: {exc}") from exc
    return export


def _export(net, fmt: str, output: Path, flags, inputs, outputs):
    """Write the format; return (paths written, a callable running the exported model on a
    list of numpy inputs and returning a list of numpy outputs)."""
    export = _exporters()
    fold = flags["fold"]
    try:
        if fmt == "onnx":
            kwargs = {"inputs": inputs, "outputs": outputs, "fold": fold}
            if flags["opset"]:
                kwargs["opset"] = flags["opset"]
            output.parent.mkdir(parents=True, exist_ok=True)
            export.to_onnx(net, str(output), **kwargs)
            return [output], lambda: _onnx_runner(output)
        if fmt == "pytorch":
            paths = export.write_pytorch(net, str(output), inputs=inputs, outputs=outputs,
                                         fold=fold)
            return list(paths.values()), lambda: _pytorch_runner(Path(output), paths)
        module = export.to_torch(net, inputs=inputs, outputs=outputs, fold=fold).eval()
    except ModuleNotFoundError as exc:
        raise CaffeError(f"-format {fmt} needs the module {exc.name!r}: pip install "
                         f"'caffepy[export]'") from exc
    example = tuple(torch.from_numpy(a) for a in random_inputs(net, inputs))
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            traced = torch.jit.trace(module, example)
        traced.save(str(output))
    except Exception as exc:
        raise CaffeError(f"torch.jit.trace of the exported module failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    return [output], lambda: _torch_runner(torch.jit.load(str(output)))


def _torch_runner(module):
    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            result = module(*(torch.from_numpy(a) for a in arrays))
        if isinstance(result, torch.Tensor):
            result = (result,)
        elif isinstance(result, dict):
            result = tuple(result.values())
        return [r.detach().cpu().numpy() for r in result]

    return run


def _onnx_runner(path: Path):
    try:
        import onnxruntime
    except ImportError as exc:
        raise CaffeError("-check of an ONNX export needs onnxruntime: pip install "
                         "'caffepy[export]' (or give -nocheck)") from exc
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, arrays, strict=True)))

    return run


def load_pytorch(directory: Path, paths: dict | None = None):
    """The module that ``write_pytorch`` wrote to ``directory``, its weights loaded, imported
    from ``model.py`` under a private module name."""
    paths = paths or {}
    source = Path(paths.get("model", directory / "model.py"))
    weights = Path(paths.get("weights", directory / "weights.pt"))
    spec = importlib.util.spec_from_file_location(f"_caffe_export_{abs(hash(source))}", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    cls = getattr(module, "CaffeNet", None)
    if cls is None:
        classes = [v for v in vars(module).values()
                   if isinstance(v, type) and issubclass(v, torch.nn.Module)
                   and v.__module__ == module.__name__]
        if len(classes) != 1:
            raise CaffeError(f"{source}: expected one nn.Module class, found "
                             f"{[c.__name__ for c in classes]}")
        cls = classes[0]
    model = cls()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def _pytorch_runner(directory: Path, paths: dict):
    return _torch_runner(load_pytorch(directory, paths))


def random_inputs(net, inputs: list[str] | None, seed: int = 0) -> list[np.ndarray]:
    """Standard-normal values for the net's inputs, run through caffepy; returns the values of
    the blobs the exported model takes (``inputs`` or the net's inputs), in that order."""
    rng = np.random.default_rng(seed)
    feed = {name: rng.standard_normal(net.blobs[name].shape).astype(np.float32)
            for name in net.inputs}
    net.forward(**feed)
    return [np.array(net.blobs[name].cpu_data(), dtype=np.float32)
            for name in (inputs or net.inputs)]


def check_lines(net, make_runner, inputs, outputs) -> list[str]:
    """Run caffepy and the exported model on one random batch; one line per output."""
    arrays = random_inputs(net, inputs)
    expected = {name: np.array(net.blobs[name].cpu_data())
                for name in (outputs or net.outputs)}
    got = make_runner()(arrays)
    if len(got) != len(expected):
        raise CaffeError(f"check: the exported model returned {len(got)} outputs, expected "
                         f"{len(expected)} ({', '.join(expected)})")
    lines = []
    for (name, want), have in zip(expected.items(), got, strict=True):
        have = np.asarray(have)
        if have.shape != want.shape:
            raise CaffeError(f"check: output {name!r} has shape {list(have.shape)} in the "
                             f"export, {list(want.shape)} in caffepy")
        diff = float(np.max(np.abs(have.astype(np.float64) - want))) if want.size else 0.0
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        rel = diff / scale if scale else diff
        lines.append(f"Check {name}: max abs difference {diff:.3g}, relative to max "
                     f"|{name}| {rel:.3g} (shape {list(want.shape)})")
    return lines
