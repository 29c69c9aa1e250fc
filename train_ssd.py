"""Train SSD: flags -> config -> datasets -> model -> restore -> loop.

    python3 train_ssd.py --batch_size 16                 # the paper's recipe on dataset/tfrecords
    tensorboard --logdir logs/                           # loss, lr, images/s, images with boxes

Resumes from the latest checkpoint in --model_dir. Uses every local GPU (MirroredStrategy), several
workers when TF_CONFIG names them (MultiWorkerMirroredStrategy), the CPU otherwise.
"""

import dataclasses
import os
import shutil
import tempfile
import time
from typing import Any

from absl import flags, logging

from engine import cli, mlperf
from engine.train_config import (AUGMENTATIONS, COSINE_PER_EPOCH, MIXED_PRECISION, OPTIMIZERS, SCHEDULES,
                                 WEIGHT_DECAY_SCOPES, Plan, backbone_present, every)
from model import presets

flags.DEFINE_string("data_dir", cli.DEFAULT_DATA_DIR,
                    "Directory of train-*/val-* shards and label_map.pbtxt (default: the converter's output).")
flags.DEFINE_string("model_dir", "logs/", "Checkpoints and TensorBoard events (train/, eval/).")
flags.DEFINE_enum("model", "ssd300_vgg16", presets.NAMES, "Model preset.")
flags.DEFINE_float("width_multiplier", 1.0, "Scales every conv's channels; < 1 for small fast models.")
flags.DEFINE_integer("batch_size", 32, "Global batch size, split across replicas (paper: 32).")
flags.DEFINE_integer("max_steps", 120000, "Training steps (paper: 120k for VOC07+12).")
flags.DEFINE_float("learning_rate", 1e-3, "Base learning rate (paper: 1e-3 at batch 32).")
flags.DEFINE_integer("warmup_steps", 1000, "Linear warm-up steps from --warmup_start x the base rate; 0 disables.")
flags.DEFINE_float("warmup_start", 0.1, "The warm-up's first rate as a fraction of the base rate "
                   "(torchvision's detection recipes: 0.001).")
flags.DEFINE_enum("lr_schedule", SCHEDULES[0], SCHEDULES,
                  "piecewise: --decay_boundaries / --lr_decay_factors; cosine_per_epoch: torchvision's cosine "
                  "stepped once per --steps_per_epoch steps, to 0 at --max_steps.")
flags.DEFINE_integer("steps_per_epoch", 0, "Epoch length in steps for --lr_schedule=cosine_per_epoch "
                     "(training images / --batch_size).")
flags.DEFINE_list("decay_boundaries", ["80000", "100000"], "Steps where the rate factor changes.")
flags.DEFINE_list("lr_decay_factors", ["1", "0.1", "0.01"], "Rate factors, one more than boundaries.")
flags.DEFINE_enum("optimizer", "sgd", OPTIMIZERS,
                  "sgd: the paper's, with a pretrained backbone; adam: stable when training from scratch.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum (Adam's beta_1).")
flags.DEFINE_float("weight_decay", 5e-4, "L2 decay on the variables --weight_decay_on names.")
flags.DEFINE_enum("weight_decay_on", "kernels", WEIGHT_DECAY_SCOPES,
                  "kernels: conv kernels only (Caffe: not biases, not the conv4_3 scale); all: every trainable "
                  "variable, biases and batch norm included (PyTorch recipes: MLPerf, torchvision).")
flags.DEFINE_enum("augmentation", AUGMENTATIONS[0], AUGMENTATIONS,
                  "Training augmentation recipe: caffe is ssd_pascal.py's (photometric, zoom-out, min-IoU crop, "
                  "flip); mlperf the MLPerf SSD-ResNet34 reference's (crop, flip, resize, ColorJitter), which "
                  "--mlperf picks for ssd300_resnet34 unless this flag is given.")
flags.DEFINE_string("checkpoint_path", os.path.join(cli.REPO_DIR, "model", "pretrained"),
                    "Backbone weights: reduced-fc VGG16 as a slim TF checkpoint (prefix or dir), Keras VGG16 .h5 "
                    "or ssd.pytorch's vgg16_reducedfc.pth; torchvision resnet34-333f7ec4.pth (.pth/.safetensors); "
                    "for the SSDLite presets torchvision's mobilenet_v3_large-*.pth, Keras's MobileNetV3Large "
                    ".h5 / .weights.h5, or keras:imagenet (Keras downloads it).")
flags.DEFINE_bool("require_pretrained", False, "Fail instead of training from scratch without a backbone.")
flags.DEFINE_string("fine_tune_checkpoint", None,
                    "Start from a whole trained detector (step 0, fresh optimizer): a model_dir or ckpt-N of this "
                    "project on any classes, or torchvision's ssd300_vgg16_coco-*.pth (with --model "
                    "ssd300_vgg16_torchvision). Classes of both label maps keep their columns. Ignored on resume.")
flags.DEFINE_integer("save_checkpoints_steps", 1000, "Steps between checkpoints.")
flags.DEFINE_integer("keep_checkpoints", 5, "Checkpoints kept in --model_dir.")
flags.DEFINE_integer("log_every_n_steps", 20, "Steps between console lines.")
flags.DEFINE_integer("save_summary_steps", 100, "Steps between TensorBoard scalars.")
flags.DEFINE_integer("image_summary_steps", 500, "Steps between TensorBoard images with boxes; 0 disables.")
flags.DEFINE_enum("mixed_precision", "none", MIXED_PRECISION,
                  "Compute dtype; float16 uses dynamic loss scaling.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the training step.")
flags.DEFINE_integer("seed", 0, "Seed of initialization, shuffling and augmentation.")
flags.DEFINE_bool("deterministic", False, "Deterministic TensorFlow ops: the same --seed gives bit-identical "
                  "checkpoints (slower on GPU).")
flags.DEFINE_integer("stall_timeout_s", 1800, "Multi-worker runs: stop (exit 43) when no step finishes for this "
                     "long, the backstop for a lost or hung worker; 0: never. Above the chief's evaluation time.")
flags.DEFINE_integer("eval_every_steps", 0, "Evaluate the val shards every N steps (and at the end); 0: never.")
flags.DEFINE_integer("eval_batch_size", 16, "Batch size of in-process evaluation.")
flags.DEFINE_bool("exclude_difficult", False, "Drop difficult boxes from training (Caffe keeps them).")
flags.DEFINE_string("anchor_config", None, "Anchor file from analyze_dataset.py --fit_anchors (kept in config.json).")
mlperf.define_flags()
flags.DEFINE_string("data_service", "", "HOST:PORT of a tf.data service dispatcher whose workers make the "
                    "training batches (python3 -m engine.data_service); empty: this process makes them.")
flags.DEFINE_enum("data_service_sharding", "dynamic", ("dynamic", "off"),
                  "With --data_service: dynamic hands shard files to any number of workers (no fixed order; a "
                  "restart rejoins the dispatcher's job or starts the stream over); off: one worker makes the "
                  "local pipeline's stream from the resume position, so a restart sees an uninterrupted run's "
                  "batches.")
FLAGS = flags.FLAGS

# Every flag that cannot work fails at parse time, in one line (engine/cli.py).
for _name in ("batch_size", "learning_rate", "width_multiplier", "keep_checkpoints",
              "eval_batch_size"):
    cli.positive(_name)
for _name in ("warmup_steps", "save_checkpoints_steps", "log_every_n_steps", "save_summary_steps",
              "image_summary_steps", "eval_every_steps", "weight_decay", "stall_timeout_s"):
    flags.register_validator(_name, lambda v: v >= 0, message=f"--{_name} must be >= 0")
cli.list_of("decay_boundaries", int, "a whole step number (write 1000, not 1k)")
cli.list_of("lr_decay_factors", float, "a number")
flags.register_validator("momentum", lambda v: 0 <= v < 1, message="--momentum must be in [0, 1)")
flags.register_validator("warmup_start", lambda v: 0 <= v <= 1, message="--warmup_start must be in [0, 1]")


@flags.multi_flags_validator(["lr_schedule", "steps_per_epoch"])
def _check_cosine(values):
    if values["lr_schedule"] == COSINE_PER_EPOCH and values["steps_per_epoch"] < 1:
        raise flags.ValidationError("--lr_schedule=cosine_per_epoch needs --steps_per_epoch >= 1 "
                                    "(training images / --batch_size)")
    return True


@flags.multi_flags_validator(["decay_boundaries", "lr_decay_factors"])
def _check_schedule(values):
    try:
        boundaries = [int(b) for b in values["decay_boundaries"]]
        factors = values["lr_decay_factors"]
    except ValueError:
        return True  # reported by the list validator
    if len(factors) != len(boundaries) + 1:
        raise flags.ValidationError(f"--lr_decay_factors needs one more entry than --decay_boundaries "
                                    f"({len(boundaries)} boundaries, {len(factors)} factors)")
    if boundaries != sorted(boundaries):
        raise flags.ValidationError(f"--decay_boundaries must be increasing, got {values['decay_boundaries']}")
    return True


@flags.multi_flags_validator(["max_steps", "fine_tune_checkpoint"])
def _check_max_steps(values):
    # --max_steps 0 with --fine_tune_checkpoint converts a detector into a model_dir (ckpt-0) and stops.
    if values["max_steps"] < 0 or (values["max_steps"] == 0 and not values["fine_tune_checkpoint"]):
        raise flags.ValidationError("--max_steps must be > 0 (0 only with --fine_tune_checkpoint: import and stop)")
    return True


@flags.validator("data_dir")
def _check_data_dir(data_dir):
    if not os.path.isfile(os.path.join(data_dir, "label_map.pbtxt")):
        raise flags.ValidationError(f"no label_map.pbtxt in --data_dir={data_dir}: convert a dataset first "
                                    f"(python3 convert_voc_sample_tfrecords.py) or point --data_dir at one")
    return True


@flags.multi_flags_validator(["require_pretrained", "checkpoint_path"])
def _check_backbone(values):
    if values["require_pretrained"] and not backbone_present(values["checkpoint_path"]):
        raise flags.ValidationError(f"--require_pretrained is set but --checkpoint_path="
                                    f"{values['checkpoint_path']!r} holds no backbone: put the preset's backbone "
                                    f"there (the reduced-fc VGG16, torchvision's resnet34 or mobilenet_v3_large .pth, "
                                    f"Keras's MobileNetV3Large .h5; docs/training.md) or drop --require_pretrained")
    return True


@dataclasses.dataclass
class Run:
    """What the cadence helpers below share: the plan, the model, its data and where things are written."""

    plan: Plan
    config: Any
    class_names: Any
    anchors: Any
    model: Any
    schedule: Any
    manager: Any
    writer: Any
    progress: Any
    chief: bool
    image_batches: Any = None   # a small training-input iterator for image summaries (chief only)
    last_saved: Any = None      # the newest checkpoint written or restored


def main(argv):
    del argv
    import tensorflow as tf

    from dataset import label_map
    from engine import anchor_file, checkpoints, divergence, preemption, summaries, training
    from model import anchors as anchors_lib

    training.set_up(FLAGS.mixed_precision, FLAGS.seed, FLAGS.deterministic)   # before the model is built
    strategy = training.make_strategy()
    chief = training.is_chief(strategy)
    class_names = label_map.read_label_map(os.path.join(FLAGS.data_dir, label_map.LABEL_MAP_FILENAME))
    config = presets.get(FLAGS.model, len(class_names), width_multiplier=FLAGS.width_multiplier,
                         **anchor_file.overrides(FLAGS.anchor_config, FLAGS.model))
    if config.backbone == "mobilenet_v3_large" and FLAGS.fine_tune_checkpoint:
        # The tail and padding of the detector fine-tuned from (engine/fine_tune.py), which no flag sets.
        from engine import fine_tune
        config = dataclasses.replace(config, **fine_tune.source_backbone_fields(FLAGS.fine_tune_checkpoint))
    elif config.backbone == "mobilenet_v3_large" and backbone_present(FLAGS.checkpoint_path):
        # As torchvision's ssdlite320_mobilenet_v3_large: the full tail with an ImageNet backbone, the
        # reduced tail from scratch; Keras's weights also want Keras's padding (nets/backbone_loader).
        from nets import backbone_loader
        overrides = backbone_loader.mobilenet_v3_overrides(FLAGS.checkpoint_path)
        config = dataclasses.replace(config, **overrides)
        logging.info("ImageNet backbone from --checkpoint_path=%s: building %s with %s", FLAGS.checkpoint_path,
                     config.name, ", ".join(f"{k}={v!r}" for k, v in overrides.items()))
    if chief:
        checkpoints.write(FLAGS.model_dir, config, class_names)
        checkpoints.check_run_settings(FLAGS.model_dir, {"optimizer": FLAGS.optimizer})
    session = (mlperf.Session(FLAGS, config, FLAGS.data_dir, FLAGS.model_dir, strategy.num_replicas_in_sync,
                              chief) if FLAGS.mlperf else None)
    plan = session.plan if session else plan_from_flags()   # steps, schedule, evaluation cadence
    anchors = anchors_lib.generate(config)
    schedule = training.make_schedule(plan)
    model, optimizer, checkpoint = training.build_model_and_optimizer(
        strategy, config, schedule, FLAGS.momentum, FLAGS.mixed_precision, FLAGS.optimizer)

    if chief:   # events a killed run wrote past its last checkpoint are written again: dropped first
        summaries.purge_past_checkpoint(FLAGS.model_dir)
    # Non-chief workers must take part in every save (it is collective) but write to a scratch dir.
    write_dir = FLAGS.model_dir if chief else tempfile.mkdtemp(prefix="ssd_worker_")
    run = Run(plan, config, class_names, anchors, model, schedule,
              tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=FLAGS.keep_checkpoints),
              summaries.Writer(os.path.join(FLAGS.model_dir, "train"), enabled=chief),
              training.ProgressLogger(plan.max_steps, FLAGS.batch_size), chief)
    run.last_saved = restore(run, checkpoint, optimizer)
    if session:
        session.run_start(model)
    step = int(optimizer.iterations.numpy())
    # MLPerf mode picks the reference's recipe for its preset (engine/mlperf.recipe); the data is first
    # read here, after run_start.
    augmentation, weight_decay_on = ((session.augmentation, session.weight_decay_on) if session
                                     else (FLAGS.augmentation, FLAGS.weight_decay_on))
    dataset, run.image_batches = make_datasets(strategy, config, anchors, augmentation, start_step=step,
                                               chief=chief)

    step_fn = training.make_train_step(model, optimizer, config, strategy, FLAGS.weight_decay,
                                       FLAGS.jit_compile, weight_decay_on=weight_decay_on)
    iterator = iter(dataset)
    watch = divergence.Watch(FLAGS.model_dir if chief else None, plan.learning_rate)   # a non-finite loss
    # SIGTERM: every worker saves at one step boundary and exits 42; a lost worker: one line and exit 43.
    handler = preemption.make_preemption_handler(strategy, checkpoint, run.manager,
                                                 lambda: stop_preempted(run, write_dir))
    cluster = preemption.cluster_of(strategy)
    watchdog = preemption.Watchdog(FLAGS.stall_timeout_s if cluster else 0,
                                   lambda seconds, at: preemption.exit_after_stall("train_ssd.py", seconds, at))
    run.progress.rate(step, time.time())
    while step < plan.max_steps:
        values = watch.check(step + 1, training.run_step(step_fn, iterator, FLAGS.data_dir, cluster))
        previous, step = step, int(optimizer.iterations.numpy())
        if step == previous:  # float16 loss scaling skipped an overflowing step and lowered its scale
            continue
        watchdog.beat(step)
        report(run, step, values)
        if every(FLAGS.save_checkpoints_steps, step, plan.max_steps):
            run.writer.flush()   # the scalars up to this checkpoint are on disk before it
            run.last_saved = run.manager.save(checkpoint_number=step)
            logging.info("saved %s", run.last_saved)
        if run.chief and every(plan.eval_every_steps, step, plan.max_steps):
            evaluate(run, step)
        if session and session.after_step(step, lambda: evaluate_mlperf(run, step, strategy)):   # reached --target_map
            run.last_saved = run.manager.save(checkpoint_number=step)
            break
        handler.save_checkpoint_if_preempted(checkpoint_number=step)
    watchdog.stop()
    run.writer.close()
    if not chief:
        shutil.rmtree(write_dir, ignore_errors=True)


def stop_preempted(run, write_dir):
    """What a preempted run does after the handler saved, before it exits with cli.EXIT_PREEMPTED."""
    run.writer.close()
    if run.chief:
        logging.warning("preempted: saved %s; exiting with %d, start the run again to continue",
                        run.manager.latest_checkpoint, cli.EXIT_PREEMPTED)
    else:
        shutil.rmtree(write_dir, ignore_errors=True)


def plan_from_flags():
    """The run's Plan as the flags give it (MLPerf mode makes its own: engine/mlperf.make_plan)."""
    return Plan(max_steps=FLAGS.max_steps, learning_rate=FLAGS.learning_rate,
                decay_boundaries=tuple(int(b) for b in FLAGS.decay_boundaries),
                decay_factors=tuple(float(f) for f in FLAGS.lr_decay_factors),
                warmup_steps=FLAGS.warmup_steps, warmup_start=FLAGS.warmup_start,
                eval_every_steps=FLAGS.eval_every_steps, schedule=FLAGS.lr_schedule,
                steps_per_epoch=FLAGS.steps_per_epoch)


def make_datasets(strategy, config, anchors, augmentation, start_step, chief):
    """The distributed training batches from `start_step` on (preprocessing/inputs.py: resume), and for
    the chief's image summaries a small local batch iterator (None when they are off)."""
    from preprocessing import augment, inputs
    input_config = inputs.TrainInputConfig(
        augment=augment.AugmentConfig(policy=augmentation), exclude_difficult=FLAGS.exclude_difficult,
        seed=FLAGS.seed, data_service=FLAGS.data_service, data_service_sharding=FLAGS.data_service_sharding)
    if FLAGS.data_service:
        logging.info("%s", data_service_resume_note(start_step))
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: inputs.train_input_fn(FLAGS.data_dir, config, anchors, FLAGS.batch_size, ctx,
                                          input_config, start_step=start_step))
    image_batches = None
    if chief and FLAGS.image_summary_steps:
        local = dataclasses.replace(input_config, data_service="")
        image_batches = iter(inputs.train_input_fn(FLAGS.data_dir, config, anchors, 4, None, local))
    return dataset, image_batches


def data_service_resume_note(start_step):
    """What a restart of this run gets from the tf.data service (preprocessing/inputs.from_data_service)."""
    if FLAGS.data_service_sharding == "off":
        return (f"data service, sharding off: batches from step {start_step + 1} on, exactly as an uninterrupted "
                f"run's (one worker; several would each send the whole stream)")
    return ("data service, dynamic sharding: the input position is the dispatcher's job; a restart rejoins it "
            "while the dispatcher keeps it (batches in flight are lost), else the stream starts over, and the "
            "order is not deterministic (--data_service_sharding off with one worker resumes exactly)")


def restore(run, checkpoint, optimizer):
    """Resumes from the latest checkpoint of --model_dir, else loads --fine_tune_checkpoint (saved as
    ckpt-0) or initialises the backbone; returns the checkpoint resumed from or saved (None for a fresh
    run from a backbone). Folders left by a kill during a save are removed."""
    import tensorflow as tf

    from engine import checkpoints, training
    if run.chief:
        for stale in checkpoints.remove_stale_temp(FLAGS.model_dir):
            logging.info("removed %s, left by a run killed while saving", stale)
        checkpoints.unprotect(FLAGS.model_dir)   # what a run killed while watching a divergence kept
    latest = tf.train.latest_checkpoint(FLAGS.model_dir)
    if latest:
        checkpoints.restore_training(checkpoint, latest, optimizer)
        logging.info("resumed from %s at step %d%s", latest, int(optimizer.iterations.numpy()),
                     " (--fine_tune_checkpoint is not read again)" if FLAGS.fine_tune_checkpoint else "")
    elif FLAGS.fine_tune_checkpoint:
        from engine import fine_tune
        fine_tune.load(run.model, run.config, run.class_names, FLAGS.fine_tune_checkpoint)
        # ckpt-0 keeps the starting point: a restart before the first save resumes from it.
        latest = run.manager.save(checkpoint_number=0)
    else:
        training.init_backbone(run.model, FLAGS.checkpoint_path, FLAGS.require_pretrained, FLAGS.optimizer)
    return latest


def report(run, step, values):
    """The console line, TensorBoard scalars and images, each at its own cadence."""
    log_now = every(FLAGS.log_every_n_steps, step, run.plan.max_steps)
    scalars_now = every(FLAGS.save_summary_steps, step)
    if log_now or scalars_now:
        rate, lr = run.progress.rate(step, time.time()), float(run.schedule(step))
        if log_now:
            run.progress.log(step, values, lr, rate)
        if scalars_now:
            run.writer.scalars(step, {**values, "learning_rate": lr, "images_per_second": rate or 0.0,
                                      "positives_per_image": values["num_positives"] / FLAGS.batch_size})
    if run.image_batches is not None and every(FLAGS.image_summary_steps, step):
        run.writer.detection_images(step, "train/inputs", run.model, next(run.image_batches), run.anchors,
                                    run.config, run.class_names)


def evaluate(run, step, annotations_file=None):
    """In-process evaluation of the val shards: the headline and table logged, eval/ summaries written."""
    from engine import evaluation
    from metrics.evaluator import format_table
    results = evaluation.evaluate(run.model, FLAGS.data_dir, run.config, run.anchors, run.class_names,
                                  FLAGS.eval_batch_size, os.path.join(FLAGS.model_dir, "eval"), step,
                                  annotations_file=annotations_file)
    logging.info("step %d evaluation:\n%s", step, format_table(results, run.class_names))
    logging.info("step %d eval: %s", step, evaluation.headline(results))
    return results


def evaluate_mlperf(run, step, strategy):
    """MLPerf's evaluation: batch-norm statistics averaged over the replicas first (the reference's
    all-reduce), then scored against --annotations_file when given."""
    from engine import training
    training.average_batch_norm_statistics(run.model, strategy)
    return evaluate(run, step, FLAGS.annotations_file or None)


if __name__ == "__main__":
    cli.run(main)
