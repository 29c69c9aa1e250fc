"""The model_dir: its checkpoints, and what it holds besides them (the model config and the label map).

train_ssd.py writes config and label map when a run starts, so eval_ssd.py, the detect and export
scripts rebuild the exact model from --model_dir alone, and a resumed run cannot silently change the
model under a checkpoint. Continuous evaluation walks a model_dir's checkpoints with
`watch_checkpoints` and reads each one's training step with `checkpoint_step`.
"""

import glob
import os
import re
import shutil
import time

import tensorflow as tf
from absl import logging

from dataset import label_map
from dataset.atomic import write_atomically
from model import presets

CONFIG_FILENAME = "config.json"
# What else must match for a checkpoint to restore: the optimizer's slots and loss scaling.
RUN_SETTINGS_FILENAME = "run_settings.json"
# train_ssd.py checkpoints hold tf.train.Checkpoint(model=..., optimizer=...); Keras 3 optimizers
# track their step counter as `_iterations`.
ITERATIONS_KEY = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
_CHECKPOINT_NUMBER = re.compile(r"-(\d+)$")
_OPTIMIZER_VARIABLES = "optimizer/_variables/"
# Where engine.divergence keeps the last checkpoint before a divergence out of rotation's reach.
PROTECTED_DIRNAME = "protected"


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


def check_run_settings(model_dir, settings):
    """Records `settings` (e.g. {"optimizer": "adam"}) in `model_dir` on its first run; later runs must
    bring the same ones, else ValueError in one line saying which flag to use (before any restore, so
    a resume with another --optimizer fails clearly instead of deep inside Checkpoint.restore)."""
    import json
    path = os.path.join(model_dir, RUN_SETTINGS_FILENAME)
    if not os.path.exists(path):
        # Recorded by a fresh run only: checkpoints without the record come from an older version, and
        # restore_training checks them.
        if not tf.train.latest_checkpoint(model_dir):
            os.makedirs(model_dir, exist_ok=True)
            write_atomically(path, json.dumps(settings, sort_keys=True))
        return
    with open(path) as f:
        stored = json.load(f)
    for key, value in sorted(settings.items()):
        if key in stored and stored[key] != value:
            raise ValueError(f"{model_dir} was trained with --{key} {stored[key]}, not {value}: resume with "
                             f"--{key} {stored[key]} or use a new --model_dir")


def read(model_dir):
    """(config, class_names) recorded in `model_dir` (or the folder of a checkpoint prefix)."""
    folder = model_dir if os.path.isdir(model_dir) else os.path.dirname(model_dir)
    config_path = os.path.join(folder, CONFIG_FILENAME)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: {folder} is not a model_dir written by train_ssd.py")
    with open(config_path) as f:
        config = presets.from_json(f.read())
    return config, label_map.read_label_map(os.path.join(folder, label_map.LABEL_MAP_FILENAME))


def restore_training(checkpoint, checkpoint_path, optimizer):
    """Restores a training checkpoint (model and optimizer); ValueError in one line when it was written
    by a run with another optimizer or model.

    The optimizer's variable count is compared first (SGD keeps one slot per weight, Adam two), so
    such a checkpoint is refused before Checkpoint.restore half-restores it and fails with a shape error
    followed by a warning per unrestored variable.
    """
    # Slot variables (momentum, Adam's two moments) have the weights' shapes; scalars (step, rate) vary.
    saved = sorted(tuple(shape) for name, shape in tf.train.list_variables(checkpoint_path)
                   if name.startswith(_OPTIMIZER_VARIABLES) and len(shape) > 0)
    expected = sorted(tuple(v.shape) for v in optimizer.variables if len(v.shape) > 0)
    hint = ("resume with the flags it was trained with (--optimizer, --model, --width_multiplier, "
            "--mixed_precision) or use a new --model_dir")
    if saved and expected and saved != expected:
        raise ValueError(f"{checkpoint_path} holds {len(saved)} optimizer slots, this run's optimizer has "
                         f"{len(expected)} (another --optimizer or model wrote it); {hint}")
    try:
        checkpoint.restore(checkpoint_path).assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:200]
        raise ValueError(f"{checkpoint_path} does not fit this run ({first}); {hint}") from None


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
        raise FileNotFoundError(f"no checkpoint in --model_dir={model_dir}: train one there first "
                                f"(train_ssd.py --model_dir {model_dir}) or pass --checkpoint_path")
    return latest


def remove_stale_temp(model_dir):
    """Deletes `ckpt-N_temp` folders: what a kill during a checkpoint save leaves. Returns them."""
    stale = sorted(p for p in glob.glob(os.path.join(glob.escape(model_dir), "*_temp")) if os.path.isdir(p))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def checkpoint_number(prefix):
    """The N of a `ckpt-N` prefix, or None."""
    match = _CHECKPOINT_NUMBER.search(prefix)
    return int(match.group(1)) if match else None


def latest_at_or_before(model_dir, step):
    """The newest checkpoint of `model_dir` numbered <= `step`, or None."""
    older = [p for p in _listed_checkpoints(model_dir) if (checkpoint_number(p) or 0) <= step]
    return max(older, key=checkpoint_number, default=None)


def protect(model_dir, prefix):
    """Keeps the files of checkpoint `prefix` out of CheckpointManager's rotation: hard links (copies
    where the file system has none) in <model_dir>/protected/, which `discard_from(keep=prefix)` puts
    back. One checkpoint at a time: what was protected before is released."""
    unprotect(model_dir)
    folder = os.path.join(model_dir, PROTECTED_DIRNAME)
    os.makedirs(folder)
    for path in glob.glob(glob.escape(prefix) + ".*"):
        target = os.path.join(folder, os.path.basename(path))
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def unprotect(model_dir):
    """Releases the checkpoint `protect` kept (also what a killed run left)."""
    shutil.rmtree(os.path.join(model_dir, PROTECTED_DIRNAME), ignore_errors=True)


def discard_from(model_dir, first_bad_step, keep=None):
    """Removes the checkpoints of `model_dir` numbered >= `first_bad_step` and points the checkpoint
    state at the newest one left; returns (that checkpoint or None, the names removed).

    For a non-finite loss (engine.divergence): the checkpoints it removes hold weights that were
    already diverging, so resuming from one would fail again. `keep`: a checkpoint `protect`ed from
    rotation; put back first if the rotation deleted it.
    """
    state = tf.train.get_checkpoint_state(model_dir)
    paths = list(state.all_model_checkpoint_paths) if state else []
    if keep and not tf.io.gfile.exists(keep + ".index"):
        folder = os.path.join(model_dir, PROTECTED_DIRNAME)
        for path in glob.glob(os.path.join(glob.escape(folder), glob.escape(os.path.basename(keep)) + ".*")):
            shutil.copy2(path, os.path.join(os.path.dirname(keep), os.path.basename(path)))
        logging.info("put back %s, which --keep_checkpoints rotation had deleted", keep)
    if keep and keep not in paths and tf.io.gfile.exists(keep + ".index"):
        paths.append(keep)
    paths.sort(key=lambda p: checkpoint_number(p) or 0)
    bad = [p for p in paths if (checkpoint_number(p) or 0) >= first_bad_step]
    good = [p for p in paths if p not in bad]
    if good:
        tf.compat.v1.train.update_checkpoint_state(model_dir, good[-1], all_model_checkpoint_paths=good)
    elif state is not None:
        os.remove(os.path.join(model_dir, "checkpoint"))
    for prefix in bad:
        for path in glob.glob(glob.escape(prefix) + ".*"):
            os.remove(path)
    return (good[-1] if good else None), [os.path.basename(p) for p in bad]


def checkpoint_step(checkpoint_path):
    """Training step of a checkpoint: the optimizer's iteration count, else the N of `ckpt-N`."""
    reader = tf.train.load_checkpoint(checkpoint_path)
    if reader.has_tensor(ITERATIONS_KEY):
        return int(reader.get_tensor(ITERATIONS_KEY))
    match = _CHECKPOINT_NUMBER.search(os.path.basename(checkpoint_path))
    if not match:
        raise ValueError(f"cannot tell the step of {checkpoint_path}: no {ITERATIONS_KEY} and no -N suffix")
    return int(match.group(1))


def _listed_checkpoints(model_dir):
    """Checkpoint prefixes the `checkpoint` state file of `model_dir` lists (oldest first) that exist."""
    state = tf.train.get_checkpoint_state(model_dir)
    if state is None:
        return []
    return [path for path in state.all_model_checkpoint_paths if tf.io.gfile.exists(path + ".index")]


def watch_checkpoints(model_dir, timeout_s, max_steps=0, poll_s=1.0, step_fn=checkpoint_step,
                      clock=time.monotonic, sleep=time.sleep):
    """Yields each checkpoint of `model_dir` once, oldest first, including those already there; waits
    for new ones; returns after `timeout_s` seconds without one, or after yielding one whose step
    (`step_fn`) is >= `max_steps` (0: no step limit).

    Unlike tf.train.checkpoints_iterator, which starts at the latest checkpoint, this also yields the
    older checkpoints the training's CheckpointManager still keeps, so an evaluator started late (or a
    training that saved faster than one evaluation) skips none of them. The timeout counts from the
    end of the last evaluation (the caller's work between yields), as checkpoints_iterator's does.
    """
    seen = set()
    deadline = clock() + timeout_s
    while True:
        new = [path for path in _listed_checkpoints(model_dir) if path not in seen]
        for path in new:
            seen.add(path)
            if tf.io.gfile.exists(path + ".index"):  # the manager may have deleted it meanwhile
                yield path
                if max_steps and step_fn(path) >= max_steps:
                    logging.info("%s is at or past --max_steps %d; stopping", path, max_steps)
                    return
        if new:
            deadline = clock() + timeout_s
        elif clock() >= deadline:
            logging.info("no new checkpoint in %s for %.0f s; stopping", model_dir, timeout_s)
            return
        else:
            sleep(min(poll_s, max(deadline - clock(), 0.0)))


def check_label_maps(model_class_names, data_class_names, model_folder, data_label_map_path):
    """Raises ValueError unless the data's classes are the model's, in the same order (same ids)."""
    if tuple(data_class_names) == tuple(model_class_names):
        return
    differences = [f"id {i + 1}: model {m!r} vs data {d!r}"
                   for i, (m, d) in enumerate(zip(model_class_names, data_class_names)) if m != d]
    raise ValueError(
        f"label map mismatch: the model in {model_folder} was trained with {len(model_class_names)} "
        f"classes, {data_label_map_path} has {len(data_class_names)}"
        + (f"; {', '.join(differences[:5])}" if differences else "")
        + ". Evaluate on the data the model was trained for.")
