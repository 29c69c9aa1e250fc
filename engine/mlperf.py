"""MLPerf mode of train_ssd.py: the MLPerf SSD reference's epoch schedule, evaluation epochs, stop at a
target accuracy, and an MLPerf log (mlcommons/logging `mllog`) in the model_dir.

What the reference does (mlcommons/training single_stage_detector/ssd/train.py at d764d662, its last
v1.0/v1.1 state; the 1x8 GPU recipe is config_DGX1_singlenode.sh + run_and_time.sh) and how it maps here:

* lr = 2.5e-3 per 32 images, scaled linearly with the GLOBAL batch (`current_lr = lr * global_batch / 32`);
  SGD momentum 0.9, weight decay 5e-4.
* Warm-up over `int(warmup_epochs * train_images / global_batch)` steps by the MLPerf rule
  lr(k) = lr - (wb - k) * lr / (wb * 2^factor) for step k < wb: exactly training.WarmupPiecewiseSchedule
  with warmup_start = 1 - 2^-factor (0 for the reference's factor 0).
* x0.1 at the start of each decay epoch (40, 50): step boundaries `epoch * steps_per_epoch`.
* An epoch is `ceil(train_images / global_batch)` steps (our input is one endless shuffled stream, so an
  epoch is a count of images, not a pass over exactly each image once).
* COCO evaluation every `--eval_interval` epochs (train.py --val-interval 5, and the v1.1 rules'
  "Every 5 epochs" for SSD), plus any `--eval_epochs`; the run stops at the first one whose accuracy
  reaches `--target_map` (reference --threshold 0.23, COCO AP[.5:.95]). Before each, the batch-norm
  statistics are averaged over the replicas (train.py all-reduces running_mean/var before coco_eval).
* The reference's method (d764d662): with the ssd300_resnet34 preset, MLPerf mode trains with the
  `mlperf` augmentation (preprocessing/mlperf_augment.py) and weight decay on every parameter unless
  those flags are given; the preset holds the rest (matcher, crowd boxes as positives, NMS 0.50).
* An epoch is the reference's 117,266 COCO train images (those with annotations; convert with
  convert_coco_tfrecords.py --nokeep_empty) and the evaluation its 4,952 val images with annotations,
  scored against the official instances_val2017.json (`--annotations_file`).

The log follows the training rules' v1.1 keys (the last round with SSD-ResNet34; from v2.0 "ssd" is
RetinaNet), so `python3 -m mlperf_logging.compliance_checker --usage training --ruleset 1.1.0
<model_dir>/mlperf.log` checks it. The closed division's SSD rules also require one
`weights_initialization` per reference tensor, under the names of NVIDIA's MXNet submission
(`ssd0_resnetmlperf0_stage1_conv0_weight`, ...): `closed_tensor_names` derives them from our layers.
The log says closed only when the run is the reference's method (`closed_problems`: the full-width
preset, the recipe, every hyperparameter the closed rules fix, the dataset and the clock); otherwise
it logs open and the console names every reason. The clock (run_start) starts before the dataset is
first read: the record counts are checked after it (and --train_images=0, which counts the train
records to plan the schedule before it, is open for that reason).

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
MAX_SAMPLES = {"caffe": 50, "mlperf": 1}   # tries per min-IoU option: augment's max_samples, SSDCropping's 1
REFERENCE_TRAIN_IMAGES = 117266   # COCO train2017 images with annotations (train.py: len(train_coco))
REFERENCE_EVAL_IMAGES = 4952      # COCO val2017 images with annotations (len(val_coco))
REFERENCE_MODEL = "ssd300_resnet34"
REFERENCE_CLASSES = 80
REFERENCE_EVAL_INTERVAL = 5       # train.py --val-interval; training_rules v1.1: SSD "Every 5 epochs"
# Flags whose values are the reference's method (closed rules: everything not listed as free there).
REFERENCE_RECIPE = (("augmentation", "mlperf"), ("weight_decay_on", "all"), ("optimizer", "sgd"),
                    ("momentum", 0.9), ("target_map", 0.23), ("target_metric", "coco"),
                    ("exclude_difficult", False), ("anchor_config", None), ("eval_interval", REFERENCE_EVAL_INTERVAL))
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
    flags.DEFINE_integer("eval_interval", REFERENCE_EVAL_INTERVAL, "MLPerf mode: evaluate after every N-th "
                         "epoch (v1.1 rules and train.py --val-interval: 5); 0: only --eval_epochs.")
    flags.DEFINE_list("eval_epochs", [], "MLPerf mode: evaluate after these epochs too (open division).")
    flags.DEFINE_string("annotations_file", "", "MLPerf mode: the official instances JSON (annotations/"
                        "instances_val2017.json) the COCO numbers are scored against, as the reference does.")
    flags.DEFINE_float("target_map", 0.23, "MLPerf mode: stop at the first evaluation reaching this accuracy.")
    flags.DEFINE_enum("target_metric", "coco", list(METRIC_KEYS), "MLPerf mode: the accuracy compared to "
                      "--target_map (coco: AP[.5:.95]).")
    flags.DEFINE_integer("train_images", REFERENCE_TRAIN_IMAGES, "MLPerf mode: images per epoch (the reference: "
                         "117,266, COCO train2017 with annotations); 0 counts the train records (before the "
                         "clock starts: open division).")
    flags.DEFINE_float("base_lr_per_32", REFERENCE_BASE_LR, "MLPerf mode: lr per 32 images, scaled with "
                       "the global batch.")
    flags.DEFINE_enum("submission_division", "auto", ["auto", "closed", "open"], "MLPerf log: auto and closed "
                      "log closed when the run is the reference's method (engine/mlperf.closed_problems), open "
                      "otherwise, naming why.")
    flags.DEFINE_string("submission_org", "ssd-tf2", "MLPerf log: submission_org.")
    flags.DEFINE_string("submission_platform", "", "MLPerf log: submission_platform (default: the devices).")


def count_records(data_dir, split):
    """Records in the `split` shards, from the record headers (dataset/reader.count_records: seeks)."""
    from dataset import reader
    return sum(reader.count_records(f) for f in reader.shard_files(data_dir, split))


def eval_epochs(flag_values):
    """Epochs after which to evaluate: every eval_interval-th, plus eval_epochs, up to epochs; sorted."""
    interval = flag_values.eval_interval
    every_nth = range(interval, flag_values.epochs + 1, interval) if interval > 0 else ()
    extra = (int(e) for e in flag_values.eval_epochs)
    return tuple(sorted({e for e in (*every_nth, *extra) if 0 < e <= flag_values.epochs}))


def _given(flag_values, name):
    """True when flag `name` was given (absl's .present); objects without that are taken as given."""
    try:
        return bool(flag_values[name].present)
    except (TypeError, KeyError, AttributeError):
        return True


def recipe(flag_values, config):
    """(augmentation, weight_decay_on) of the run: the reference's for its preset unless given."""
    values = {"augmentation": flag_values.augmentation, "weight_decay_on": flag_values.weight_decay_on}
    if config.name == REFERENCE_MODEL:
        for name in values:
            if not _given(flag_values, name):
                values[name] = dict(REFERENCE_RECIPE)[name]
    return values["augmentation"], values["weight_decay_on"]


def _decay_epochs_allowed(epochs):
    """training_rules v1.1: decay boundary epochs [40, 50] * (1 + k / 10) for an integer k."""
    ks = [10.0 * (e / base - 1.0) for e, base in zip(epochs, (40, 50))]
    return len(epochs) == 2 and all(abs(k - round(k)) < 1e-9 for k in ks) and round(ks[0]) == round(ks[1])


def closed_problems(flag_values, config, augmentation, weight_decay_on):
    """Every way this run is not the reference's method (module docstring), as short phrases; [] when it is
    closed-division material. Record counts are checked later, after run_start (Session.run_start)."""
    from model import presets
    problems = []
    reference = presets.get(REFERENCE_MODEL, REFERENCE_CLASSES)
    if config != reference:
        changed = sorted(f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(reference, f.name))
        problems.append(f"the model is not the full-width {REFERENCE_MODEL} preset for 80 classes "
                        f"(differs in {', '.join(changed)})")
    chosen = {"augmentation": augmentation, "weight_decay_on": weight_decay_on}
    for name, value in REFERENCE_RECIPE:
        given = chosen.get(name, getattr(flag_values, name, value))
        if given != value:
            problems.append(f"--{name}={given} (the reference: {value})")
    if list(flag_values.eval_epochs):
        problems.append(f"--eval_epochs={','.join(flag_values.eval_epochs)} adds evaluations to every "
                        f"{REFERENCE_EVAL_INTERVAL} epochs")
    decay = [int(e) for e in flag_values.decay_epochs]
    if not _decay_epochs_allowed(decay):
        problems.append(f"--decay_epochs={','.join(map(str, decay))} (the rules: [40, 50] * (1 + k/10))")
    if not flag_values.train_images:
        problems.append("--train_images=0 reads the train records before run_start")
    elif flag_values.train_images != REFERENCE_TRAIN_IMAGES:
        problems.append(f"--train_images={flag_values.train_images} (the reference: {REFERENCE_TRAIN_IMAGES})")
    if not flag_values.annotations_file:
        problems.append("no --annotations_file: scored against the records, not instances_val2017.json")
    return problems


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
        eval_epochs=eval_epochs(flag_values))


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
        self.augmentation, self.weight_decay_on = recipe(flag_values, config)
        self.problems = closed_problems(flag_values, config, self.augmentation, self.weight_decay_on)
        # --train_images=0: the schedule needs the count now, before run_start (a closed problem above).
        self.plan = make_plan(flag_values, self.global_batch,
                              flag_values.train_images or count_records(data_dir, "train"))
        self.eval_images = None        # counted after run_start
        self.closed = None             # decided after run_start, once the records are counted
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
        """Logs init_stop and run_start, then reads the record counts (the clock runs from here), decides the
        division, and logs the submission, the hyperparameters and (closed) the initialised tensors."""
        import tensorflow as tf
        c, f = self.c, self.flags
        self._end(c.INIT_STOP)
        self._start(c.RUN_START)
        self.start_time = time.time()
        self._samples_since = (0, self.start_time)
        self._check_counts()
        gpus = tf.config.list_physical_devices("GPU")
        platform = f"{len(gpus)}xGPU" if gpus else "1xCPU"
        self._decide_division()
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
        self._event(c.MAX_SAMPLES, MAX_SAMPLES[self.augmentation])
        self._event(c.OPT_BASE_LR, self.plan.learning_rate)
        self._event(c.OPT_WEIGHT_DECAY, f.weight_decay)
        self._event(c.OPT_LR_WARMUP_STEPS, self.plan.warmup_steps)
        self._event(c.OPT_LR_WARMUP_FACTOR, f.warmup_factor)
        self._event(c.OPT_LR_DECAY_BOUNDARY_EPOCHS, list(self.plan.decay_epochs))
        if self.closed:
            for name in closed_tensor_names(model, self.config):
                self._event(c.WEIGHTS_INITIALIZATION, tensor=name)

    def _check_counts(self):
        """The records against the plan and the reference, said loudly when they differ."""
        self.eval_images = count_records(self.data_dir, "val")
        train_images = self.plan.train_images
        if self.flags.train_images:   # not counted for the plan: counted now
            train_images = count_records(self.data_dir, "train")
            if train_images != self.plan.train_images:
                logging.warning("MLPerf: the train records hold %d images but an epoch is --train_images=%d: the "
                                "schedule's epochs are not passes over these records", train_images,
                                self.plan.train_images)
                self.problems.append(f"the train records hold {train_images} images, an epoch "
                                     f"{self.plan.train_images}")
        if train_images != REFERENCE_TRAIN_IMAGES and not any("train records" in p for p in self.problems):
            self.problems.append(f"the train records hold {train_images} images (the reference: "
                                 f"{REFERENCE_TRAIN_IMAGES}; convert_coco_tfrecords.py --nokeep_empty)")
        if self.eval_images != REFERENCE_EVAL_IMAGES:
            self.problems.append(f"the val records hold {self.eval_images} images (the reference evaluates the "
                                 f"{REFERENCE_EVAL_IMAGES} with annotations; convert_coco_tfrecords.py --nokeep_empty)")

    def _decide_division(self):
        wanted = self.flags.submission_division
        self.closed = wanted != "open" and not self.problems
        if wanted != "open" and self.problems:
            logging.warning("MLPerf: logging the OPEN division%s, because %s", " (--submission_division=closed "
                            "asked for closed)" if wanted == "closed" else "", "; ".join(self.problems))
        elif self.problems:
            logging.info("MLPerf: logging the open division (asked for); not closed anyway: %s",
                         "; ".join(self.problems))
        else:
            logging.info("MLPerf: logging the %s division", "closed" if self.closed else "open")

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
