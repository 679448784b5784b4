"""Writing nets in Python: pycaffe's NetSpec, ``layers`` (L) and ``params`` (P).

``L.<Type>(*bottoms, **kwargs)`` describes one layer of Caffe type ``<Type>`` and returns its
top (a ``Top``), a tuple of tops when ``ntop > 1``, or the layer itself when ``ntop == 0``.
Keyword arguments become fields of the ``LayerParameter``:

- ``ntop=N`` (default 1) and ``in_place=True`` (tops reuse the bottom names) shape the layer;
- keywords ending in ``_param``, and ``param``, are LayerParameter fields
  (``param=[dict(lr_mult=1), dict(lr_mult=2)]``, ``convolution_param=dict(...)``);
- any other keyword goes to the layer type's own parameter message when that message has such
  a field (``L.Convolution(x, kernel_size=3)`` sets ``convolution_param.kernel_size``), else to
  the LayerParameter (``name``, ``loss_weight``, ``include=dict(phase=caffe.TRAIN)``, ...).

Values map onto the proto recursively: a dict fills a message, a list fills a repeated field
(a single value given for a repeated field becomes a one-element list), enum fields take the
numbers that ``P.<Type>.<NAME>`` gives (``P.Pooling.MAX``) or the value's name as a string.

``NetSpec`` names blobs: assign tops to its attributes (``n.conv1 = L.Convolution(n.data, ...)``)
and ``n.to_proto()`` gives the ``NetParameter`` of every layer the assigned tops need, in
dependency order, each layer named after its first top. Tops that are never assigned get
automatic names ``<Type><count>`` (``Convolution1``), as pycaffe generates them.

The SSD fork's additions, which its ``caffe.model_libs`` builders use: ``n.update(name,
params)`` sets keyword params of the layer behind top ``name`` after the fact (a given key
replaces its value), ``n.keys()`` / ``n.vals()`` list names and tops in assignment order, and
``del n[name]`` forgets a name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from caffe.errors import NetError
from caffe.proto import caffe_pb2

__all__ = ["NetSpec", "Top", "Function", "layers", "params", "to_proto", "param_name_dict",
           "assign_proto"]

# Layer types whose parameter message is not named after the type.
_EXTRA_PARAM_NAMES = {
    "Deconvolution": "convolution",
    "Im2col": "convolution",
    "RNN": "recurrent",
    "LSTM": "recurrent",
}


def param_name_dict() -> dict[str, str]:
    """Layer type -> the prefix of its ``<prefix>_param`` field, from LayerParameter's fields.

    A field ``foo_bar_param`` of message type ``FooBarParameter`` maps ``FooBar`` to
    ``foo_bar``, which covers the types named after their parameter message (pycaffe's rule);
    types that share another type's message (Deconvolution, RNN, LSTM) are added by hand.
    """
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                names[type_name[:-len("Parameter")]] = field.name[:-len("_param")]
    for type_name, prefix in _EXTRA_PARAM_NAMES.items():
        names.setdefault(type_name, prefix)
    return names


_PARAM_NAMES = param_name_dict()


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python numbers and lists, which protobuf accepts."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf >= 6 has is_repeated and drops label; older releases only have label.
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return field.label == FieldDescriptor.LABEL_REPEATED


def _scalar_for(field: FieldDescriptor, value: Any, where: str) -> Any:
    value = _plain(value)
    if field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
        enum_value = field.enum_type.values_by_name.get(value)
        if enum_value is None:
            known = ", ".join(v.name for v in field.enum_type.values)
            raise NetError(f"{where}: {value!r} is not a value of enum "
                           f"{field.enum_type.name} (one of {known})")
        return enum_value.number
    return value


def assign_proto(proto: Message, name: str, value: Any) -> None:
    """Set field ``name`` of ``proto`` from a Python value, recursively (dicts fill messages,
    lists fill repeated fields, a lone value for a repeated field becomes a one-item list)."""
    where = f"{proto.DESCRIPTOR.name}.{name}"
    field = proto.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        known = ", ".join(f.name for f in proto.DESCRIPTOR.fields)
        raise NetError(f"{proto.DESCRIPTOR.name} has no field named '{name}' (fields: {known})")
    is_message = field.type == FieldDescriptor.TYPE_MESSAGE
    try:
        if _is_repeated(field):
            items = list(value) if _is_sequence(value) else [value]
            container = getattr(proto, name)
            for item in items:
                if is_message:
                    _fill_message(container.add(), item, where)
                else:
                    container.append(_scalar_for(field, item, where))
        elif is_message:
            _fill_message(getattr(proto, name), value, where)
        else:
            setattr(proto, name, _scalar_for(field, value, where))
    except (TypeError, ValueError) as exc:
        raise NetError(f"{where}: cannot assign {value!r}: {exc}") from None


def _fill_message(message: Message, value: Any, where: str) -> None:
    if isinstance(value, Message):
        message.CopyFrom(value)
    elif isinstance(value, dict):
        # As pycaffe: a singular message field is set only by the fields the dict fills, so an
        # empty dict leaves it unset (an empty dict in a list still adds a repeated item).
        for key, item in value.items():
            assign_proto(message, key, item)
    else:
        raise NetError(f"{where}: expected a dict (or a {message.DESCRIPTOR.name}) for a "
                       f"message field, got {type(value).__name__} {value!r}")


class Top:
    """One output blob of a layer: the ``n``-th top of the Function ``fn``."""

    def __init__(self, fn: Function, n: int) -> None:
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The NetParameter of every layer needed to compute this top."""
        return to_proto(self)

    def _update(self, params: dict[str, Any]) -> None:
        self.fn._update(params)

    def _to_proto(self, layers: dict, names: dict, autonames: Counter) -> None:
        self.fn._to_proto(layers, names, autonames)

    def __repr__(self) -> str:
        return f"<Top {self.n} of {self.fn.type_name}>"


class Function:
    """One layer: its Caffe type, its bottoms (Tops of other layers) and its keyword params."""

    def __init__(self, type_name: str, inputs: Iterable[Any], params: dict[str, Any]) -> None:
        self.type_name = type_name
        inputs = tuple(inputs)
        for index, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise TypeError(f"{type_name} input {index} is not a Top "
                                f"(type is {type(bottom)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = int(self.params.pop("ntop", 1))
        self.in_place = bool(self.params.pop("in_place", False))
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _update(self, params: dict[str, Any]) -> None:
        """Set keyword params after the fact, as the SSD fork's NetSpec.update does: a key
        given replaces that key's value (``param`` lists included), other keys stay."""
        params = dict(params)
        if "ntop" in params and int(params["ntop"]) != self.ntop:
            raise NetError(f"{self.type_name} layer: update cannot change ntop from "
                           f"{self.ntop} to {params['ntop']} (its tops already exist)")
        params.pop("ntop", None)
        if "in_place" in params:
            self.in_place = bool(params.pop("in_place"))
        self.params.update(params)

    def _top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _layer_name(self, names: dict, autonames: Counter) -> str:
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _to_proto(self, layers: dict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottom_names = []
        for bottom in self.inputs:
            bottom._to_proto(layers, names, autonames)
            bottom_names.append(layers[bottom.fn].top[bottom.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(bottom_names)
        else:
            layer.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        layer.name = self._layer_name(names, autonames)
        for key, value in self.params.items():
            self._assign(layer, key, value)
        layers[self] = layer

    def _assign(self, layer: caffe_pb2.LayerParameter, key: str, value: Any) -> None:
        layer_fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
        if key in layer_fields and (key.endswith("_param") or key == "param"):
            assign_proto(layer, key, value)
            return
        prefix = _PARAM_NAMES.get(self.type_name)
        if prefix is not None:
            typed = getattr(layer, prefix + "_param")
            if key in typed.DESCRIPTOR.fields_by_name:
                assign_proto(typed, key, value)
                return
        if key in layer_fields:
            assign_proto(layer, key, value)
            return
        where = f"{prefix}_param" if prefix else "its own parameter message"
        raise NetError(f"layer '{layer.name}' of type {self.type_name}: unknown keyword "
                       f"'{key}' (neither a field of {where} nor of LayerParameter)")

    def __repr__(self) -> str:
        return f"<Function {self.type_name} ({len(self.inputs)} bottoms, {self.ntop} tops)>"


def _net_proto(tops, names: dict) -> caffe_pb2.NetParameter:
    """Every layer needed to compute ``tops``, named from ``names`` (top -> name) or
    automatically."""
    layers: dict[Function, caffe_pb2.LayerParameter] = {}
    autonames: Counter = Counter()
    for top in tops:
        top._to_proto(layers, names, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def to_proto(*tops: Top | Function) -> caffe_pb2.NetParameter:
    """The NetParameter of every layer needed to compute ``tops``, with automatic names."""
    return _net_proto(tops, {})


class NetSpec:
    """Named tops: assign ``n.<name> = L.<Type>(...)``; ``n.to_proto()`` gives the net with
    those names for the assigned blobs (and layers), automatic names for the rest."""

    def __init__(self) -> None:
        super().__setattr__("tops", {})

    def __setattr__(self, name: str, value: Top | Function) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str) -> Top | Function:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top named '{name}'") from None

    def __setitem__(self, key: str, value: Top | Function) -> None:
        self.tops[key] = value

    def __getitem__(self, key: str) -> Top | Function:
        return self.tops[key]

    def __delattr__(self, name: str) -> None:
        del self.tops[name]

    def __delitem__(self, name: str) -> None:
        del self.tops[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tops

    def keys(self) -> list[str]:
        """The assigned names, in assignment order (the SSD fork's ``net.keys()[-1]`` is the
        latest one)."""
        return list(self.tops)

    def vals(self) -> list[Top | Function]:
        """The assigned tops, in assignment order (the SSD fork's NetSpec.vals)."""
        return list(self.tops.values())

    def update(self, name: str, params: dict[str, Any]) -> None:
        """Set keyword params of the layer that produced top ``name`` (the SSD fork's
        NetSpec.update, as ``net.update(conv_name, {'dilation': 2})`` in its model_libs)."""
        top = self.tops.get(name)
        if top is None:
            raise NetError(f"NetSpec.update: no top named '{name}' "
                           f"(tops: {', '.join(self.tops)})")
        top._update(params)

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The NetParameter of every top assigned so far, layers named by their attribute names."""
        return _net_proto(self.tops.values(), {top: name for name, top in self.tops.items()})


class Layers:
    """``layers.<Type>(*bottoms, **params)``: a layer of Caffe type ``<Type>``."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer_fn(*bottoms: Top, **kwargs: Any) -> Top | tuple[Top, ...] | Function:
            fn = Function(type_name, bottoms, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops

        layer_fn.__name__ = type_name
        return layer_fn


class _ParamEnums:
    """The enum values of ``<Type>Parameter``: ``params.Pooling.MAX``."""

    def __init__(self, type_name: str) -> None:
        message = getattr(caffe_pb2, type_name + "Parameter", None)
        if message is None:
            raise AttributeError(f"caffe_pb2 has no message {type_name}Parameter")
        self._message = message

    def __getattr__(self, name: str) -> int:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._message, name)


class Parameters:
    """``params.<Type>.<VALUE>``: enum constants of ``<Type>Parameter`` (P.Pooling.MAX)."""

    def __getattr__(self, type_name: str) -> _ParamEnums:
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        return _ParamEnums(type_name)


layers = Layers()
params = Parameters()
