"""eval_ssd.py --results_file --analysis_dir end to end (a subprocess; the routes' mistakes are checked
in-process in test_analysis_doctor.py)."""

import json
import os
import subprocess
import sys

import pytest

from apps.doctor import model_doctor
from tests.test_analysis_doctor import _EchoDetector

pytestmark = pytest.mark.slow  # starts subprocesses (pytest.ini)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "eval_ssd.py"), *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_results_file_doctor_and_mistakes(sample_records, tmp_path):
    # Perfect detections of the val records, written as eval_ssd.py writes its results.
    evaluator = model_doctor.evaluator_from_detector(_EchoDetector(sample_records), sample_records, "val")
    evaluator.write_results(str(tmp_path / "results"))
    results_file = str(tmp_path / "results" / "coco_detections.json")
    doctor = str(tmp_path / "doctor")
    done = _run("--results_file", results_file, "--data_dir", sample_records, "--analysis_dir", doctor,
                "--metrics", "voc07")
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads(done.stdout.strip().splitlines()[-1])
    assert final["results_file"] == results_file and final["num_images"] == 80
    assert final["voc07"]["mAP"] == pytest.approx(1.0)
    analysis = final["analysis"]
    assert analysis["tide"]["AP50"] == pytest.approx(1.0)
    assert analysis["files"]["summary"] == os.path.join(doctor, "summary.png")
    with open(os.path.join(doctor, model_doctor.REPORT_FILENAME)) as f:
        first = f.readline().strip()
    assert first in done.stdout   # the report's first lines are printed before the table
    assert os.listdir(os.path.join(doctor, model_doctor.TENSORBOARD_SUBDIR))
