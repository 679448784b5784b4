"""Float-typed proto fields read as C++ Caffe reads them: as a 32-bit float.

A value *set* in a float field (from prototxt, the wire or assignment) is stored as float32 by
every protobuf implementation. An *unset* field's default is not: the C++ and upb backends give
the float32 default (``eps`` 1e-5 reads as 9.99999974738e-06), protobuf's pure-Python backend
(``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``) gives the double parsed from the schema
(1e-05). Caffe computes with the float, so layers and solvers read such fields through
:func:`float_field`, which gives the same number under every backend. It matters for the
fields whose default is no exact float32 (``tests/test_proto_floats.py`` keeps the list):
SolverParameter delta, momentum2, rms_decay; BatchNormParameter moving_average_fraction, eps;
MVNParameter eps; NormalizeParameter eps; NonMaximumSuppressionParameter nms_threshold;
HardSigmoidParameter alpha.
"""

from __future__ import annotations

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = ["float_field"]


def float_field(message: Message, name: str) -> float:
    """The value of the singular ``float`` field ``name`` of ``message`` (set or default),
    rounded to float32 as Caffe holds it, as a Python float."""
    field = message.DESCRIPTOR.fields_by_name.get(name)
    value = getattr(message, name, None)
    if field is None or field.type != FieldDescriptor.TYPE_FLOAT or not isinstance(value, float):
        raise TypeError(f"{message.DESCRIPTOR.full_name}.{name} is not a singular float field")
    return float(np.float32(value))
