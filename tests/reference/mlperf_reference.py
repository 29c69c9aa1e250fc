"""Runs the MLPerf SSD-ResNet34 reference's own augmentation and Encoder, and stores their statistics
and outputs as a test fixture (tests/fixtures/mlperf_reference.npz) for tests/test_mlperf_augment.py.

Never run in CI and never a dependency. Regenerate with the CPU torch venv (tests/reference: torch
2.13.0+cpu, torchvision 0.28.0 --no-deps, Pillow, mlperf-logging):

    python -m tests.reference.mlperf_reference --mlcommons_training MLCOMMONS_TRAINING_SNAPSHOT

from the repository root; the flag names a snapshot of github.com/mlcommons/training (a bare git
directory or a checkout with history): `single_stage_detector/ssd/utils.py` is read at commit
d764d662 (the benchmark's last v1.0/v1.1 state) with `git archive`, and imported unchanged. What runs:

* `SSDCropping` (num_cropping_iterations=1): per scene (an image size and its boxes, stored) and per
  option, the real `__call__` with `sample_options` narrowed to that one option, REFERENCE_CROPS
  accepted crops; `random.choice` is counted (one call per try) so the acceptance rate per try is
  crops / tries; kept-box count, kept-box area, crop width and height (pixels over the image's) are
  stored as means and standard deviations. With all seven options: P(whole image) and the same means.
* torchvision's `ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05)` as utils.py
  builds it, on PIL images: each functional operation (adjust_brightness/contrast/saturation/hue)
  exactly, at listed factors, on a fixed image; and the whole transform's output statistics over
  REFERENCE_JITTERS draws per image (per-channel mean, and mean absolute change, per draw).
* `Encoder(DefaultBoxes(...))` with train.py's dboxes300_coco numbers: encode() of random scenes
  (crowded, so boxes share best priors): labels per prior and the matched boxes.

torchvision's C ops do not load with the CPU torch (shared/REFERENCES.md), so `torchvision::nms` is
defined in plain torch before the import; utils.py's `mlperf_logger` (which needs torch.distributed
state) is replaced by a module whose ssd_print does nothing.
"""

import io
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import types

import numpy as np
from absl import app, flags

flags.DEFINE_string("mlcommons_training", None, "Snapshot of mlcommons/training (git dir or checkout).")
flags.DEFINE_string("output", os.path.join("tests", "fixtures", "mlperf_reference.npz"), "Fixture to write.")
FLAGS = flags.FLAGS

COMMIT = "d764d662"
REFERENCE_DIR = "single_stage_detector/ssd"
SEED = 28
REFERENCE_CROPS = 2000        # accepted crops per scene and option, at most
MAX_TRIES = 30_000           # tries per scene and option (an option may never be accepted: 0.9 on small boxes)
REFERENCE_MIX = 6000          # SSDCropping calls per scene with all seven options
REFERENCE_JITTERS = 3000      # ColorJitter draws per image
ENCODER_IMAGES = 8
# train.py dboxes300_coco.
DBOXES_ARGS = (300, [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300], [21, 45, 99, 153, 207, 261, 315],
               [[2], [2, 3], [2, 3], [2, 3], [2], [2]])
BRIGHTNESS_FACTORS = (0.875, 0.9, 0.97, 1.0, 1.06, 1.125)
CONTRAST_FACTORS = (0.5, 0.62, 0.9, 1.0, 1.23, 1.5)
SATURATION_FACTORS = CONTRAST_FACTORS
HUE_FACTORS = (-0.05, -0.031, -0.0035, 0.0, 0.002, 0.0171, 0.05)


def extract(repo, dest):
    """single_stage_detector/ssd at COMMIT from a snapshot into dest; returns the folder."""
    git_dir = next((d for d in (repo, os.path.join(repo, ".git"))
                    if os.path.isfile(os.path.join(d, "HEAD")) and os.path.isdir(os.path.join(d, "objects"))), None)
    if git_dir is None:
        raise SystemExit(f"--mlcommons_training {repo}: not a git directory or checkout")
    try:
        archive = subprocess.run(["git", "--git-dir", git_dir, "archive", COMMIT, REFERENCE_DIR],
                                 check=True, capture_output=True).stdout
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"{repo}: cannot read {REFERENCE_DIR} at {COMMIT}: "
                         f"{error.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return os.path.join(dest, REFERENCE_DIR)


def import_torchvision():
    """torchvision with a plain-torch nms standing in for its C ops (shared/REFERENCES.md recipe)."""
    import torch

    def nms(boxes, scores, iou_threshold):
        order = scores.argsort(descending=True)
        keep = []
        while order.numel():
            i = order[0]
            keep.append(int(i))
            rest = order[1:]
            lt = torch.max(boxes[i, :2], boxes[rest, :2])
            rb = torch.min(boxes[i, 2:], boxes[rest, 2:])
            inter = (rb - lt).clamp(min=0).prod(1)
            area = (boxes[:, 2:] - boxes[:, :2]).prod(1)
            order = rest[inter / (area[i] + area[rest] - inter) <= iou_threshold]
        return torch.tensor(keep, dtype=torch.int64)

    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("nms", nms, "CPU")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("qnms", nms, "CPU")
    import torchvision.extension   # after the definitions: its import registers fakes for them
    torchvision.extension._has_ops = lambda: True
    torchvision.extension._assert_has_ops = lambda: None
    import torchvision.ops.boxes
    torchvision.ops.boxes._assert_has_ops = lambda: None
    import torchvision.transforms
    import_torchvision.library = library   # the definitions live as long as the Library object
    return torchvision


def load_utils(folder):
    """The reference's utils.py, imported unchanged (module docstring)."""
    import importlib.util
    logger = types.ModuleType("mlperf_logger")
    logger.ssd_print = lambda *args, **kwargs: None
    sys.modules["mlperf_logger"] = logger
    spec = importlib.util.spec_from_file_location("mlperf_ssd_utils", os.path.join(folder, "utils.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- scenes -------------------------------------------------------------------------------------
def crop_scenes(rng):
    """(image sizes int [S, 2] (H, W), boxes yxyx float32 [S, 8, 4] padded, counts int [S])."""
    scenes = [
        ((480, 640), [[0.1, 0.2, 0.6, 0.5]]),                                      # one mid-sized box
        ((427, 640), [[0.05, 0.05, 0.95, 0.95]]),                                  # one large box
        ((640, 480), [[0.4, 0.45, 0.48, 0.52], [0.7, 0.1, 0.76, 0.18]]),           # two small boxes
    ]
    for count in (3, 6):   # a cluster of boxes: every minimum IoU is reachable for some patches
        centres = rng.uniform(0.4, 0.6, (count, 2))
        sizes = rng.uniform(0.25, 0.55, (count, 2))
        boxes = np.clip(np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1), 0.0, 1.0)
        scenes.append(((int(rng.integers(300, 641)), int(rng.integers(300, 641))), boxes.tolist()))
    sizes = np.array([s for s, _ in scenes], np.int64)
    counts = np.array([len(b) for _, b in scenes], np.int64)
    padded = np.zeros((len(scenes), 8, 4), np.float32)
    for i, (_, boxes) in enumerate(scenes):
        padded[i, :len(boxes)] = boxes
    return sizes, padded, counts


def _crop_outcome(out_size, size, out_boxes):
    """(kept boxes, mean kept area, crop height fraction, crop width fraction) of one SSDCropping call."""
    area = ((out_boxes[:, 2] - out_boxes[:, 0]) * (out_boxes[:, 3] - out_boxes[:, 1])).mean()
    return len(out_boxes), float(area), out_size[0] / size[0], out_size[1] / size[1]


def crop_section(utils, fixture, rng):
    import torch
    from PIL import Image
    sizes, boxes, counts = crop_scenes(rng)
    fixture.update(crop_sizes=sizes, crop_boxes=boxes, crop_counts=counts)
    cropping = utils.SSDCropping(num_cropping_iterations=1)
    all_options = cropping.sample_options
    options = [o for o in all_options if o is not None]
    fixture["crop_min_ious"] = np.array([-np.inf if o[0] is None else o[0] for o in options], np.float32)
    tries = {"n": 0}
    real_choice = random.choice

    class OutOfTries(Exception):
        pass

    def counting_choice(sequence):
        if tries["n"] == MAX_TRIES:
            raise OutOfTries
        tries["n"] += 1
        return real_choice(sequence)

    random.choice = counting_choice
    stats = np.zeros((len(sizes), len(options), 9), np.float64)
    mix = np.zeros((len(sizes), 7), np.float64)
    try:
        for s, (size, n) in enumerate(zip(sizes, counts)):
            h, w = (int(v) for v in size)
            image = Image.new("RGB", (w, h))
            ltrb = torch.tensor(boxes[s, :n][:, [1, 0, 3, 2]])
            labels = torch.arange(1, n + 1)
            for k, option in enumerate(options):
                cropping.sample_options = (option,)
                tries["n"] = 0
                outcomes = []
                try:
                    for _ in range(REFERENCE_CROPS):
                        _, (out_h, out_w), out, _ = cropping(image, (h, w), ltrb.clone(), labels)
                        outcomes.append(_crop_outcome((out_h, out_w), (h, w), out.numpy()))
                except OutOfTries:
                    pass
                outcomes = np.array(outcomes).reshape(-1, 4)
                if len(outcomes):
                    stats[s, k] = [len(outcomes) / tries["n"], tries["n"], *outcomes.mean(0),
                                   *outcomes.std(0)[:2], outcomes[:, 3].std()]
                else:
                    stats[s, k, :2] = [0.0, tries["n"]]
            cropping.sample_options = all_options
            tries["n"] = -10 ** 12   # no budget: the whole image ends every call
            outcomes, whole = [], 0
            for _ in range(REFERENCE_MIX):
                out_image, (out_h, out_w), out, _ = cropping(image, (h, w), ltrb.clone(), labels)
                whole += out_image is image
                outcomes.append(_crop_outcome((out_h, out_w), (h, w), out.numpy()))
            outcomes = np.array(outcomes)
            mix[s] = [whole / REFERENCE_MIX, *outcomes.mean(0), outcomes[:, 0].std(), outcomes[:, 2].std()]
            print(f"crop scene {s}: acceptance per option {np.round(stats[s, :, 0], 4).tolist()}, "
                  f"whole image {mix[s, 0]:.3f}")
    finally:
        random.choice = real_choice
    # stats[s, k]: acceptance, tries, mean kept, mean kept area, mean crop h, mean crop w,
    # std kept, std kept area, std crop w (crop h's std is the same law as w's).
    fixture["crop_stats"] = stats
    fixture["crop_reference_crops"] = np.array(REFERENCE_CROPS)
    # mix[s]: P(whole), mean kept, mean kept area, mean crop h, mean crop w, std kept, std crop h.
    fixture["crop_mix"] = mix
    fixture["crop_reference_mix"] = np.array(REFERENCE_MIX)


# --- ColorJitter --------------------------------------------------------------------------------
def jitter_images(rng):
    """Three 24 x 32 RGB uint8 images: noise, a smooth colour ramp, a few flat colours with greys."""
    noise = rng.integers(0, 256, (24, 32, 3))
    y, x = np.mgrid[0:24, 0:32]
    ramp = np.stack([x * 8, y * 10, 255 - x * 4 - y * 3], axis=-1)
    flat = np.zeros((24, 32, 3))
    colours = [(200, 30, 30), (20, 180, 60), (40, 40, 220), (128, 128, 128), (250, 250, 250), (5, 5, 5)]
    for i, colour in enumerate(colours):
        flat[:, i * 32 // 6:(i + 1) * 32 // 6] = colour
    return np.stack([noise, ramp, flat]).clip(0, 255).astype(np.uint8)


def jitter_section(torchvision, fixture, rng):
    import torch
    from PIL import Image
    functional = torchvision.transforms.functional
    images = jitter_images(rng)
    fixture["jitter_images"] = images
    pil = [Image.fromarray(image) for image in images]
    for name, factors, fn in (("brightness", BRIGHTNESS_FACTORS, functional.adjust_brightness),
                              ("contrast", CONTRAST_FACTORS, functional.adjust_contrast),
                              ("saturation", SATURATION_FACTORS, functional.adjust_saturation),
                              ("hue", HUE_FACTORS, functional.adjust_hue)):
        fixture[f"jitter_{name}_factors"] = np.array(factors, np.float64)
        fixture[f"jitter_{name}"] = np.stack([np.stack([np.asarray(fn(image, f)) for f in factors])
                                              for image in pil])                     # [3, F, H, W, 3]
    # Exactly as utils.py SSDTransformer builds it.
    jitter = torchvision.transforms.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05)
    torch.manual_seed(SEED)
    means, changes = [], []
    for image, source in zip(pil, images.astype(np.float64)):
        out = np.stack([np.asarray(jitter(image), np.float64) for _ in range(REFERENCE_JITTERS)])
        means.append(out.mean(axis=(1, 2)))                                          # [N, 3]
        changes.append(np.abs(out - source).mean(axis=(1, 2, 3)))                    # [N]
    means, changes = np.stack(means), np.stack(changes)
    # Per image: mean and std over draws of the per-channel means [3, 2, 3]; of the mean change [3, 2].
    fixture["jitter_channel_mean"] = np.stack([means.mean(1), means.std(1)], axis=1)
    fixture["jitter_change"] = np.stack([changes.mean(1), changes.std(1)], axis=1)
    fixture["jitter_draws"] = np.array(REFERENCE_JITTERS)
    print(f"ColorJitter: channel means {np.round(means.mean(1), 2).tolist()}")


# --- Encoder ------------------------------------------------------------------------------------
def encoder_section(utils, fixture, rng):
    import torch
    dboxes = utils.DefaultBoxes(*DBOXES_ARGS)
    encoder = utils.Encoder(dboxes)
    fixture["encoder_dboxes_ltrb"] = dboxes(order="ltrb").numpy()
    boxes = np.zeros((ENCODER_IMAGES, 16, 4), np.float32)
    labels = np.zeros((ENCODER_IMAGES, 16), np.int64)
    prior_labels, prior_boxes = [], []
    for i in range(ENCODER_IMAGES):
        n = int(rng.integers(1, 17))
        centres = rng.uniform(0.1, 0.9, (n, 2))
        sizes = rng.uniform(0.03, 0.6, (n, 2))
        if n > 2:   # near-duplicates: boxes that share a best prior (the later one takes it)
            centres[1], sizes[1] = centres[0] + 0.004, sizes[0] * 1.02
            centres[n - 1], sizes[n - 1] = centres[n - 2] - 0.003, sizes[n - 2] * 0.99
        yxyx = np.clip(np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1), 0.0, 1.0)
        boxes[i, :n] = yxyx
        labels[i, :n] = rng.integers(1, 81, n)
        out_boxes, out_labels = encoder.encode(torch.tensor(yxyx[:, [1, 0, 3, 2]], dtype=torch.float32),
                                               torch.tensor(labels[i, :n]))
        prior_labels.append(out_labels.numpy())
        prior_boxes.append(out_boxes.numpy())                                        # cx, cy, w, h
    prior_labels = np.stack(prior_labels)
    # Matched boxes at the positive priors only, in (image, prior) order.
    fixture.update(encoder_boxes=boxes, encoder_labels=labels, encoder_prior_labels=prior_labels.astype(np.uint8),
                   encoder_prior_boxes_xywh=np.stack(prior_boxes)[prior_labels > 0])
    print(f"Encoder: {int((np.stack(prior_labels) > 0).sum())} positives over {ENCODER_IMAGES} images")


def main(argv):
    del argv
    if not FLAGS.mlcommons_training:
        raise SystemExit("--mlcommons_training: give a snapshot of github.com/mlcommons/training")
    rng = np.random.default_rng(SEED)
    random.seed(SEED)
    fixture = {}
    with tempfile.TemporaryDirectory() as work:
        torchvision = import_torchvision()
        utils = load_utils(extract(FLAGS.mlcommons_training, work))
        crop_section(utils, fixture, rng)
        jitter_section(torchvision, fixture, rng)
        encoder_section(utils, fixture, rng)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **fixture)
    fd, temp_path = tempfile.mkstemp(dir=os.path.dirname(FLAGS.output), suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(buffer.getvalue())
    os.replace(temp_path, FLAGS.output)
    print(f"wrote {FLAGS.output} ({len(buffer.getvalue())} bytes, {len(fixture)} arrays)")


if __name__ == "__main__":
    app.run(main)
