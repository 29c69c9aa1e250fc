"""The COCO sample end to end, as a user runs it: convert, train a few steps, evaluate by the protocol."""

import json
import os
import subprocess
import sys

import pytest

from dataset import coco, coco_convert
from metrics import result_files

pytestmark = pytest.mark.slow  # starts subprocesses or trains (pytest.ini)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "dataset", "sample")
VAL_JSON = os.path.join(SAMPLE, "annotations", "instances_val.json")


def _run(script, *args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_e2e")
    data_dir, model_dir = str(root / "records"), str(root / "run")
    # The script with these defaults is tested in test_coco_convert.py; in-process saves a TF start.
    splits = {name: coco_convert.CocoSplit(os.path.join(SAMPLE, "annotations", "instances_%s.json" % name),
                                           os.path.join(SAMPLE, "JPEGImages")) for name in ("train", "val")}
    coco_convert.convert(splits, data_dir, {"train": 2, "val": 1}, num_threads=2)
    result = _run("train_ssd.py", "--data_dir", data_dir, "--model_dir", model_dir, "--model",
                  "ssd300_vgg16_coco", "--width_multiplier", "0.125", "--batch_size", "4",
                  "--optimizer", "adam", "--warmup_steps", "0", "--max_steps", "6",
                  "--save_checkpoints_steps", "6", "--image_summary_steps", "0", "--log_every_n_steps", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 6/6" in result.stderr
    return data_dir, model_dir, root


def _eval(data_dir, model_dir, output_dir, *extra):
    result = _run("eval_ssd.py", "--data_dir", data_dir, "--model_dir", model_dir, "--metrics", "coco",
                  "--output_dir", output_dir, "--write_summaries=false", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_trains_and_evaluates_by_the_official_protocol(trained):
    data_dir, model_dir, root = trained
    from_records = _eval(data_dir, model_dir, str(root / "records_route"))
    from_file = _eval(data_dir, model_dir, str(root / "file_route"), "--annotations_file", VAL_JSON)
    assert from_records["num_images"] == from_file["num_images"] == 80
    assert from_records["coco"] == from_file["coco"]
    assert from_records["coco"]["AP"] is not None and from_records["num_detections"] > 0
    with open(os.path.join(str(root / "file_route"), result_files.COCO_RESULTS_FILENAME)) as f:
        results = json.load(f)
    with open(VAL_JSON) as f:
        data = json.load(f)
    assert {r["image_id"] for r in results} <= {i["id"] for i in data["images"]}
    assert {r["category_id"] for r in results} <= set(coco.find_category_map(data_dir).coco_ids)
    assert len(results) == from_file["num_detections"]


def test_eval_names_a_bad_annotations_file_in_one_line(trained):
    data_dir, model_dir, root = trained
    result = _run("eval_ssd.py", "--data_dir", data_dir, "--model_dir", model_dir, "--metrics", "coco",
                  "--annotations_file", str(root / "nowhere.json"))
    assert result.returncode == 2
    assert "nowhere.json: file not found" in result.stderr and "Traceback" not in result.stderr
    with open(VAL_JSON) as f:
        data = json.load(f)
    data["categories"][0]["id"] = 2
    other = root / "other_categories.json"
    other.write_text(json.dumps(data))
    result = _run("eval_ssd.py", "--data_dir", data_dir, "--model_dir", model_dir, "--metrics", "coco",
                  "--annotations_file", str(other))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "its categories differ" in result.stderr and "Traceback" not in result.stderr
