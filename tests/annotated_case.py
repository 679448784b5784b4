"""Small AnnotatedDatum databases for the AnnotatedData tests (written with caffe_pb2 directly)."""

from __future__ import annotations

import numpy as np

from caffe.data import db as dbmod
from caffe.data.datum import encoded_datum, image_to_datum
from caffe.data.image import to_hwc
from caffe.proto import caffe_pb2


def annotated_datum(image: np.ndarray, groups, encoding: str = "", label: int = 0,
                    with_type: bool = True) -> caffe_pb2.AnnotatedDatum:
    """An AnnotatedDatum of a CxHxW uint8 ``image``; ``groups`` maps group_label to a list of
    (instance_id, [xmin, ymin, xmax, ymax], difficult)."""
    record = caffe_pb2.AnnotatedDatum()
    datum = encoded_datum(to_hwc(image), encoding, label) if encoding else \
        image_to_datum(image, label)
    record.datum.CopyFrom(datum)
    if with_type:
        record.type = caffe_pb2.AnnotatedDatum.BBOX
    for group_label, entries in groups.items():
        group = record.annotation_group.add()
        group.group_label = int(group_label)
        for instance_id, box, difficult in entries:
            anno = group.annotation.add()
            anno.instance_id = int(instance_id)
            anno.bbox.xmin, anno.bbox.ymin, anno.bbox.xmax, anno.bbox.ymax = box
            anno.bbox.difficult = bool(difficult)
    return record


def write_annotated_db(path, records, backend: str = "lmdb") -> None:
    """A NEW database holding ``records`` (AnnotatedDatum messages or raw bytes) in order."""
    with dbmod.open_db(str(path), dbmod.NEW, backend) as db:
        txn = db.new_transaction()
        for i, record in enumerate(records):
            value = record if isinstance(record, bytes) else record.SerializeToString()
            txn.put(dbmod.format_key(i, f"img{i}.png"), value)
        txn.commit()


def random_groups(rng: np.random.Generator, max_boxes: int = 4):
    """Random ground truth: 1..max_boxes boxes in 1..3 groups, with sides >= 0.05."""
    groups: dict = {}
    for instance in range(int(rng.integers(1, max_boxes + 1))):
        lo = rng.uniform(0, 0.8, 2)
        hi = lo + rng.uniform(0.05, 1 - lo)
        box = [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]
        groups.setdefault(int(rng.integers(1, 4)), []).append(
            (instance, box, bool(rng.integers(2))))
    return groups
