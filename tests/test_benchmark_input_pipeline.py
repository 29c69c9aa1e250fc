"""benchmarks/input_pipeline.py at a tiny size: it runs end to end, box scaling included, and its last
line is one JSON object whose ratios are the quotients of its own rates."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # starts subprocesses or trains (pytest.ini)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_input_pipeline_benchmark_reports_rates_ratios_and_box_scaling():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-m", "benchmarks.input_pipeline", "--images", "16", "--batch_size", "4",
                             "--batches", "1", "--rounds", "1", "--boxes_per_image", "3"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("full", "decode"):
        assert report[f"{name}_images_per_s"] > 0 and report[f"{name}_images_per_cpu_s"] > 0
    ratio = report["full_images_per_cpu_s"] / report["decode_images_per_cpu_s"]
    assert abs(report["ratio_full_over_decode_per_cpu_s"] - ratio) < 0.01
    scaling = report["boxes_per_image"]["3"]
    # Every image holds exactly 3 boxes; the crop keeps those whose centre it holds, so at most 3.
    assert 0 <= scaling["mean_boxes_after_crop"] <= 3
    assert scaling["full_images_per_cpu_s"] > 0 and scaling["iou_and_match_ms_per_image"] > 0
    assert 0 < scaling["matcher_share"] < 1
