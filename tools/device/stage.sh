#!/bin/bash
# First call of a GPU session: install the carried wheels and unpack the first half of the data into /tmp/cifar.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 tools/device/pack_cifar.py unpack .gpudata1 /tmp/cifar/cifar-10-batches-py || exit 1
