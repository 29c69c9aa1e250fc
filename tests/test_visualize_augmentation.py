"""visualize_augmentation.py (engine.drawing.write_augmented_samples) writes the asked number of PNGs with boxes, and TensorBoard images."""

import glob
import os

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from engine import drawing


def test_writes_n_pngs_and_an_events_file_with_n_images(sample_records, tmp_path):
    out = str(tmp_path / "augmented")
    paths = drawing.write_augmented_samples(sample_records, "train", 3, out, seed=1)
    assert sorted(paths) == sorted(glob.glob(os.path.join(out, "*.png"))) and len(paths) == 3
    for path in paths:
        pixels = np.asarray(Image.open(path))
        assert pixels.shape == (300, 300, 3)
    # The boxes are drawn in their classes' colours: pixels of palette colours exist in some sample.
    palette = np.array(drawing.PALETTE_RGB)
    assert any((np.asarray(Image.open(p))[:, :, None] == palette).all(axis=-1).any() for p in paths)
    events = glob.glob(os.path.join(out, drawing.TENSORBOARD_SUBDIR, "events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = event_accumulator.EventAccumulator(events[0], size_guidance={"tensors": 0})
    accumulator.Reload()
    steps = [event.step for event in accumulator.Tensors(drawing.SUMMARY_TAG)]
    assert steps == [0, 1, 2]
