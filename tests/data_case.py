"""Shared helpers for the data-pipeline tests: small databases, data layers, timed forwards."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np
import torch

from caffe.blob import Blob
from caffe.data import db as dbmod
from caffe.data.datum import image_to_datum

from layer_case import make_layer

GOLDEN_DATA = Path(__file__).parent / "golden" / "data"
TIMEOUT_S = 20.0


def golden_data() -> dict:
    with np.load(GOLDEN_DATA / "data_layer.npz") as npz:
        return {k: npz[k] for k in npz.files}


def write_db(path, images, labels, backend: str = "lmdb", names=None) -> None:
    """A NEW database of raw Datums (CxHxW uint8 images) under Caffe's keys."""
    with dbmod.open_db(path, dbmod.NEW, backend) as db:
        txn = db.new_transaction()
        for i, (img, label) in enumerate(zip(images, labels)):
            name = names[i] if names else f"img{i}.png"
            txn.put(dbmod.format_key(i, name), image_to_datum(img, int(label)).SerializeToString())
        txn.commit()


def random_images(n: int, shape=(3, 9, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def make_data_layer(text: str, phase: str = "TEST", dtype: torch.dtype = torch.float32):
    """A layer from the text of a LayerParameter (name defaults to 'data')."""
    return make_layer(text, phase, dtype, name="data")


def setup_layer(layer, n_tops: int = 2, bottom=()):
    top = [Blob(dtype=layer.dtype) for _ in range(n_tops)]
    layer.SetUp(list(bottom), top)
    return top


def forward_timed(layer, top, bottom=(), timeout: float = TIMEOUT_S):
    """Run layer.Forward on a helper thread and fail (instead of hanging) past ``timeout``."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(layer.Forward, list(bottom), top)
        return future.result(timeout=timeout)


def run_batches(layer, top, count: int):
    """Data and labels of ``count`` forwards, concatenated."""
    data, labels = [], []
    for _ in range(count):
        forward_timed(layer, top)
        data.append(top[0].data.copy())
        if len(top) > 1:
            labels.append(top[1].data.copy().reshape(-1))
    return np.concatenate(data), (np.concatenate(labels) if labels else None)
