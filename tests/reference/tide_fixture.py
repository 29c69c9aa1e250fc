"""Runs the `tidecv` package (dbolya/tide) on synthetic detections and stores its numbers as a fixture.

Never run in CI and never a dependency: tests/test_tide.py compares metrics/tide.py with the file this
writes (tests/fixtures/tide.npz). tidecv pulls opencv-python and seaborn, so it lives in a separate
venv with pycocotools, numpy, opencv-python-headless, seaborn, pandas and appdirs
(`pip install --no-deps tidecv`). Regenerate from the repository root with that venv's python:

    python3 -m tests.reference.tide_fixture

Each set is a list of images with ground truth (some boxes ignore regions, as the evaluator passes VOC
difficult and COCO crowd boxes) and detections built to produce every error kind: close copies of a
ground truth (true positives, and duplicates when there are two), shifted copies (localization), copies
with another class (classification), shifted copies with another class (both), random boxes
(background), ground truths without any detection (missed), detections inside ignore regions, images
without ground truth, without detections, and one with more than 100 detections. Scores are rounded to
two decimals in the second set so ties occur. The fixture stores the inputs (COCO [x, y, w, h] pixels)
and tidecv's AP, main and special dAPs (in its percentage points) and error counts.
"""

import os

import numpy as np
from absl import app, flags

flags.DEFINE_string("output", os.path.join("tests", "fixtures", "tide.npz"), "Fixture file to write.")
FLAGS = flags.FLAGS

WIDTH, HEIGHT = 320, 240
NUM_CLASSES = 6
MAIN = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
SPECIAL = ("FalsePos", "FalseNeg")


def _box(rng):
    w, h = rng.uniform(8, 140), rng.uniform(8, 110)
    return [rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), w, h]


def _shifted(rng, box, amount):
    x, y, w, h = box
    return [x + amount * w * rng.choice([-1, 1]), y + rng.uniform(-0.1, 0.1) * h,
            w * rng.uniform(0.9, 1.1), h * rng.uniform(0.9, 1.1)]


def make_set(seed, num_images, score_decimals=None):
    """(gt rows [image, class, ignored, x, y, w, h], det rows [image, class, score, x, y, w, h])."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for image in range(num_images):
        kind = image % 10
        num_gt = 0 if kind == 3 else int(rng.integers(1, 6))
        image_gts = []
        for _ in range(num_gt):
            row = [image, int(rng.integers(1, NUM_CLASSES + 1)), float(rng.random() < 0.15)] + _box(rng)
            image_gts.append(row)
        gts.extend(image_gts)
        if kind == 7:
            continue  # no detections: every ground truth missed
        for g in image_gts:
            cls, box = g[1], g[3:]
            other = int(rng.integers(1, NUM_CLASSES)) % NUM_CLASSES + 1
            other = other if other != cls else cls % NUM_CLASSES + 1
            for _ in range(int(rng.integers(0, 4))):
                u = rng.random()
                if u < 0.35:
                    det = (cls, _shifted(rng, box, rng.uniform(0, 0.1)), rng.uniform(0.3, 1.0))
                elif u < 0.55:
                    det = (cls, _shifted(rng, box, rng.uniform(0.35, 0.8)), rng.uniform(0.05, 0.9))
                elif u < 0.75:
                    det = (other, _shifted(rng, box, rng.uniform(0, 0.1)), rng.uniform(0.05, 0.9))
                else:
                    det = (other, _shifted(rng, box, rng.uniform(0.35, 0.8)), rng.uniform(0.05, 0.6))
                dets.append([image, det[0], det[2]] + det[1])
        num_background = 120 if kind == 5 and image < 10 else int(rng.integers(0, 5))
        for _ in range(num_background):
            dets.append([image, int(rng.integers(1, NUM_CLASSES + 1)), rng.uniform(0.01, 0.5)] + _box(rng))
    gts, dets = np.array(gts, np.float64).reshape(-1, 7), np.array(dets, np.float64).reshape(-1, 7)
    if score_decimals is not None:
        dets[:, 2] = np.round(dets[:, 2], score_decimals)
    return gts, dets


def run_tidecv(gts, dets, num_images):
    """tidecv's numbers: every image registered (so images without ground truth count), ground truth
    and ignore regions (with their class) in row order, detections in row order."""
    from tidecv import TIDE, Data

    gt_data, det_data = Data("gt"), Data("dets")
    for image in range(num_images):
        gt_data.add_image(image, str(image))
    for image, cls, ignored, *box in gts.tolist():
        if ignored:
            gt_data.add_ignore_region(int(image), int(cls), box)
        else:
            gt_data.add_ground_truth(int(image), int(cls), box)
    for image, cls, score, *box in dets.tolist():
        det_data.add_detection(int(image), int(cls), score, box)
    tide = TIDE()
    run = tide.evaluate(gt_data, det_data, mode=TIDE.BOX)
    errors = tide.get_all_errors()
    main, special = errors["main"]["dets"], errors["special"]["dets"]
    counts = {e.short_name: n for e, n in run.count_errors().items()}
    return (run.ap, np.array([main[k] for k in MAIN]), np.array([special[k] for k in SPECIAL]),
            np.array([counts[k] for k in MAIN]))


def main(argv):
    del argv
    out = {}
    for name, seed, images, decimals in (("plain", 0, 60, None), ("ties", 1, 40, 2)):
        gts, dets = make_set(seed, images, decimals)
        ap, main_daps, special_daps, counts = run_tidecv(gts, dets, images)
        out.update({f"{name}_gts": gts, f"{name}_dets": dets, f"{name}_num_images": images,
                    f"{name}_ap": ap, f"{name}_main": main_daps, f"{name}_special": special_daps,
                    f"{name}_counts": counts})
        print(name, f"{len(gts)} gts, {len(dets)} dets, AP {ap:.4f}", dict(zip(MAIN, main_daps.round(3))),
              dict(zip(SPECIAL, special_daps.round(3))), dict(zip(MAIN, counts)))
    np.savez_compressed(FLAGS.output, **out)
    print("wrote", FLAGS.output)


if __name__ == "__main__":
    app.run(main)
