"""benchmarks/device_check.sh in its tiny CPU form: it runs end to end and its JSON holds every figure."""

import json
import os
import subprocess

import pytest

pytestmark = pytest.mark.slow  # starts subprocesses or trains (pytest.ini)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_device_check_reports_training_input_and_inference():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    result = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "device_check.sh"), "--tiny",
                             "--budget_s", "600"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tiny"] is True and report["skipped"] == []
    train = report["train_images_per_s"]
    assert sorted(train) == ["float32_xla_off_batch2", "float32_xla_on_batch2"]
    assert sorted(report["train_resnet34_images_per_s"]) == ["float32_xla_off_batch2", "float32_xla_on_batch2"]
    assert min(report["train_resnet34_images_per_s"].values()) > 0
    assert all(rate > 0 for rate in train.values())
    # The ratio is against the baseline of the same run: XLA on over off at the same batch.
    ratio = report["ratios"]["float32_xla_on_batch2_over_float32_xla_off_batch2"]
    assert abs(ratio - train["float32_xla_on_batch2"] / train["float32_xla_off_batch2"]) < 0.01
    assert report["input"]["images_per_s"] > 0 and report["input"]["host_cores"] == os.cpu_count()
    inference = report["inference"]["float32"]
    assert inference["batch1_latency_ms"] > 0 and inference["batch2_images_per_s"] > 0
