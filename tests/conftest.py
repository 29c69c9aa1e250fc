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

# The files that take the longest (--durations, 2-core machine), run first. .ci/run gives whole files to
# two xdist workers in collection order (--dist loadfile --no-loadscope-reorder): a long file handed out
# last would keep one worker busy while the other idles. Every other file keeps its place.
LONGEST_FIRST = ("test_train_ssd.py", "test_soak.py", "test_reliability_training.py", "test_preemption.py",
                 "test_device_check.py", "test_ssdlite_deploy.py", "test_coco_end_to_end.py", "test_eval_ssd.py",
                 "test_data_service.py", "test_reliability_outputs.py", "test_your_own_data.py", "test_tflite.py",
                 "test_detect.py", "test_docs.py", "test_cli_errors.py", "test_export.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: tests keep their order


@pytest.fixture(scope="session")
def sample_records(tmp_path_factory):
    """The embedded sample converted once per session: train (4 shards), val (2 shards), label map."""
    from dataset import convert
    out = str(tmp_path_factory.mktemp("sample_records"))
    splits = {"train": [convert.Split.parse("sample:train")], "val": [convert.Split.parse("sample:val")]}
    convert.convert(os.path.join(REPO_ROOT, "dataset"), out, splits, {"train": 4, "val": 2}, num_threads=2)
    return out
