"""What a model_dir holds besides checkpoints: the model config and the label map it was trained with.

train_ssd.py writes both when a run starts, so eval_ssd.py, the detect and export scripts rebuild the
exact model from --model_dir alone, and a resumed run cannot silently change the model under a checkpoint.
"""

import os

import tensorflow as tf

from dataset import label_map
from dataset.atomic import write_atomically
from model import presets

CONFIG_FILENAME = "config.json"


def write(model_dir, config, class_names):
    """Records `config` and `class_names` in `model_dir`; raises if it already holds different ones."""
    os.makedirs(model_dir, exist_ok=True)
    config_path = os.path.join(model_dir, CONFIG_FILENAME)
    if os.path.exists(config_path):
        stored, stored_names = read(model_dir)
        if stored != config or tuple(stored_names) != tuple(class_names):
            raise ValueError(f"{model_dir} was trained with another model or label map ({config_path}); "
                             f"use a new --model_dir or the same --model/--width_multiplier/--data_dir")
        return
    label_map.write_label_map(os.path.join(model_dir, label_map.LABEL_MAP_FILENAME), class_names)
    write_atomically(config_path, presets.to_json(config))


def read(model_dir):
    """(config, class_names) recorded in `model_dir` (or the folder of a checkpoint prefix)."""
    folder = model_dir if os.path.isdir(model_dir) else os.path.dirname(model_dir)
    config_path = os.path.join(folder, CONFIG_FILENAME)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: {folder} is not a model_dir written by train_ssd.py")
    with open(config_path) as f:
        config = presets.from_json(f.read())
    return config, label_map.read_label_map(os.path.join(folder, label_map.LABEL_MAP_FILENAME))


def restore_model(model, checkpoint_path):
    """Loads the model weights of a training checkpoint (optimizer slots are ignored)."""
    status = tf.train.Checkpoint(model=model).restore(checkpoint_path)
    status.expect_partial().assert_existing_objects_matched()
    return status


def resolve_checkpoint(model_dir=None, checkpoint_path=None):
    """--checkpoint_path if given, else the latest checkpoint in --model_dir; a clear error if none."""
    if checkpoint_path:
        if not tf.io.gfile.exists(checkpoint_path + ".index"):
            raise FileNotFoundError(f"no checkpoint at {checkpoint_path} ({checkpoint_path}.index missing)")
        return checkpoint_path
    latest = tf.train.latest_checkpoint(model_dir) if model_dir else None
    if not latest:
        raise FileNotFoundError(f"no checkpoint in --model_dir={model_dir}")
    return latest
