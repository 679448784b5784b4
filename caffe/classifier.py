"""pycaffe's ``Classifier``: a Net in TEST phase that classifies H x W x K images.

Images are resized to ``image_dims``, cut into crops of the net's input size (ten crops, the
four corners and the center plus their mirror images, with ``oversample=True``, whose
predictions are averaged; the center crop otherwise), preprocessed by a
``caffe.io.Transformer`` (H x W x K -> K x H x W, then ``channel_swap``, ``raw_scale``,
``mean`` subtraction and ``input_scale``, in that order) and run through the net; ``predict``
returns the first output blob (N x classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from caffe import io as caffe_io
from caffe.errors import CaffeError
from caffe.net import Net
from caffe.proto import caffe_pb2


def configure_transformer(net: Net, mean=None, input_scale=None, raw_scale=None,
                          channel_swap=None):
    """A Transformer for the net's first input with pycaffe's preprocessing options."""
    in_ = net.inputs[0]
    transformer = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """Image classification with a Net.

    ``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None)``: ``image_dims`` (H, W) is the size images are scaled
    to before cropping (default: the net's input size, i.e. one whole-image crop).
    """

    def __init__(self, model_file, pretrained_file, image_dims: Sequence[int] | None = None,
                 mean: np.ndarray | None = None, input_scale: float | None = None,
                 raw_scale: float | None = None, channel_swap: Sequence[int] | None = None
                 ) -> None:
        Net.__init__(self, model_file, phase=caffe_pb2.TEST, weights=pretrained_file)
        if not self.inputs:
            raise CaffeError("Classifier: the net has no input blob to feed images into")
        in_ = self.inputs[0]
        self.transformer = configure_transformer(self, mean, input_scale, raw_scale,
                                                 channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        if image_dims is None or len(image_dims) == 0:
            image_dims = self.crop_dims
        self.image_dims = np.array(image_dims, dtype=int)
        if (self.image_dims < self.crop_dims).any():
            raise CaffeError(f"Classifier: image_dims {tuple(self.image_dims)} are smaller than "
                             f"the net's input size {tuple(self.crop_dims)}")

    def predict(self, inputs: Sequence[np.ndarray], oversample: bool = True) -> np.ndarray:
        """Class scores (N x C) of N images (each H x W x K).

        With ``oversample`` the scores of the ten crops of each image are averaged; without,
        the center crop is classified.
        """
        if len(inputs) == 0:
            raise CaffeError("Classifier.predict: no images given")
        channels = inputs[0].shape[2] if inputs[0].ndim == 3 else 1
        scaled = np.zeros((len(inputs), self.image_dims[0], self.image_dims[1], channels),
                          dtype=np.float32)
        for ix, image in enumerate(inputs):
            if image.ndim == 2:
                image = image[:, :, np.newaxis]
            if image.shape[2] != channels:
                raise CaffeError(f"Classifier.predict: image {ix} has {image.shape[2]} "
                                 f"channels, image 0 has {channels}")
            scaled[ix] = caffe_io.resize_image(image, self.image_dims)

        if oversample:
            crops = caffe_io.oversample(scaled, self.crop_dims)
        else:
            center = self.image_dims / 2.0
            half = self.crop_dims / 2.0
            top, left = (center - half).astype(int)
            bottom, right = (center + half).astype(int)
            crops = scaled[:, top:bottom, left:right, :]

        in_ = self.inputs[0]
        caffe_in = np.zeros((crops.shape[0], crops.shape[3], crops.shape[1], crops.shape[2]),
                            dtype=np.float32)
        for ix, crop in enumerate(crops):
            caffe_in[ix] = self.transformer.preprocess(in_, crop)
        out = self.forward_all(**{in_: caffe_in})
        predictions = out[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
