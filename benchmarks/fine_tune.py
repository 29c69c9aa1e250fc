"""Fine-tuning measured, not assumed: val mAP at equal steps, from a detector of other classes or from scratch.

    python3 -m benchmarks.fine_tune [--first_classes circle,cross,ellipse,hexagon --first_steps 1000
                                     --steps 1000 --eval_every_steps 250 --width_multiplier 0.25
                                     --batch_size 16 --seed 0 --work_dir DIR]

On the embedded sample (converted into --work_dir, all eight classes, and the --first_classes alone:
the VOC converter with their label map and --skip_unknown, so the other classes' objects are dropped),
three runs of train_ssd.py with the same flags (tiny SSD300, Adam, the same seed and schedule):

  first:     --first_steps on the --first_classes;
  fine_tune: --steps on all eight, --fine_tune_checkpoint the first run (its classes keep their
             columns, the other four start as initialised);
  scratch:   --steps on all eight from the same initialisation, without the first run.

Both eight-class runs are evaluated on the 80 val images every --eval_every_steps (VOC07 mAP, as
train_ssd.py logs it), and at step 0 for the fine-tuned one (the first run's weights, before any step
on eight classes). The last stdout line is one JSON object: both curves, the first run's own mAP, and
the steps each eight-class run needed to reach the scratch run's final mAP (None: never).
The fine-tuned run has also had the first run's steps: the comparison is at equal steps on the task.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_list("first_classes", ["circle", "cross", "ellipse", "hexagon"], "Classes of the first run.")
flags.DEFINE_integer("first_steps", 1000, "Steps of the first run.")
flags.DEFINE_integer("steps", 1000, "Steps of each eight-class run.")
flags.DEFINE_integer("eval_every_steps", 250, "Evaluation cadence of the eight-class runs.")
flags.DEFINE_float("width_multiplier", 0.25, "Width of the tiny SSD300.")
flags.DEFINE_integer("batch_size", 16, "Images per step.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam's rate (the sample recipe's).")
flags.DEFINE_integer("warmup_steps", 100, "Warm-up of every run.")
flags.DEFINE_integer("seed", 0, "Seed of every run.")
flags.DEFINE_string("work_dir", "", "Where records and model_dirs go; default: a new temporary folder.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_LINE = re.compile(r"step (\d+) eval: voc07 mAP ([0-9.]+)")


def _convert(work_dir):
    from dataset import convert, label_map, make_sample
    splits = {"train": [convert.Split.parse("sample:train")], "val": [convert.Split.parse("sample:val")]}
    shards = {"train": 4, "val": 2}
    all_dir, first_dir = os.path.join(work_dir, "records_all"), os.path.join(work_dir, "records_first")
    unknown = sorted(set(FLAGS.first_classes) - set(make_sample.CLASS_NAMES))
    if unknown:
        raise ValueError(f"--first_classes: {', '.join(unknown)} not in the sample's classes")
    convert.convert(os.path.join(REPO, "dataset"), all_dir, splits, shards, num_threads=2)
    first_map = os.path.join(work_dir, "first_label_map.pbtxt")
    label_map.write_label_map(first_map, FLAGS.first_classes)
    convert.convert(os.path.join(REPO, "dataset"), first_dir, splits, shards, num_threads=2,
                    label_map_path=first_map, skip_unknown=True)
    return all_dir, first_dir


def _train(data_dir, model_dir, steps, eval_every, *extra):
    command = [sys.executable, os.path.join(REPO, "train_ssd.py"), "--data_dir", data_dir, "--model_dir", model_dir,
               "--width_multiplier", str(FLAGS.width_multiplier), "--batch_size", str(FLAGS.batch_size),
               "--optimizer", "adam", "--learning_rate", str(FLAGS.learning_rate),
               "--warmup_steps", str(FLAGS.warmup_steps), "--decay_boundaries", str(10 * steps),
               "--lr_decay_factors", "1,0.1", "--max_steps", str(steps), "--seed", str(FLAGS.seed),
               "--eval_every_steps", str(eval_every), "--save_checkpoints_steps", str(steps),
               "--image_summary_steps", "0", "--log_every_n_steps", str(max(1, eval_every // 2)), *extra]
    start = time.time()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if result.returncode != 0:
        raise RuntimeError(f"{model_dir}: train_ssd.py failed:\n{result.stderr[-3000:]}")
    curve = {int(m.group(1)): float(m.group(2)) for m in EVAL_LINE.finditer(result.stderr)}
    logging.info("%s: %d steps in %.0f s, VOC07 mAP %s", os.path.basename(model_dir), steps,
                 time.time() - start, curve)
    return curve


def _evaluate_step_zero(data_dir, model_dir):
    """VOC07 mAP of model_dir's ckpt-0 (the imported weights) on data_dir's val split."""
    result = subprocess.run([sys.executable, os.path.join(REPO, "eval_ssd.py"), "--model_dir", model_dir,
                             "--data_dir", data_dir, "--metrics", "voc07"], cwd=REPO, capture_output=True,
                            text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    match = re.search(r"voc07 mAP ([0-9.]+)", result.stderr)
    return float(match.group(1)) if match else None


def _steps_to_reach(curve, target):
    reached = [step for step, value in sorted(curve.items()) if value >= target]
    return reached[0] if reached else None


def main(argv):
    del argv
    work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="fine_tune_")
    all_dir, first_dir = _convert(work_dir)
    first = _train(first_dir, os.path.join(work_dir, "first"), FLAGS.first_steps, FLAGS.first_steps)
    # --max_steps 0: import the first run into a model_dir (ckpt-0) to evaluate its step 0 on 8 classes.
    step_zero_dir = os.path.join(work_dir, "fine_tune_step0")
    _train(all_dir, step_zero_dir, 0, 0, "--fine_tune_checkpoint", os.path.join(work_dir, "first"))
    fine_tune = {0: _evaluate_step_zero(all_dir, step_zero_dir)}
    fine_tune.update(_train(all_dir, os.path.join(work_dir, "fine_tune"), FLAGS.steps, FLAGS.eval_every_steps,
                            "--fine_tune_checkpoint", os.path.join(work_dir, "first")))
    scratch = _train(all_dir, os.path.join(work_dir, "scratch"), FLAGS.steps, FLAGS.eval_every_steps)
    target = scratch[max(scratch)]
    summary = {"first_classes": FLAGS.first_classes, "first_steps": FLAGS.first_steps,
               "first_voc07_map": first.get(FLAGS.first_steps), "steps": FLAGS.steps,
               "width_multiplier": FLAGS.width_multiplier, "batch_size": FLAGS.batch_size, "seed": FLAGS.seed,
               "fine_tune_voc07_map": fine_tune, "scratch_voc07_map": scratch, "scratch_final": target,
               "fine_tune_steps_to_scratch_final": _steps_to_reach(fine_tune, target),
               "scratch_steps_to_scratch_final": _steps_to_reach(scratch, target)}
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
