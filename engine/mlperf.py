"""MLPerf mode of train_ssd.py: the MLPerf SSD reference's epoch schedule, evaluation epochs, stop at a
target accuracy, and an MLPerf log (mlcommons/logging `mllog`) in the model_dir.

What the reference does (mlcommons/training single_stage_detector/ssd/train.py at v0.7; the 1x8 GPU
recipe is config_DGX1_singlenode.sh + run_and_time.sh) and how it maps here:

* lr = 2.5e-3 per 32 images, scaled linearly with the GLOBAL batch (`current_lr = lr * global_batch / 32`);
  SGD momentum 0.9, weight decay 5e-4.
* Warm-up over `int(warmup_epochs * train_images / global_batch)` steps by the MLPerf rule
  lr(k) = lr - (wb - k) * lr / (wb * 2^factor) for step k < wb: exactly training.WarmupPiecewiseSchedule
  with warmup_start = 1 - 2^-factor (0 for the reference's factor 0).
* x0.1 at the start of each decay epoch (40, 50): step boundaries `epoch * steps_per_epoch`.
* An epoch is `ceil(train_images / global_batch)` steps (our input is one endless shuffled stream, so an
  epoch is a count of images, not a pass over exactly each image once).
* COCO evaluation after the epochs of `--eval_epochs` (reference: 40, 50, 55, ..., 80); the run stops at
  the first one whose accuracy reaches `--target_map` (reference --threshold 0.23, COCO AP[.5:.95]).

The log follows the training rules' v1.1 keys (the last round with SSD-ResNet34; from v2.0 "ssd" is
RetinaNet), so `python3 -m mlperf_logging.compliance_checker --usage training --ruleset 1.1.0
<model_dir>/mlperf.log` checks it. The closed division's SSD rules also require one
`weights_initialization` per reference tensor, under the names of NVIDIA's MXNet submission
(`ssd0_resnetmlperf0_stage1_conv0_weight`, ...): `closed_tensor_names` derives them from our layers.
Presets other than full-width ssd300_resnet34 are logged as the open division.

MLPerf mode decides the run's steps, schedule and evaluation epochs (`make_plan`, a `Plan`) and
train_ssd.py passes that plan on; the flags it overrides (--max_steps, --learning_rate, --warmup_steps,
--decay_boundaries, --eval_every_steps) are ignored, never rewritten.
"""

import dataclasses
import math
import os
import time

from absl import flags, logging

from engine import train_config

LOG_FILENAME = "mlperf.log"
RULESET = "1.1.0"
REFERENCE_BASE_LR = 2.5e-3        # train.py _BASE_LR / --lr, per REFERENCE_LR_BATCH images
REFERENCE_LR_BATCH = 32
DECAY_FACTOR = 0.1                # train.py: current_lr *= 0.1 at each --lr-decay-schedule epoch
MAX_CROP_TRIALS = 50              # preprocessing/augment: up to 50 tries per min-IoU option (max_samples)
METRIC_KEYS = {"coco": ("coco", "AP"), "voc07": ("voc07", "mAP"), "voc12": ("voc12", "mAP")}


def define_flags():
    flags.DEFINE_bool("mlperf", False, "MLPerf mode: schedule by epochs, evaluate at --eval_epochs, stop at "
                      "--target_map, write <model_dir>/mlperf.log (overrides --max_steps, --learning_rate, "
                      "--warmup_steps, --decay_boundaries, --eval_every_steps).")
    flags.DEFINE_integer("epochs", 80, "MLPerf mode: most epochs to train (reference: 70-80).")
    flags.DEFINE_float("warmup_epochs", 2.619685, "MLPerf mode: warm-up length in epochs (reference 1x8: "
                       "300 steps of 1024 images of 117,266).")
    flags.DEFINE_integer("warmup_factor", 0, "MLPerf mode: warm-up curve, lr starts at lr * (1 - 2^-factor).")
    flags.DEFINE_list("decay_epochs", ["40", "50"], "MLPerf mode: epochs at whose start lr is multiplied by 0.1.")
    flags.DEFINE_list("eval_epochs", ["40", "50", "55", "60", "65", "70", "75", "80"],
                      "MLPerf mode: evaluate after these epochs.")
    flags.DEFINE_float("target_map", 0.23, "MLPerf mode: stop at the first evaluation reaching this accuracy.")
    flags.DEFINE_enum("target_metric", "coco", list(METRIC_KEYS), "MLPerf mode: the accuracy compared to "
                      "--target_map (coco: AP[.5:.95]).")
    flags.DEFINE_integer("train_images", 0, "MLPerf mode: images per epoch; 0 counts the train records.")
    flags.DEFINE_float("base_lr_per_32", REFERENCE_BASE_LR, "MLPerf mode: lr per 32 images, scaled with "
                       "the global batch.")
    flags.DEFINE_enum("submission_division", "auto", ["auto", "closed", "open"], "MLPerf log: auto is closed "
                      "for the full-width ssd300_resnet34 (the reference model), open otherwise.")
    flags.DEFINE_string("submission_org", "ssd-tf2", "MLPerf log: submission_org.")
    flags.DEFINE_string("submission_platform", "", "MLPerf log: submission_platform (default: the devices).")


def count_records(data_dir, split):
    """Records in the `split` shards (one read of the files; COCO train ~1 minute)."""
    import tensorflow as tf

    from dataset import reader
    return int(tf.data.TFRecordDataset(reader.shard_files(data_dir, split)).reduce(0, lambda n, _: n + 1))


def closed_tensor_names(model, config):
    """Our trainable layers in the reference's order -> the closed-division tensor names of the SSD rules.

    ResNet convs/BNs per stage in block order (conv1, conv2, then the downsample), each extra block's
    1x1 ("expand_trans") and 3x3 ("expand") conv, one "convpredictor" per feature map (its loc and conf
    heads together, as NVIDIA's merged head).
    """
    names, stage_counts = [], {}
    for layer in model.layers:
        n = layer.name
        if n == "conv1":
            names.append("ssd0_resnetmlperf0_conv0_weight")
        elif n == "bn1":
            names += ["ssd0_resnetmlperf0_batchnorm0_gamma", "ssd0_resnetmlperf0_batchnorm0_beta"]
        elif n.startswith("layer") and n.endswith(("_conv1", "_conv2", "_downsample_0")):
            stage = int(n[len("layer")])
            index = stage_counts.get(stage, 0)
            stage_counts[stage] = index + 1
            prefix = f"ssd0_resnetmlperf0_stage{stage}"
            names += [f"{prefix}_conv{index}_weight", f"{prefix}_batchnorm{index}_gamma",
                      f"{prefix}_batchnorm{index}_beta"]
    for i, _ in enumerate(config.extra_layers):
        names += [f"ssd0_expand_trans_conv{i}_weight", f"ssd0_expand_trans_conv{i}_bias",
                  f"ssd0_expand_conv{i}_weight", f"ssd0_expand_conv{i}_bias"]
    for i, _ in enumerate(config.feature_maps):
        names += [f"ssd0_convpredictor{i}_conv0_weight", f"ssd0_convpredictor{i}_conv0_bias"]
    return names


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan(train_config.Plan):
    """What MLPerf mode decides (module docstring): the train_config.Plan the loop runs, and its epochs."""

    train_images: int                # images per epoch
    steps_per_epoch: int             # ceil(train_images / global batch)
    decay_epochs: tuple              # epochs at whose start lr is multiplied by DECAY_FACTOR
    eval_epochs: tuple               # evaluate after these epochs (those beyond --epochs dropped), sorted


def make_plan(flag_values, global_batch, train_images):
    """The reference's schedule for `train_images` images per epoch at `global_batch` (module docstring).

    `flag_values` gives epochs, warmup_epochs, warmup_factor, decay_epochs, eval_epochs and base_lr_per_32
    (absl FLAGS or any object with those attributes); it is only read.
    """
    steps_per_epoch = math.ceil(train_images / global_batch)
    decay_epochs = tuple(int(e) for e in flag_values.decay_epochs)
    boundaries = tuple(e * steps_per_epoch for e in decay_epochs)
    return Plan(
        max_steps=flag_values.epochs * steps_per_epoch,
        learning_rate=flag_values.base_lr_per_32 * global_batch / REFERENCE_LR_BATCH,
        decay_boundaries=boundaries,
        decay_factors=tuple(DECAY_FACTOR ** i for i in range(len(boundaries) + 1)),
        # train.py: wb = int(warmup * nonempty_imgs / global_batch); the rules want at least one step.
        warmup_steps=max(1, int(flag_values.warmup_epochs * train_images / global_batch)),
        warmup_start=1.0 - 2.0 ** -flag_values.warmup_factor,
        eval_every_steps=0,           # evaluation happens at eval_epochs, in Session.after_step
        train_images=train_images,
        steps_per_epoch=steps_per_epoch,
        decay_epochs=decay_epochs,
        eval_epochs=tuple(sorted(int(e) for e in flag_values.eval_epochs if int(e) <= flag_values.epochs)))


class Session:
    """One MLPerf run: its plan (`.plan`, for train_ssd.py to train by), the log, the epoch clock,
    evaluation and the stop decision. `flag_values` is only read."""

    def __init__(self, flag_values, config, data_dir, model_dir, num_replicas, chief=True):
        from mlperf_logging import mllog
        from mlperf_logging.mllog import constants

        self.c = constants
        self.flags = flag_values
        self.config = config
        self.data_dir = data_dir
        self.chief = chief
        if chief:
            os.makedirs(model_dir, exist_ok=True)
            mllog.config(filename=os.path.join(model_dir, LOG_FILENAME), root_dir=os.getcwd())
        self.log = mllog.get_mllogger()
        self._event(constants.CACHE_CLEAR, True)
        self._start(constants.INIT_START)
        self.global_batch = flag_values.batch_size
        self.num_replicas = num_replicas
        self.plan = make_plan(flag_values, self.global_batch,
                              flag_values.train_images or count_records(data_dir, "train"))
        self.eval_images = count_records(data_dir, "val")
        self.closed = (flag_values.submission_division == "closed" or flag_values.submission_division == "auto"
                       and config.name == "ssd300_resnet34" and config.width_multiplier == 1.0)
        self.start_time = None
        self.stopped = False
        self._block_first = None
        self._samples_since = (0, None)

    # -- the log -------------------------------------------------------------------------------
    def _event(self, key, value=None, **metadata):
        if self.chief:
            self.log.event(key=key, value=value, metadata=metadata or None)

    def _start(self, key, value=None, **metadata):
        if self.chief:
            self.log.start(key=key, value=value, metadata=metadata or None)

    def _end(self, key, value=None, **metadata):
        if self.chief:
            self.log.end(key=key, value=value, metadata=metadata or None)

    def run_start(self, model):
        """Logs the submission and hyperparameters, the initialised tensors, init_stop and run_start."""
        import tensorflow as tf
        c, f = self.c, self.flags
        gpus = tf.config.list_physical_devices("GPU")
        platform = f"{len(gpus)}xGPU" if gpus else "1xCPU"
        self._event(c.SUBMISSION_BENCHMARK, c.SSD)
        self._event(c.SUBMISSION_ORG, f.submission_org)
        self._event(c.SUBMISSION_DIVISION, c.CLOSED if self.closed else c.OPEN)
        self._event(c.SUBMISSION_STATUS, c.RESEARCH)
        self._event(c.SUBMISSION_PLATFORM, f.submission_platform or platform)
        self._event(c.SEED, f.seed)
        self._event(c.GLOBAL_BATCH_SIZE, self.global_batch)
        self._event(c.GRADIENT_ACCUMULATION_STEPS, 1)
        self._event(c.MODEL_BN_SPAN, self.global_batch // self.num_replicas)   # BN statistics per replica
        self._event(c.TRAIN_SAMPLES, self.plan.train_images)
        self._event(c.EVAL_SAMPLES, self.eval_images)
        self._event(c.MAX_SAMPLES, MAX_CROP_TRIALS)
        self._event(c.OPT_BASE_LR, self.plan.learning_rate)
        self._event(c.OPT_WEIGHT_DECAY, f.weight_decay)
        self._event(c.OPT_LR_WARMUP_STEPS, self.plan.warmup_steps)
        self._event(c.OPT_LR_WARMUP_FACTOR, f.warmup_factor)
        self._event(c.OPT_LR_DECAY_BOUNDARY_EPOCHS, list(self.plan.decay_epochs))
        if self.closed:
            for name in closed_tensor_names(model, self.config):
                self._event(c.WEIGHTS_INITIALIZATION, tensor=name)
        self._end(c.INIT_STOP)
        self._start(c.RUN_START)
        self.start_time = time.time()
        self._samples_since = (0, self.start_time)

    def after_step(self, step, evaluate):
        """Call after every optimizer step; returns True when the run must stop.

        `evaluate()` -> the evaluator's result dict; called at the end of each epoch in eval_epochs.
        """
        c, plan = self.c, self.plan
        epoch, within = divmod(step - 1, plan.steps_per_epoch)   # 0-based epoch of this step
        if within == 0:
            self._epoch_begin(epoch + 1)
        if within != plan.steps_per_epoch - 1 and step != plan.max_steps:
            return False
        done_epoch = epoch + 1
        self._end(c.EPOCH_STOP, epoch_num=done_epoch)
        self._throughput(step)
        stop = False
        if done_epoch in plan.eval_epochs:
            self._end(c.BLOCK_STOP, first_epoch_num=self._block_first)
            self._start(c.EVAL_START, epoch_num=done_epoch)
            results = evaluate()
            section, key = METRIC_KEYS[self.flags.target_metric]
            accuracy = (results.get(section) or {}).get(key)
            accuracy = float(accuracy) if accuracy is not None and not math.isnan(accuracy) else 0.0
            self._event(c.EVAL_ACCURACY, accuracy, epoch_num=done_epoch)
            self._end(c.EVAL_STOP, epoch_num=done_epoch)
            logging.info("MLPerf: epoch %d %s %s %.4f (target %.4f)", done_epoch, section, key, accuracy,
                         self.flags.target_map)
            stop = accuracy >= self.flags.target_map
            self._block_first = None
        if stop or step >= plan.max_steps:
            self.finish(stop)
        return stop

    def _epoch_begin(self, epoch_num):
        c = self.c
        if self._block_first is None:
            later = [e for e in self.plan.eval_epochs if e >= epoch_num] or [self.flags.epochs]
            self._block_first = epoch_num
            self._start(c.BLOCK_START, first_epoch_num=epoch_num, epoch_count=later[0] - epoch_num + 1)
        self._start(c.EPOCH_START, epoch_num=epoch_num)

    def _throughput(self, step):
        now = time.time()
        last_step, last_time = self._samples_since
        if last_time is not None and now > last_time:
            rate = (step - last_step) * self.global_batch / (now - last_time)
            self._event("tracked_stats", {"throughput": rate}, step=step)
        self._samples_since = (step, now)

    def finish(self, success):
        """run_stop with its status, and the closing time-to-accuracy line."""
        if self.stopped:
            return
        self.stopped = True
        if self._block_first is not None:
            self._end(self.c.BLOCK_STOP, first_epoch_num=self._block_first)
            self._block_first = None
        status = self.c.SUCCESS if success else self.c.ABORTED
        self._end(self.c.RUN_STOP, status=status)
        minutes = (time.time() - self.start_time) / 60.0 if self.start_time else 0.0
        if success:
            logging.info("MLPerf: reached %s %.4f: time to accuracy %.2f minutes (run_start to run_stop)",
                         self.flags.target_metric, self.flags.target_map, minutes)
        else:
            logging.info("MLPerf: target %s %.4f not reached in %d epochs (%.2f minutes); status aborted",
                         self.flags.target_metric, self.flags.target_map, self.flags.epochs, minutes)
