"""caffe.layer_type_list() offers every layer type of Caffe 1.0 (plus Clip and Swish)."""

import caffe

CAFFE_1_0_TYPES = """
AbsVal Accuracy ArgMax BatchNorm BatchReindex Bias BNLL Clip Concat ContrastiveLoss Convolution
Crop Data Deconvolution Dropout DummyData ELU Eltwise Embed EuclideanLoss Exp Filter Flatten
HDF5Data HDF5Output HingeLoss Im2col ImageData InfogainLoss InnerProduct Input Log LRN LSTM
LSTMUnit MemoryData MultinomialLogisticLoss MVN Parameter Pooling Power PReLU Python Reduction
ReLU Reshape RNN Scale Sigmoid SigmoidCrossEntropyLoss Silence Slice Softmax SoftmaxWithLoss
Split SPP Swish TanH Threshold Tile WindowData
""".split()


def test_every_caffe_layer_type_is_registered():
    registered = set(caffe.layer_type_list())
    missing = sorted(set(CAFFE_1_0_TYPES) - registered)
    assert not missing, f"missing layer types: {missing}"
    assert caffe.layer_type_list() == sorted(registered)
