"""Runs `python -m MODULE ARGS` with TFDS mocked: `python tests/mocked_tfds_run.py N MODULE ARGS`.

Every `tfds.data_source` / builder then serves N random examples per split from the real
dataset's feature spec (`tfds.testing.mock_data`), so the experiments run end to end on
`cifar10wo0`, `mnistwo9`, `cifar10-c`, ... through the real loading code, offline.
"""
import runpy
import sys
from unittest import mock

import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking


def _getitems(record_keys, generator, serialized=False):
  # TFDS 4.9.10's mock assigns `functools.partial(_getitems, generator=...)` as a plain
  # attribute of a MagicMock, so the data source's batched `__getitems__(keys)` call reaches
  # it without `self` and fails; this takes the keys as the first argument instead.
  assert not serialized
  return [generator[k] for k in record_keys]


if __name__ == "__main__":
  n, module = int(sys.argv[1]), sys.argv[2]
  sys.argv = [module, *sys.argv[3:]]
  with tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE), \
       mock.patch.object(mocking, "_getitems", _getitems):
    runpy.run_module(module, run_name="__main__", alter_sys=True)
