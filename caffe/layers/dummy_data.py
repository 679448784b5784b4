"""DummyData: tops filled by fillers, for tests and placeholder inputs."""

from __future__ import annotations

from caffe.filler import fill
from caffe.layer import Layer, register
from caffe.layers.input import shape_of
from caffe.proto import caffe_pb2


@register("DummyData")
class DummyDataLayer(Layer):
    """DummyData, reads ``dummy_data_param``: ``shape`` (once, or once per top) or the legacy
    ``num``/``channels``/``height``/``width`` (each once, or once per top; not with shape),
    and ``data_filler`` (none: constant 0; one for every top; or one per top).

    No bottoms; one or more tops. A top with a constant filler is filled once at setup; the
    others are refilled on every forward, as Caffe does.
    """

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom, top):
        param = self.layer_param.dummy_data_param
        num_top = len(top)
        fillers = list(param.data_filler)
        self.check(len(fillers) in (0, 1, num_top),
                   f"Number of data fillers must be 0, 1 or equal to the number of tops: "
                   f"{num_top} tops; you specified {len(fillers)} data fillers")
        if not fillers:
            fillers = [caffe_pb2.FillerParameter(type="constant", value=0)]
        self.fillers = fillers
        legacy = {name: list(getattr(param, name))
                  for name in ("num", "channels", "height", "width")}
        if any(legacy.values()):
            self.check(len(param.shape) == 0, "Both shape and legacy fields were specified")
            for name, values in legacy.items():
                self.check(len(values) in (1, num_top),
                           f"Must specify '{name}' once, or once per top blob ({num_top}); "
                           f"specified {len(values)}")
            for i, blob in enumerate(top):
                blob.reshape([values[0 if len(values) == 1 else i]
                              for values in legacy.values()])
        else:
            self.check(len(param.shape) in (1, num_top),
                       f"Must specify 'shape' once, or once per top blob ({num_top}); "
                       f"specified {len(param.shape)}")
            for i, blob in enumerate(top):
                shape = param.shape[0 if len(param.shape) == 1 else i]
                blob.reshape(shape_of(self, shape, f"dummy_data_param.shape for top {i}"))
        # Constant tops are filled once now; the rest on every forward.
        self.refill = [f.type != "constant" for f in fillers]
        for i, blob in enumerate(top):
            if not self._refills(i):
                fill(blob, self._filler(i))

    def _filler(self, top_index: int):
        return self.fillers[top_index if len(self.fillers) > 1 else 0]

    def _refills(self, top_index: int) -> bool:
        return self.refill[top_index if len(self.refill) > 1 else 0]

    def forward(self, bottom, top):
        for i, blob in enumerate(top):
            if self._refills(i):
                fill(blob, self._filler(i))
