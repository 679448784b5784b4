"""Caffe's command-line tools: ``caffe <command>`` and the standalone tool names."""
