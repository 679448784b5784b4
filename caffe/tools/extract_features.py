"""Extract features of a trained net's blobs into databases of Datums (extract_features).

Usage: caffe extract_features pretrained_net_param feature_extraction_proto_file
       extract_feature_blob_name1[,name2,...] save_feature_dataset_name1[,name2,...]
       num_mini_batches db_type [CPU/GPU] [DEVICE_ID=0]

Builds the TEST net of feature_extraction_proto_file (its data layer supplies the inputs),
loads the weights, runs num_mini_batches forward passes and stores, per blob, one Datum per
item (float_data = the item's values; channels/height/width = the blob's legacy shape) under
keys ``%010d`` in a NEW database of db_type (lmdb or leveldb). Each database is written in a
temporary directory and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from caffe import common
from caffe.data.db import AtomicNewDB, backend_name
from caffe.errors import CaffeError
from caffe.proto import caffe_pb2

COMMAND = "extract_features"
logger = logging.getLogger("caffe")

USAGE = ("This program takes in a trained network and an input data layer, and then extract "
         "features of the input data produced by the net.\n"
         "Usage: extract_features  pretrained_net_param  feature_extraction_proto_file  "
         "extract_feature_blob_name1[,name2,...]  save_feature_dataset_name1[,name2,...]  "
         "num_mini_batches  db_type  [CPU/GPU] [DEVICE_ID=0]\n"
         "Note: you can extract multiple features in one pass by specifying multiple feature "
         "blob names and dataset names separated by ','. The names cannot contain white space "
         "characters and the number of blobs and datasets must be equal.")


def main(argv: list[str]) -> int:
    """Run ``caffe extract_features`` on ``argv`` (its flags and positional arguments); returns the
    exit status."""
    if argv[:1] in (["-help"], ["--help"], ["-h"]):
        print(USAGE)
        return 0
    if len(argv) < 6:
        logger.error("%s", USAGE)
        return 1
    if len(argv) > 6 and argv[6] == "GPU":
        device_id = int(argv[7]) if len(argv) > 7 else 0
        if device_id < 0:
            raise CaffeError(f"extract_features: DEVICE_ID must be >= 0, got {device_id}")
        logger.info("Using GPU, device_id=%d", device_id)
        common.set_device(device_id)
        common.set_mode_gpu()
    else:
        logger.info("Using CPU")
        common.set_mode_cpu()
    weights, proto, blob_arg, dataset_arg, batches_arg, db_type = argv[:6]
    from caffe.net import Net

    net = Net(proto, weights, caffe_pb2.TEST)
    blob_names = blob_arg.split(",")
    dataset_names = dataset_arg.split(",")
    if len(blob_names) != len(dataset_names):
        raise CaffeError(f"extract_features: the number of blob names and dataset names must be "
                         f"equal ({len(blob_names)} vs {len(dataset_names)})")
    for name in blob_names:
        if name not in net.blobs:
            raise CaffeError(f"Unknown feature blob name {name} in the network {proto}")
    try:
        num_mini_batches = int(batches_arg)
    except ValueError:
        raise CaffeError(f"extract_features: num_mini_batches must be an integer, got "
                         f"{batches_arg!r}") from None
    backend = backend_name(db_type)
    with contextlib.ExitStack() as stack:
        dbs = []
        for name in dataset_names:
            logger.info("Opening dataset %s", name)
            dbs.append(stack.enter_context(AtomicNewDB(name, backend)))
        txns = [db.new_transaction() for db in dbs]
        counts = [0] * len(blob_names)
        logger.info("Extracting Features")
        for _ in range(num_mini_batches):
            net.forward()
            for i, name in enumerate(blob_names):
                blob = net.blobs[name]
                features = np.asarray(blob.data, dtype=np.float32).reshape(blob.num, -1)
                for row in features:
                    datum = caffe_pb2.Datum()
                    datum.channels, datum.height, datum.width = (blob.channels, blob.height,
                                                                 blob.width)
                    datum.float_data.extend(row.tolist())
                    txns[i].put(f"{counts[i]:010d}", datum.SerializeToString())
                    counts[i] += 1
                    if counts[i] % 1000 == 0:
                        txns[i].commit()
                        txns[i] = dbs[i].new_transaction()
                        logger.info("Extracted features of %d query images for feature blob %s",
                                    counts[i], name)
        for i, name in enumerate(blob_names):
            txns[i].commit()
            logger.info("Extracted features of %d query images for feature blob %s",
                        counts[i], name)
    logger.info("Successfully extracted the features!")
    return 0
