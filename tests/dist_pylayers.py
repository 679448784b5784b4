"""A Python data layer that shards itself, for the multi-process training tests.

Record i is a fixed random vector x_i (seed 1) with label i % CLASSES. Batch k of the whole job
(``batch * solver_count`` records in TRAIN) is records k * batch * count ...; solver r reads
its r-th slice of ``batch``, i.e. global batch k * count + r of size ``batch``. One solver at
batch 2b therefore reads, per iteration, the union of what two solvers at batch b read. In TEST
under the parallel test, solver r's k-th forward is test batch r + k * count, the batch that
``Solver.test`` assigns it.
"""

import numpy as np

import caffe
from caffe import common

RECORDS, DIM, CLASSES = 20, 5, 3


class ShardedData(caffe.Layer):
    def setup(self, bottom, top):
        self.batch = int(self.param_str)
        rng = np.random.default_rng(1)
        self.x = rng.standard_normal((RECORDS, DIM)).astype(np.float32)
        self.y = (np.arange(RECORDS) % CLASSES).astype(np.float32)
        train = self.phase == caffe.TRAIN
        sharded = train or common.parallel_test()
        self.count = caffe.solver_count() if sharded else 1
        self.rank = caffe.solver_rank() if sharded else 0
        self.k = 0

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, DIM)
        top[1].reshape(self.batch)

    def forward(self, bottom, top):
        first = (self.k * self.count + self.rank) * self.batch
        idx = (first + np.arange(self.batch)) % RECORDS
        top[0].data[...] = self.x[idx]
        top[1].data[...] = self.y[idx]
        self.k += 1

    def backward(self, top, propagate_down, bottom):
        pass
