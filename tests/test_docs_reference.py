"""The generated reference pages and the docstring count, checked without a Sphinx build.

The generators live in docs/_ext/caffe_docgen.py; the site build (.ci/run) renders them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import caffe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import caffe_docgen  # noqa: E402


def test_layer_reference_lists_every_registered_type_without_empty_entries():
    entries = caffe_docgen.layer_entries()
    assert [e["type"] for e in entries] == caffe.layer_type_list()
    for e in entries:
        empty = [k for k in ("cls", "param", "bottoms", "tops", "doc") if not e[k].strip()]
        assert not empty, f"layer {e['type']}: empty {empty}"
    text = caffe_docgen.layer_reference()
    for e in entries:
        assert f".. _layer-{e['type']}:" in text
        assert f"\n{e['type']}\n{'-' * len(e['type'])}\n" in text


def test_layer_reference_names_parameter_messages_and_forks():
    by_type = {e["type"]: e for e in caffe_docgen.layer_entries()}
    assert by_type["Convolution"]["param"] == "convolution_param"
    assert by_type["Pooling"]["param"] == "pooling_param"
    assert by_type["EuclideanLoss"]["param"] == "none"
    assert by_type["Convolution"]["bottoms"] == "at least 1"
    assert by_type["EuclideanLoss"]["bottoms"] == "2"
    assert by_type["Silence"]["tops"] == "0"
    # BVLC 1.0 types carry no fork; the fork layers name theirs.
    assert by_type["Convolution"]["fork"] == by_type["SoftmaxWithLoss"]["fork"] == ""
    assert by_type["PriorBox"]["fork"].startswith("SSD")
    assert by_type["Interp"]["fork"].startswith("DeepLab")
    assert by_type["ROIPooling"]["fork"].startswith("Faster R-CNN")
    assert "SegNet" in by_type["Upsample"]["fork"] and "brocolli" in by_type["Upsample"]["fork"]


def test_cli_reference_lists_every_command_and_flag_with_default_and_help():
    from caffe.tools.cli import commands

    text = caffe_docgen.cli_reference()
    table = commands()
    assert {"train", "test", "time", "device_query", "convert_imageset"} <= set(table)
    for name, module in table.items():
        assert f"\ncaffe {name}\n" in text
        flag_set = caffe_docgen.command_flag_set(module)
        if flag_set is None:
            continue
        for flag in flag_set.flags.values():
            if flag.own:
                assert f"* - ``-{flag.name}``" in text, (name, flag.name)
    train = caffe_docgen.command_flag_set(table["train"])
    assert train is not None and "solver" in train.flags
    assert "``-solver``" in text and "``-iterations``" in text and "``50``" in text


def test_api_page_covers_the_public_modules():
    modules = caffe_docgen.api_modules()
    for name in ("caffe", "caffe.io", "caffe.net_spec", "caffe.export", "caffe.detection",
                 "caffe.model_libs", "caffe.draw", "caffe.classifier", "caffe.detector",
                 "caffe.testing", "caffe.net", "caffe.blob", "caffe.solver"):
        assert name in modules
    assert "caffe.proto.caffe_pb2" not in modules
    assert not [m for m in modules if m.startswith(("caffe.layers.", "caffe.tools."))]


def test_every_public_callable_has_a_docstring():
    # "Public": every module of the caffe package (no name part with a leading underscore,
    # the generated caffe_pb2 excluded), the functions and classes each defines under a name
    # without a leading underscore, and those classes' own methods and properties likewise
    # named; a method overriding a documented base method inherits that docstring.
    missing = sorted(caffe_docgen.undocumented())
    assert not missing, f"public callables without a docstring: {missing}"


def test_docstring_counter_sees_undocumented_callables():
    import types

    module = types.ModuleType("caffe.fake_for_counting")

    def documented():
        """Has one."""

    def bare():
        pass

    for f in (documented, bare):
        f.__module__ = module.__name__
        setattr(module, f.__name__, f)
    module._private = bare
    names = [n for n, _ in caffe_docgen._public_members(module)]
    assert sorted(names) == ["bare", "documented"]
    assert caffe_docgen.public_callables()  # the real package yields rows
