"""Caffe's protobuf schema: ``caffe.proto`` (Caffe 1.0 with the forks' fields), the generated
``caffe_pb2`` messages, ``floats`` (float fields read as C++ Caffe reads them) and ``regenerate``
(rebuilds caffe_pb2 with protoc)."""
