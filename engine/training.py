"""The training machinery behind train_ssd.py: strategy, schedule, weight decay, the distributed step.

Estimator-style in TF2 (DESIGN.md): the input function and the model function are separate; one
`model_dir` holds checkpoints (`ckpt-N`) and TensorBoard events; a restart resumes.

Distribution contract: every replica computes its loss divided by the GLOBAL number of positives in the
global batch, and the Keras 3 optimizer SUMs gradients across replicas (keras/src/backend/tensorflow/
optimizer.py all-reduces with ReduceOp.SUM). So N replicas take exactly the step one replica would take
on the whole global batch. The weight-decay term is divided by the number of replicas for the same reason.
"""

import collections
import json
import math
import os

import keras
import tensorflow as tf
from absl import logging

from dataset import fields, reader
from engine import cli, preemption, train_config
from engine.train_config import FROM_SCRATCH_COMMAND, OPTIMIZERS, WEIGHT_DECAY_SCOPES, backbone_present
from model import losses as losses_lib
from nets import backbone_loader


def make_strategy():
    """MultiWorkerMirroredStrategy when TF_CONFIG names several workers, MirroredStrategy over all local
    GPUs, the default strategy on CPU (DESIGN.md)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    cluster = tf_config.get("cluster", {})
    num_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    if num_workers > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """Only the chief writes checkpoints and summaries. Without a cluster every process is the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def make_schedule(plan):
    """The schedule of a train_config.Plan (from the flags or MLPerf mode), by plan.schedule."""
    if plan.schedule == train_config.COSINE_PER_EPOCH:
        return WarmupCosinePerEpochSchedule(plan.learning_rate, plan.max_steps, plan.steps_per_epoch,
                                            plan.warmup_steps, warmup_start=plan.warmup_start)
    if plan.schedule != train_config.PIECEWISE:
        raise ValueError(f"unknown schedule {plan.schedule!r}; known: {', '.join(train_config.SCHEDULES)}")
    return WarmupPiecewiseSchedule(plan.learning_rate, plan.decay_boundaries, plan.decay_factors,
                                   plan.warmup_steps, warmup_start=plan.warmup_start)


class WarmupCosinePerEpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """torchvision's detection recipe (references/detection/train.py with --lr-scheduler cosineannealinglr,
    engine.py train_one_epoch): lr(step) = base_lr * cosine(epoch) * warmup(step), where

      epoch = step // steps_per_epoch, epochs = ceil(max_steps / steps_per_epoch),
      cosine(epoch) = (1 + cos(pi * epoch / epochs)) / 2   (CosineAnnealingLR(T_max=epochs), eta_min 0,
                                                            stepped once per epoch),
      warmup(step) = start + (1 - start) * min(step / w, 1), w = min(warmup_steps, steps_per_epoch - 1)
                                                           (LinearLR(start_factor, total_iters=w), which
                                                            torchvision runs in the first epoch only).
    """

    def __init__(self, base_lr, max_steps, steps_per_epoch, warmup_steps=0, warmup_start=0.001):
        super().__init__()
        if steps_per_epoch < 1:
            raise ValueError(f"the cosine-per-epoch schedule needs steps_per_epoch >= 1, got {steps_per_epoch}")
        self.base_lr = float(base_lr)
        self.max_steps = int(max_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = -(-self.max_steps // self.steps_per_epoch)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start = float(warmup_start)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        epoch = tf.floor(step / self.steps_per_epoch)
        # (1 + cos x) / 2 written as cos(x / 2)^2: the same value, without float32's cancellation near
        # the end of the run, where cos x is close to -1.
        factor = tf.square(tf.cos(0.5 * math.pi * epoch / self.epochs))
        warmup = min(self.warmup_steps, self.steps_per_epoch - 1)
        if warmup > 0:
            factor *= self.warmup_start + (1.0 - self.warmup_start) * tf.minimum(step / warmup, 1.0)
        return self.base_lr * factor

    def get_config(self):
        return dict(base_lr=self.base_lr, max_steps=self.max_steps, steps_per_epoch=self.steps_per_epoch,
                    warmup_steps=self.warmup_steps, warmup_start=self.warmup_start)


class WarmupPiecewiseSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = base_lr * factors[i] * warmup(step), i = number of boundaries <= step.

    warmup rises linearly from `warmup_start` to 1 over `warmup_steps` (early NaN is the most reported SSD
    training failure without it). `factors` has one more entry than `boundaries`; the paper's recipe is
    boundaries (80000, 100000), factors (1, 0.1, 0.01).
    """

    def __init__(self, base_lr, boundaries, factors, warmup_steps=0, warmup_start=0.1):
        super().__init__()
        if len(factors) != len(boundaries) + 1:
            raise ValueError(f"need len(factors) == len(boundaries) + 1, got factors {list(factors)} "
                             f"and boundaries {list(boundaries)}")
        if list(boundaries) != sorted(boundaries):
            raise ValueError(f"decay boundaries must be increasing, got {list(boundaries)}")
        self.base_lr = float(base_lr)
        self.boundaries = [int(b) for b in boundaries]
        self.factors = [float(f) for f in factors]
        self.warmup_steps = int(warmup_steps)
        self.warmup_start = float(warmup_start)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        factor = tf.constant(self.factors[0], tf.float32)
        for boundary, value in zip(self.boundaries, self.factors[1:]):
            factor = tf.where(step >= boundary, tf.constant(value, tf.float32), factor)
        if self.warmup_steps > 0:
            progress = tf.minimum(step / self.warmup_steps, 1.0)
            factor *= self.warmup_start + (1.0 - self.warmup_start) * progress
        return self.base_lr * factor

    def get_config(self):
        return dict(base_lr=self.base_lr, boundaries=self.boundaries, factors=self.factors,
                    warmup_steps=self.warmup_steps, warmup_start=self.warmup_start)


def decayed_variables(model, scope="kernels"):
    """Variables under weight decay (train_config.WEIGHT_DECAY_SCOPES).

    "kernels": conv kernels only. Caffe's ssd_pascal.py gives biases `decay_mult: 0`; we also leave the
    conv4_3_norm scale undecayed, since shrinking it towards 0 would fight its purpose (re-scaling the
    normalized conv4_3 to ~20).
    "all": every trainable variable, biases and batch-norm gammas/betas included, as PyTorch's SGD
    `weight_decay` does when given all parameters (the MLPerf reference, torchvision's recipes).
    """
    if scope not in WEIGHT_DECAY_SCOPES:
        raise ValueError(f"unknown weight decay scope {scope!r}; known: {', '.join(WEIGHT_DECAY_SCOPES)}")
    if scope == "all":
        return list(model.trainable_variables)
    return [v for v in model.trainable_variables if v.path.endswith("kernel")]


def weight_decay_loss(variables, weight_decay):
    """0.5 * wd * sum ||w||^2: its gradient wd * w is exactly Caffe's weight_decay update."""
    if not weight_decay or not variables:
        return tf.constant(0.0)
    return 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32)))
                                          for v in variables])


def set_up(mixed_precision, seed, deterministic=False):
    """Global state every run sets first, once: the Keras dtype policy ("none", "bfloat16", "float16"),
    the seeds of Python, NumPy and TensorFlow (keras.utils.set_random_seed), and with `deterministic`
    TensorFlow's deterministic ops (tf.config.experimental.enable_op_determinism), so two runs of the
    same seed on the same machine give bit-identical weights.

    Call it before building the model: nets/ creates its initializers per layer when the model is built,
    and an initializer without a seed draws one from Python's `random` then.
    """
    if mixed_precision != "none":
        keras.mixed_precision.set_dtype_policy(f"mixed_{mixed_precision}")
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def make_optimizer(schedule, momentum, mixed_precision, name="sgd"):
    """SGD with momentum is the paper's (and needs the pretrained backbone to be stable at 1e-3).

    Adam is for training from scratch: raw 0-255 pixels give conv1_1 gradients ~10^4 times its weights'
    norm while the deep layers get ~0.1 (measured at init), a spread no single SGD rate survives; Adam's
    per-weight step size does not care. `momentum` is Adam's beta_1.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {OPTIMIZERS}")
    if name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=momentum)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=schedule, beta_1=momentum)
    if mixed_precision == "float16":
        # float16 gradients underflow without dynamic loss scaling; bfloat16 has float32's range.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def make_train_step(model, optimizer, config, strategy, weight_decay, jit_compile=False,
                    weight_decay_on="kernels"):
    """A tf.function running one distributed step on `next(iterator)`; returns the global loss dict.

    The caller checks the losses of every step (engine.divergence.Watch) before it may save, so weights touched by
    a non-finite step are never written over the last good checkpoint.
    """
    decayed = decayed_variables(model, weight_decay_on)
    num_replicas = strategy.num_replicas_in_sync

    def replica_step(features, labels):
        replica = tf.distribute.get_replica_context()
        local_pos = tf.reduce_sum(labels[fields.NUM_POSITIVES])
        # Every replica normalizes by the positives of the whole global batch (see module docstring).
        global_pos = replica.all_reduce(tf.distribute.ReduceOp.SUM, local_pos)
        with tf.GradientTape() as tape:
            outputs = model(features, training=True)
            loss_dict = losses_lib.multibox_loss(
                outputs[fields.CLS_LOGITS], outputs[fields.BOX_CODES],
                labels[fields.CLS_TARGETS], labels[fields.BOX_TARGETS],
                negative_ratio=config.negative_ratio, normalizer=_normalizer(config, global_pos, features),
                normalization=config.loss_normalization)
            reg = weight_decay_loss(decayed, weight_decay) / num_replicas
            total = loss_dict["total_loss"] + reg
            scaled = optimizer.scale_loss(total) if hasattr(optimizer, "scale_loss") else total
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return {
            "cls_loss": loss_dict["cls_loss"],
            "box_loss": loss_dict["box_loss"],
            "weight_decay_loss": reg,
            "total_loss": total,
            "num_positives": local_pos,
        }

    # XLA compiles the replica's math; reading the iterator stays outside (it cannot be compiled).
    compiled_step = tf.function(replica_step, jit_compile=True) if jit_compile else replica_step

    @tf.function
    def step(iterator):
        features, labels = next(iterator)
        per_replica = strategy.run(compiled_step, args=(features, labels))
        # Losses are already divided by the global normalizer, so the replicas' SUM is the global value.
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    return step


def _normalizer(config, global_positives, features):
    """The GLOBAL divisor of the loss (module docstring): positives, or images for per-image losses."""
    if config.loss_normalization == losses_lib.PER_IMAGE:
        local_images = tf.cast(tf.shape(features)[0], tf.float32)
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, local_images)
    return tf.maximum(global_positives, 1.0)


def init_backbone(model, path, require_pretrained, optimizer_name=None):
    """Loads the backbone from `path` when it holds one; otherwise warns (or fails if required). The
    SSDLite presets, trained from scratch by their recipe, get an info line instead of the warnings.

    Without a backbone and with SGD (the default), the warning also says that SGD at the paper's rate
    diverges from scratch right after the warm-up, and gives README's from-scratch command. (Chosen over
    changing the defaults: they are the paper's recipe, right for the pretrained backbone.)
    """
    if backbone_present(path):
        return backbone_loader.load_backbone(model, path)
    # The SSDLite presets' recipe (configs/ssdlite320_coco.flags, torchvision's) trains from scratch
    # with SGD by design: no backbone is expected, and its SGD does not diverge.
    ssdlite = getattr(model, "name", "").startswith("ssdlite")
    weights = ("torchvision's ImageNet mobilenet_v3_large-*.pth or Keras's MobileNetV3Large .h5" if ssdlite
               else "the reduced-fc VGG16 checkpoint (or Keras VGG16 .h5)")
    message = f"no pretrained backbone at --checkpoint_path={path!r}: put {weights} there; training from scratch"
    if require_pretrained:
        raise FileNotFoundError(message.replace("; training from scratch", " (--require_pretrained is set)"))
    if ssdlite:
        logging.info("no backbone at --checkpoint_path=%r: training %s from scratch, as its recipe does "
                     "(an ImageNet mobilenet_v3_large-*.pth or Keras MobileNetV3Large .h5 there, or keras:imagenet, "
                     "would be loaded)",
                     path, model.name)
        return 0
    logging.warning("%s. Expect far lower mAP than the paper's.", message)
    if optimizer_name == "sgd":
        logging.warning("SGD from scratch diverges after the warm-up (raw-pixel gradients; see "
                        "engine/training.make_optimizer). To train from scratch run: %s", FROM_SCRATCH_COMMAND)
    return 0


def build_model_and_optimizer(strategy, config, schedule, momentum, mixed_precision, optimizer_name):
    """(model, optimizer, tf.train.Checkpoint of both), built in `strategy`'s scope, optimizer
    variables included (before the first distributed step: DESIGN.md)."""
    from nets import ssd
    with strategy.scope():
        model = ssd.build(config)
        optimizer = make_optimizer(schedule, momentum, mixed_precision, optimizer_name)
        optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    return model, optimizer, checkpoint


def batch_norm_statistics(model):
    """The moving means and variances of every batch-norm layer of `model` (non-trainable variables)."""
    return [v for v in model.non_trainable_variables
            if v.path.rsplit("/", 1)[-1] in ("moving_mean", "moving_variance")]


def average_batch_norm_statistics(model, strategy):
    """Replaces each replica's batch-norm moving statistics by their mean over all replicas (and workers).

    Under tf.distribute each replica updates its own copy from its own batches and evaluation reads the
    first replica's; the MLPerf reference all-reduces running_mean and running_var (sum / world size)
    before each evaluation (train.py:372-379). A no-op with one replica.
    """
    variables = batch_norm_statistics(model)
    if strategy.num_replicas_in_sync == 1 or not variables:
        return

    def replica_fn():
        context = tf.distribute.get_replica_context()
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.convert_to_tensor(v) for v in variables])
        for variable, mean in zip(variables, means):
            variable.assign(mean)

    tf.function(lambda: strategy.run(replica_fn))()


def run_step(step_fn, iterator, data_dir, cluster=None):
    """step_fn(iterator), with a corrupted shard named: TF's DataLossError ("corrupted record at N")
    does not say which file, so the shards are checked to find it (only on that error).

    `cluster`: the multi-worker run's {job: [addresses]}; there any other TensorFlow error of the step
    is a lost peer (its collectives failed: UnavailableError, AbortedError, ...) and raises
    engine.preemption.WorkerLost.
    """
    try:
        return step_fn(iterator)
    except tf.errors.DataLossError as e:
        found = reader.find_corrupt_shard(reader.shard_files(data_dir, "train"))
        where = f"{found[0]} is corrupted ({found[1]})" if found else f"a shard is corrupted ({e.message})"
        raise ValueError(f"{where}: reconvert the dataset (python3 convert_voc_sample_tfrecords.py)") from None
    except tf.errors.OpError as e:
        if not cluster:
            raise
        raise preemption.WorkerLost(preemption.lost_worker_message(cli.strip_function_node(e.message),
                                                                   cluster)) from None


class ProgressLogger:
    """Console line every N steps: step, losses, lr, images/s and ETA.

    The rate is measured over the last `window` calls of `rate` (a sliding window), so the ETA follows
    the real speed without jumping with every slow step (an evaluation, a checkpoint, a busy machine).
    """

    def __init__(self, max_steps, global_batch, window=10):
        self.max_steps = max_steps
        self.global_batch = global_batch
        self._marks = collections.deque(maxlen=window + 1)   # (step, time) of the last calls

    def rate(self, step, now):
        """Images per second over the window of previous calls (None on the first)."""
        if self._marks and self._marks[-1][0] == step:
            return None
        self._marks.append((step, now))
        if len(self._marks) < 2:
            return None
        (first_step, first_time), _ = self._marks[0], self._marks[-1]
        return (step - first_step) * self.global_batch / max(now - first_time, 1e-9)

    def eta_seconds(self, step, rate):
        return (self.max_steps - step) * self.global_batch / rate if rate else None

    def log(self, step, values, lr, rate):
        eta = ""
        seconds = self.eta_seconds(step, rate)
        if seconds is not None:
            eta = f" ETA {format_duration(seconds)}"
        losses = " ".join(f"{k}={v:.4f}" for k, v in values.items() if k != "num_positives")
        logging.info("step %d/%d %s lr=%.6g %s%s", step, self.max_steps, losses, lr,
                     f"{rate:.1f} img/s" if rate else "", eta)


def format_duration(seconds):
    """'H:MM:SS' of a number of seconds."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
