"""HDF5Output layer: writes its two bottoms to an HDF5 file as datasets "data" and "label".

Caffe type ``HDF5Output``; reads ``hdf5_output_param.file_name``. Two bottoms, no tops.

    bottom[0]  data   N x ...   -> dataset "data"  (N x C x H x W, Caffe's legacy 4-D shape)
    bottom[1]  label  N x ...   -> dataset "label" (N x C x H x W)

Unlike Caffe, setup does not create (truncate) the file: building a net writes nothing, so a
model cannot clobber a file by being loaded. Each forward rewrites it with the bottoms it
received, atomically (a temporary file then os.replace). Values are written in the blobs'
dtype (float32 for float nets, as Caffe's H5LTmake_dataset_float). No backward.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from caffe.blob import Blob
from caffe.errors import DataError
from caffe.layer import Layer, register
from caffe.protoio import atomic_output

logger = logging.getLogger("caffe")

HDF5_DATA_DATASET_NAME = "data"
HDF5_DATA_LABEL_NAME = "label"


def write_hdf5_atomically(filename: str, datasets: dict[str, np.ndarray]) -> None:
    """Write ``datasets`` to a fresh HDF5 file at ``filename`` via a temp file + os.replace."""
    import h5py

    try:
        with atomic_output(filename) as tmp, h5py.File(tmp, "w") as f:
            for name, array in datasets.items():
                f.create_dataset(name, data=array)
    except OSError as exc:
        raise DataError(f"Failed to open HDF5 file {filename!r}: "
                        f"{exc.strerror or exc}") from None
    except (RuntimeError, ValueError) as exc:  # h5py's write failures (a full disk)
        raise DataError(f"Failed to write HDF5 file {filename!r}: {exc}") from None


@register("HDF5Output")
class HDF5OutputLayer(Layer):
    """Caffe's HDF5Output layer; see the module docstring."""

    exact_num_bottom = 2
    exact_num_top = 0

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        self.file_name = self.layer_param.hdf5_output_param.file_name
        self.check(bool(self.file_name), "hdf5_output_param.file_name is not set")
        # Caffe creates (truncates) the file here; building a net must not replace a file, so
        # only the folder is checked and the first forward writes.
        folder = os.path.dirname(os.path.abspath(self.file_name))
        if not os.path.isdir(folder):
            raise DataError(f"{self.type_name} layer {self.name!r}: Failed to open HDF5 file "
                            f"{self.file_name!r}: folder {folder!r} does not exist")
        if os.path.isdir(self.file_name):
            raise DataError(f"{self.type_name} layer {self.name!r}: Failed to open HDF5 file "
                            f"{self.file_name!r}: it is a directory")

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """No tops to shape."""

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        self.check(bottom[0].num == bottom[1].num,
                   f"data blob and label blob must have the same batch size "
                   f"({bottom[0].num} vs {bottom[1].num})")
        data = bottom[0].cpu_data().reshape(
            bottom[0].num, bottom[0].channels, bottom[0].height, bottom[0].width)
        label = bottom[1].cpu_data().reshape(
            bottom[1].num, bottom[1].channels, bottom[1].height, bottom[1].width)
        logger.info("Saving HDF5 file %s", self.file_name)
        write_hdf5_atomically(self.file_name, {HDF5_DATA_DATASET_NAME: data.copy(),
                                               HDF5_DATA_LABEL_NAME: label.copy()})
        logger.info("Successfully saved %d rows", bottom[0].num)

    def backward(self, top, propagate_down, bottom) -> None:
        """Nothing to propagate (Caffe's Backward is a no-op)."""
