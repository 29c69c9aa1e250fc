"""Shared test set-up.

Two logical CPU devices are configured before TensorFlow touches a device, so distribution tests can
simulate two replicas on a CPU-only machine (DESIGN.md). Everything else runs on the first one.
The repository root is on sys.path through pytest.ini's `pythonpath = .`; tests marked `slow`
(pytest.ini) start subprocesses or train, and `python3 -m pytest -q -m "not slow" tests` leaves them out.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def sample_records(tmp_path_factory):
    """The embedded sample converted once per session: train (4 shards), val (2 shards), label map."""
    from dataset import convert
    out = str(tmp_path_factory.mktemp("sample_records"))
    splits = {"train": [convert.Split.parse("sample:train")], "val": [convert.Split.parse("sample:val")]}
    convert.convert(os.path.join(REPO_ROOT, "dataset"), out, splits, {"train": 4, "val": 2}, num_threads=2)
    return out
