"""caffepy's data pipeline: Datum databases, the DataTransformer, image codecs, prefetching.

- ``caffe.data.db``: LMDB/LevelDB read and write (``open_db``, cursors, transactions).
- ``caffe.data.datum``: Datum <-> image conversions (Caffe's util/io).
- ``caffe.data.image``: OpenCV-semantics decode/encode/resize (cv2, or Pillow and torch).
- ``caffe.data.transformer``: ``DataTransformer`` (crop, mirror, mean, scale).
- ``caffe.data.prefetch``: base classes of the data layers and the prefetch thread.
- SSD's AnnotatedDatum pipeline: ``caffe.data.sampler`` (batch samplers),
  ``caffe.data.im_transforms`` (resize policies, noise, distortion) and
  ``caffe.data.annotated_transformer`` (one example's image and boxes).

The layers themselves (Data, ImageData, MemoryData, HDF5Data, HDF5Output, WindowData,
AnnotatedData) live in ``caffe.layers``.
"""

from caffe.data.db import LEVELDB, LMDB, NEW, READ, WRITE, format_key, open_db
from caffe.data.prefetch import set_decode_threads
from caffe.data.transformer import DataTransformer, load_mean_file

__all__ = ["LEVELDB", "LMDB", "NEW", "READ", "WRITE", "DataTransformer", "format_key",
           "load_mean_file", "open_db", "set_decode_threads"]
