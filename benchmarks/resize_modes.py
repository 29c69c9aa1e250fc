"""Train-time resize cost per interpolation mode, against the bilinear resize the pipeline uses.

Caffe's ssd_pascal.py draws one of five OpenCV modes per training image (LINEAR, AREA, NEAREST, CUBIC,
LANCZOS4). This times, on one core, the closest tf.image.resize methods on the two cases the
pipeline meets: a patch inside the image (500 x 375 -> 300 x 300) and a zoomed-out window (2x per side
with the mean fill around the image; the pipeline's bilinear path reads only the image part,
preprocessing/geometric.resize_window, while the other modes need the window built first). The
"caffe_mix" figure is the mean over the five modes, i.e. the expected cost of drawing one per image.
Ratios are against bilinear in the same run. The last line is one JSON object.

    python3 -m benchmarks.resize_modes --repeats 30
"""

import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from preprocessing import geometric  # noqa: E402

OUTPUT = (300, 300)
# Caffe's five modes and the nearest tf.image.resize method (TF has no Lanczos with a = 4).
MODES = {"LINEAR": "bilinear", "AREA": "area", "NEAREST": "nearest", "CUBIC": "bicubic", "LANCZOS4": "lanczos5"}

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 30, "Calls per timing.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds after a warm-up round (the median is reported).")


def main(argv):
    del argv
    args = FLAGS
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    image = tf.random.uniform([375, 500, 3], 0, 255)
    fill = geometric.IMAGENET_MEAN_RGB
    window = tf.constant([0, 0, 750, 1000])           # zoom-out 2x, image at the top-left
    fns = {"fused_bilinear_zoom": tf.function(
        lambda img: geometric.resize_window(img, tf.constant([0, 0]), window, OUTPUT, fill))}
    for caffe, method in MODES.items():
        fns[f"{caffe}_patch"] = tf.function(lambda img, m=method: tf.image.resize(img, OUTPUT, method=m))
        fns[f"{caffe}_zoom"] = tf.function(lambda img, m=method: tf.image.resize(
            geometric.pad_with_fill(img, tf.constant([[0, 375], [0, 500], [0, 0]]), fill), OUTPUT, method=m))
    times = {name: [] for name in fns}
    for round_index in range(args.rounds + 1):
        for name, fn in fns.items():
            fn(image).numpy()
            start = time.perf_counter()
            for _ in range(args.repeats):
                fn(image).numpy()
            if round_index:
                times[name].append((time.perf_counter() - start) / args.repeats * 1000)
    ms = {name: statistics.median(values) for name, values in times.items()}
    result = {f"{name}_ms": round(value, 2) for name, value in ms.items()}
    for case, baseline in (("patch", ms["LINEAR_patch"]), ("zoom", ms["fused_bilinear_zoom"])):
        for caffe in MODES:
            result[f"ratio_{caffe}_{case}"] = round(ms[f"{caffe}_{case}"] / baseline, 2)
        result[f"ratio_caffe_mix_{case}"] = round(statistics.mean(ms[f"{c}_{case}"] for c in MODES) / baseline, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
