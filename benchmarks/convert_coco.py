"""The COCO converter's JSON pass at instances_train2017.json's size: rate and peak memory.

A synthetic instances JSON of the real file's shape is written to a temporary folder: 118,287 images,
860,001 annotations (1% crowd with RLE counts, the rest with polygon segmentations), about 450 MB.
Each measurement runs in its own child process, so each peak (getrusage ru_maxrss) is its own:

  (a) baseline: plain json.load of the file, what pycocotools' COCO() does first;
  (b) converter: dataset.coco.load_instances + coco_convert.plan_split, the whole first pass of
      convert_coco_tfrecords.py (parse, validate every box and id, group by image), which is all
      the converter holds in memory for a split; the image pass streams one image per worker.

Images are not written (the image pass is benchmarks/convert.py's). The last line printed is one
JSON object; rates are per second of wall time, ratios (b)/(a) from the same run.

    python3 -m benchmarks.convert_coco                     # full size (needs ~5 GB free for (a))
    python3 -m benchmarks.convert_coco --scale 0.05        # a quick look
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_float("scale", 1.0, "Fraction of instances_train2017.json's image and box counts.")
flags.DEFINE_string("json_path", "", "Reuse this synthetic JSON instead of writing a new one.")
flags.DEFINE_enum("child", "", ["", "baseline", "converter"], "Internal: run one measurement.")

NUM_IMAGES = 118_287        # instances_train2017.json
NUM_ANNOTATIONS = 860_001
NUM_CATEGORIES = 80
CROWD_FRACTION = 0.01
POLYGON_NUMBERS = 42        # 21 points: ~520 bytes per annotation, as in the real file (448 MB)
_POOL = 997                 # distinct segmentation strings (content does not change parse cost)


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def write_synthetic(path, scale, seed=0):
    """Write the synthetic instances JSON; returns (images, annotations, bytes)."""
    rng = np.random.default_rng(seed)
    num_images, num_annotations = int(NUM_IMAGES * scale), int(NUM_ANNOTATIONS * scale)
    category_ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    assert len(category_ids) == NUM_CATEGORIES
    polygons = [json.dumps([np.round(rng.uniform(0, 600, POLYGON_NUMBERS), 2).tolist()])
                for _ in range(_POOL)]
    rles = [json.dumps({"counts": rng.integers(0, 500, 60).tolist(), "size": [480, 640]})
            for _ in range(_POOL)]
    widths = rng.integers(200, 641, num_images)
    heights = rng.integers(200, 641, num_images)
    image_ids = rng.choice(600_000, num_images, replace=False) + 1
    with open(path, "w") as f:
        f.write('{"info": {"description": "synthetic"}, "licenses": [], "categories": [')
        f.write(", ".join('{"supercategory": "s", "id": %d, "name": "c%d"}' % (c, c) for c in category_ids))
        f.write('], "images": [')
        f.write(", ".join('{"license": 1, "file_name": "%012d.jpg", "coco_url": "http://images.cocodataset.org/'
                          'train2017/%012d.jpg", "height": %d, "width": %d, "date_captured": '
                          '"2013-11-14 17:02:52", "flickr_url": "http://farm4.staticflickr.com/x.jpg", '
                          '"id": %d}' % (i, i, h, w, i)
                          for i, w, h in zip(image_ids.tolist(), widths.tolist(), heights.tolist())))
        f.write('], "annotations": [')
        owner = rng.integers(0, num_images, num_annotations)
        chunk = 50_000
        for start in range(0, num_annotations, chunk):
            stop = min(start + chunk, num_annotations)
            k = np.arange(start, stop)
            o = owner[start:stop]
            x = rng.uniform(0, 0.8, stop - start) * widths[o]
            y = rng.uniform(0, 0.8, stop - start) * heights[o]
            w = rng.uniform(0.02, 0.2, stop - start) * widths[o]
            h = rng.uniform(0.02, 0.2, stop - start) * heights[o]
            crowd = rng.uniform(size=stop - start) < CROWD_FRACTION
            cats = rng.choice(category_ids, stop - start)
            parts = []
            for j in range(stop - start):
                segmentation = rles[k[j] % _POOL] if crowd[j] else polygons[k[j] % _POOL]
                parts.append('{"segmentation": %s, "area": %.4f, "iscrowd": %d, "image_id": %d, '
                             '"bbox": [%.2f, %.2f, %.2f, %.2f], "category_id": %d, "id": %d}' % (
                                 segmentation, w[j] * h[j] * 0.6, crowd[j], image_ids[o[j]], x[j], y[j],
                                 w[j], h[j], cats[j], k[j] + 1))
            f.write((", " if start else "") + ", ".join(parts))
        f.write("]}")
    return num_images, num_annotations, os.path.getsize(path)


def _child(kind, path):
    """One measurement in this process; prints one JSON line."""
    if kind == "baseline":
        before = _rss_mb()
        start = time.perf_counter()
        with open(path) as f:
            data = json.load(f)
        seconds = time.perf_counter() - start
        counts = (len(data["images"]), len(data["annotations"]))
    else:
        from dataset import coco, coco_convert
        before = _rss_mb()
        start = time.perf_counter()
        instances = coco.load_instances(path)
        parse_s = time.perf_counter() - start
        category_map = coco.CategoryMap.from_categories(instances.categories)
        result = coco_convert.SplitResult()
        plan = coco_convert.plan_split(instances, category_map, path, result)
        seconds = time.perf_counter() - start
        counts = (plan.num_images, len(plan.labels))
        assert not result.skipped, result.skipped[:3]
    out = {"seconds": seconds, "peak_rss_mb": _rss_mb(), "rss_before_mb": before,
           "images": counts[0], "annotations": counts[1]}
    if kind == "converter":
        out.update(parse_seconds=parse_s, repaired=len(result.repaired))
    print(json.dumps(out))


def _measure(kind, path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "benchmarks.convert_coco", "--child", kind, "--json_path", path],
                          cwd=root, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.child:
        _child(FLAGS.child, FLAGS.json_path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = FLAGS.json_path or os.path.join(tmp, "instances_synthetic.json")
        if not FLAGS.json_path:
            start = time.perf_counter()
            images, annotations, size = write_synthetic(path, FLAGS.scale)
            print("wrote %s: %d images, %d annotations, %.0f MB in %.0f s" % (
                path, images, annotations, size / 1e6, time.perf_counter() - start), flush=True)
        size = os.path.getsize(path)
        baseline = _measure("baseline", path)
        print("json.load: %.1f s, peak %.0f MB" % (baseline["seconds"], baseline["peak_rss_mb"]), flush=True)
        converter = _measure("converter", path)
        print("converter JSON pass: %.1f s (parse %.1f s), peak %.0f MB (%.0f MB before parsing)" % (
            converter["seconds"], converter["parse_seconds"], converter["peak_rss_mb"],
            converter["rss_before_mb"]), flush=True)
    assert converter["annotations"] == baseline["annotations"], (converter, baseline)
    print(json.dumps({
        "benchmark": "convert_coco", "json_mb": round(size / 1e6, 1), "images": converter["images"],
        "annotations": converter["annotations"],
        "converter_seconds": round(converter["seconds"], 2),
        "converter_annotations_per_s": round(converter["annotations"] / converter["seconds"]),
        "converter_mb_per_s": round(size / 1e6 / converter["seconds"], 1),
        "converter_peak_rss_mb": round(converter["peak_rss_mb"]),
        "converter_rss_before_parse_mb": round(converter["rss_before_mb"]),
        "json_load_seconds": round(baseline["seconds"], 2),
        "json_load_peak_rss_mb": round(baseline["peak_rss_mb"]),
        "time_ratio_vs_json_load": round(converter["seconds"] / baseline["seconds"], 3),
        "memory_increase_ratio_vs_json_load": round(
            (converter["peak_rss_mb"] - converter["rss_before_mb"])
            / max(baseline["peak_rss_mb"] - baseline["rss_before_mb"], 1e-9), 3),
    }))


if __name__ == "__main__":
    app.run(main)
