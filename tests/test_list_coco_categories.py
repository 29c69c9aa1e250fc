"""list_coco_categories.py: per-category counts from a JSON and from records, table and --json.

Run as a subprocess, as users run it (importing it here would clash with other scripts' absl flags)."""

import json
import os
import subprocess
import sys

import pytest

from dataset import coco_convert

pytestmark = pytest.mark.slow  # starts subprocesses or trains (pytest.ini)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAL_JSON = os.path.join(REPO, "dataset", "sample", "annotations", "instances_val.json")
SCRIPT = os.path.join(REPO, "list_coco_categories.py")


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def _expected():
    with open(VAL_JSON) as f:
        data = json.load(f)
    expected = {}
    for c in data["categories"]:
        anns = [a for a in data["annotations"] if a["category_id"] == c["id"]]
        expected[c["name"]] = {"coco_id": c["id"], "supercategory": c["supercategory"], "boxes": len(anns),
                               "images": len({a["image_id"] for a in anns}),
                               "crowd": sum(a["iscrowd"] for a in anns)}
    return expected


def _strip(rows):
    return {r["name"]: {k: r[k] for k in ("coco_id", "supercategory", "boxes", "images", "crowd")} for r in rows}


def test_json_and_records_give_the_same_counts_table_and_json(tmp_path):
    expected = _expected()
    table = _run("--annotations_file", VAL_JSON)
    assert table.returncode == 0, table.stderr[-2000:]
    lines = table.stdout.strip().splitlines()
    assert "coco_id" in lines[0] and len(lines) == 1 + 8 + 1 + 1  # header, 8 rows, summary, JSON
    from_json = json.loads(lines[-1])
    assert [r["id"] for r in from_json["categories"]] == list(range(1, 9))
    assert _strip(from_json["categories"]) == expected and from_json["images"] == 80
    out = str(tmp_path / "records")
    images = os.path.join(REPO, "dataset", "sample", "JPEGImages")
    coco_convert.convert({"val": coco_convert.CocoSplit(VAL_JSON, images)}, out, {"val": 1})
    records = _run("--label_map", os.path.join(out, "label_map.pbtxt"), "--split", "val", "--json")
    assert records.returncode == 0, records.stderr[-2000:]
    lines = records.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["categories"] == from_json["categories"]


def test_bad_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    failed = _run("--annotations_file", str(bad))
    assert failed.returncode == 2 and "bad.json: not a COCO instances file" in failed.stderr
    assert "Traceback" not in failed.stderr
