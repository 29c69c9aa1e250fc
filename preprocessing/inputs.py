"""Input functions: TFRecord shards -> batches the model and the loss consume (DESIGN.md data flow).

    train_input_fn -> (features uint8 [B, S, S, 3],
                       {cls_targets int32 [B, A], box_targets float32 [B, A, 4], num_positives float32 [B]})
    eval_input_fn  -> (features uint8 [B, S, S, 3],
                       {image_id string [B], height int32 [B], width int32 [B],
                        boxes float32 [B, G, 4], labels int32 [B, G] (0 = padding), difficult bool [B, G],
                        is_crowd bool [B, G], area float32 [B, G]})

Both resize by warping the whole image (training: the augmented patch) to S x S, as Caffe SSD does
(no aspect-preserving letterbox), with bilinear interpolation: it is Caffe's LINEAR mode (the first of ssd_pascal.py's resize modes), it is the
cheapest good filter, and the anchors never see the difference at 300 px.

Features are RGB uint8 0-255, rounded from the float augmentation and resize (Caffe's pipeline holds
uint8 images throughout too): the float cast and the mean subtraction are the network's first layer
(nets/ssd.py PixelNormalization), so a batch is a quarter of the float32 bytes on its way to the
accelerator, and the host never subtracts the mean. The zoom-out fill (the model's mean) rounds to
uint8 with the rest, as Caffe's uint8 canvas filled with its integer mean_value does: it reaches the
net within 0.5 of zero per channel.

Training fuses the resize with the augmentation's crop (augment(output_size=...)), so a zoomed-out
canvas (up to 4 x 4 times the image) is never built; target encoding runs once per batch, vectorised.
`augmented_examples` is the same path stopped before target encoding, for looking at the augmentation
(visualize_augmentation.py).

Randomness is stateless and keyed by (seed, element index), so the same seed gives the same batches even
though the map runs in parallel.

Resume: the training stream is a pure function of (seed, step). Epoch e's record order (which files,
interleaved how, shuffled how) depends on (seed, e) only, so the element at position n of the endless
stream is found without reading anything before it but the current epoch: epoch n // E, offset n % E
(E = records per epoch, counted from the TFRecord headers without reading the records,
reader.count_records). `train_input_fn(start_step=k)` starts at element k x (images per step of this
pipeline), skipping the offset on the serialized records, before parsing and decoding, and numbers the
elements from there, so a resumed run sees exactly the batches an uninterrupted one would have seen
from step k on. (Checkpointing the tf.data iterator instead would store the 2,048-record shuffle
buffer, hundreds of MB of JPEG bytes, in every checkpoint.)
"""

import dataclasses

import tensorflow as tf

from dataset import fields, reader
from model import targets
from preprocessing.augment import AugmentConfig, augment

AUTOTUNE = tf.data.AUTOTUNE
_EPOCH_SEED_STRIDE = 1_000_003   # epoch seeds of different --seed values never collide below 1M epochs
_MAX_EPOCHS = 2 ** 62            # "endless"
_EPOCH_GRAPH_SEED = 1


@dataclasses.dataclass(frozen=True)
class TrainInputConfig:
    augment: AugmentConfig = AugmentConfig()
    exclude_difficult: bool = False     # Caffe trains on difficult boxes (ssd_pascal.py); this opts out
    shuffle_buffer: int = 2048
    cycle_length: int = 8               # shards read at once
    seed: int = 0
    # "host:port" of a tf.data service dispatcher (engine/data_service.py): its workers run this whole
    # pipeline, batches included, and training only receives batches. "" runs it in this process.
    data_service: str = ""
    # DATA_SERVICE_SHARDINGS (from_data_service): "dynamic" hands shard files to the workers as they ask
    # (several workers, no fixed order); "off" has every worker make the whole stream, which with one
    # worker is the local pipeline's, from the resume position on.
    data_service_sharding: str = "dynamic"


def to_uint8(image):
    """Float RGB 0-255 [..., 3] -> uint8, rounded to nearest (ties to even, as Caffe's cvRound).

    Values must lie in [-0.5, 255.5): true of every caller, whose pixels are clipped 0-255 values or
    bilinear (convex) combinations of them, off by float rounding at most. Without a clip: two passes over
    the image instead of four (measured 0.21-0.27 -> 0.19-0.21 ms of CPU per 300 x 300 image).
    """
    return tf.cast(tf.round(image), tf.uint8)


def resize(image, config):
    """[H, W, 3] -> float32 [S, S, 3], bilinear (see the module docstring for why)."""
    size = [config.image_size, config.image_size]
    return tf.image.resize(image, size, method=tf.image.ResizeMethod.BILINEAR)


def _read_shards(files, cycle_length, input_context=None, shuffle_seed=None):
    """Interleaved records of `files`, sharded by input pipeline when distributed.

    Each pipeline reads its own files; with fewer files than pipelines every pipeline reads them all and
    keeps every n-th record instead (slower, but no worker is left without data).
    """
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    by_file = 1 < pipelines <= len(files)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if by_file:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(cycle_length, len(files)),
                       num_parallel_calls=AUTOTUNE, deterministic=True)
    if pipelines > 1 and not by_file:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    return ds


def with_model_fill(augment_config, config):
    """`augment_config` with the zoom-out canvas filled by the model's pixel mean (Caffe fills with the
    mean it subtracts, so the canvas reaches the net as zeros)."""
    zoom_out = dataclasses.replace(augment_config.zoom_out, fill_rgb=tuple(config.pixel_mean))
    return dataclasses.replace(augment_config, zoom_out=zoom_out)


def _augment_example(index, serialized, config, input_config):
    """Serialized record -> (image uint8 [S, S, 3] RGB, boxes float32 [K, 4], labels int32 [K],
    is_crowd bool [K]); crowd flags travel through the crops like the labels."""
    example = reader.parse_example(serialized)
    boxes, labels, crowd = example[fields.BOXES], example[fields.LABELS], example[fields.IS_CROWD]
    if input_config.exclude_difficult:
        keep = tf.logical_not(example[fields.DIFFICULT])
        boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
        crowd = tf.boolean_mask(crowd, keep)
    seed = tf.stack([tf.cast(input_config.seed, tf.int64), index])
    size = (config.image_size, config.image_size)
    image, boxes, labels, extras = augment(example[fields.IMAGE], boxes, labels, seed,
                                           with_model_fill(input_config.augment, config),
                                           extras={fields.IS_CROWD: crowd}, output_size=size)
    # Rounded here, before batching: padded_batch then copies a quarter of the bytes.
    return to_uint8(image), boxes, labels, extras[fields.IS_CROWD]


def _records_per_epoch(files, input_context):
    """Records one input pipeline reads per epoch (the same split as _read_shards makes)."""
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    if 1 < pipelines <= len(files):
        return sum(reader.count_records(f) for f in files[input_context.input_pipeline_id::pipelines])
    total = sum(reader.count_records(f) for f in files)
    pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
    return len(range(pipeline_id, total, pipelines))


def _endless_records(files, input_config, input_context, start_element):
    """Serialized records of every epoch from element `start_element` on; epoch e is shuffled by a
    seed made of (seed, e) alone (module docstring: resume)."""
    start_epoch, offset = 0, 0
    if start_element:
        epoch_size = _records_per_epoch(files, input_context)
        if not epoch_size:
            raise ValueError("no training records in %s" % ", ".join(files))
        start_epoch, offset = divmod(start_element, epoch_size)

    def epoch_records(epoch):
        # The shuffles' seeds are tensors here. The graph-level seed of this traced function is pinned so
        # that they alone decide (and because tf's seed pairing compares a global seed of 0 with the op
        # seed in Python, which a tensor op seed cannot answer).
        tf.random.set_seed(_EPOCH_GRAPH_SEED)
        epoch_seed = tf.cast(input_config.seed, tf.int64) * _EPOCH_SEED_STRIDE + epoch
        ds = _read_shards(files, input_config.cycle_length, input_context, shuffle_seed=epoch_seed)
        return ds.shuffle(input_config.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)

    ds = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch_records)
    return ds.skip(offset)


def _augmented_dataset(data_dir, config, input_config, split, input_context=None, start_element=0):
    """Endless shuffled (image uint8 [S, S, 3], boxes [K, 4], labels [K], is_crowd [K]) of `split`,
    from element `start_element` of the stream on."""
    files = reader.shard_files(data_dir, split)
    ds = _endless_records(files, input_config, input_context, start_element)
    ds = ds.enumerate(start=start_element)
    return ds.map(lambda i, s: _augment_example(i, s, config, input_config),
                  num_parallel_calls=AUTOTUNE, deterministic=True)


def _encode_batch(anchors, config):
    def encode(images, boxes, labels, crowd=None):
        # padded_batch pads labels with 0 (background), which marks padding rows.
        encoded = targets.encode_targets(boxes, labels, labels > fields.BACKGROUND_CLASS, anchors, config,
                                         gt_is_crowd=crowd)
        return images, encoded
    return encode


def train_input_fn(data_dir, config, anchors, global_batch_size, input_context=None,
                   input_config=TrainInputConfig(), split="train", start_step=0):
    """Endless, shuffled, augmented, target-encoded training batches (drop_remainder=True).

    Usable with `strategy.distribute_datasets_from_function`: with an `input_context` it batches the
    per-replica share of `global_batch_size` and reads only its input pipeline's shards.
    `start_step`: the first batch is the one an uninterrupted run would train step `start_step` + 1 on
    (module docstring: resume).
    With `input_config.data_service` the batches come from that tf.data service instead
    (from_data_service; the service keeps its own input position).
    """
    batch_size, images_per_step = global_batch_size, global_batch_size
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        # Each pipeline feeds num_replicas / num_pipelines replicas one batch each per step.
        images_per_step = batch_size * (input_context.num_replicas_in_sync // input_context.num_input_pipelines)
    if input_config.data_service:
        return from_data_service(data_dir, config, anchors, batch_size, input_config, split,
                                 start_element=start_step * images_per_step)
    if input_context is not None:
        # Different pipelines, different augmentations.
        input_config = dataclasses.replace(input_config, seed=input_config.seed + input_context.input_pipeline_id)
    return _batches(data_dir, config, anchors, batch_size, input_config, split, input_context,
                    start_element=start_step * images_per_step).prefetch(AUTOTUNE)


def _batches(data_dir, config, anchors, batch_size, input_config, split, input_context=None, start_element=0):
    ds = _augmented_dataset(data_dir, config, input_config, split, input_context, start_element=start_element)
    ds = ds.padded_batch(batch_size, padded_shapes=([config.image_size, config.image_size, 3],
                                                    [None, 4], [None], [None]), drop_remainder=True)
    # Matching a whole batch at once is one [B, G, A] IoU instead of B small ones; measured as fast as
    # encoding per image before batching (within noise on one core), with fewer ops per image.
    return ds.map(_encode_batch(tf.constant(anchors), config), num_parallel_calls=AUTOTUNE,
                  deterministic=True)


DATA_SERVICE_SHARDINGS = ("dynamic", "off")


def data_service_job_name(batch_size, split="train", sharding="dynamic", start_element=0):
    """One shared job per (split, batch size), which every trainer pipeline asking for it splits. With
    sharding off the job also names its start element: a resumed run gets a fresh job that begins where
    it stopped, never the old job's position."""
    name = f"ssd_{split}_batch{batch_size}"
    return name if sharding == "dynamic" else f"{name}_off_from{start_element}"


def from_data_service(data_dir, config, anchors, batch_size, input_config, split="train", start_element=0):
    """The training batches of this process's pipeline, made by the workers of a tf.data service.

    The whole pipeline (reading, augmentation, batching, target encoding) is sent to the dispatcher at
    `input_config.data_service` and runs on its workers, which must see `data_dir` at the same path.
    `input_config.data_service_sharding`:
      "dynamic" ("distributed epoch"): the dispatcher hands the shard files out to the workers one at a
        time, so each record goes to one worker per epoch, and every trainer pipeline consuming the job
        (one per host under tf.distribute) receives different batches. With one worker the batches are
        exactly those of the local pipeline with the same seed (tested); with several, which worker
        reads a file depends on timing, and each worker keys its augmentation by its own element count.
        The input position is the dispatcher's: a restart rejoins the job of the same name while the
        dispatcher keeps it (the batches in flight at the kill are lost), else the stream starts over.
      "off": every worker makes the whole stream from `start_element` (the resume position, baked in
        before `distribute`) under a job named after it; with one worker a killed and restarted run
        sees exactly the batches an uninterrupted run sees (tested). Several workers would each send
        the whole stream: use one.
    """
    sharding = input_config.data_service_sharding
    if sharding not in DATA_SERVICE_SHARDINGS:
        raise ValueError(f"unknown data service sharding {sharding!r}; known: {', '.join(DATA_SERVICE_SHARDINGS)}")
    policy = tf.data.experimental.service.ShardingPolicy
    if sharding == "dynamic":
        ds, mode = _batches(data_dir, config, anchors, batch_size, input_config, split), policy.DYNAMIC
    else:
        ds = _batches(data_dir, config, anchors, batch_size, input_config, split, start_element=start_element)
        mode = policy.OFF
    return ds.apply(tf.data.experimental.service.distribute(
        processing_mode=mode, service=input_config.data_service,
        job_name=data_service_job_name(batch_size, split, sharding, start_element)))


def augmented_examples(data_dir, config, input_config=TrainInputConfig(), split="train"):
    """The training path up to (not including) target encoding, for inspection.

    Returns an endless tf.data.Dataset of (image uint8 [S, S, 3] RGB, boxes float32 [K, 4] normalized
    [ymin, xmin, ymax, xmax], labels int32 [K]): exactly the examples train_input_fn batches for the
    same input_config (same seed, same order).
    """
    ds = _augmented_dataset(data_dir, config, input_config, split)
    return ds.map(lambda image, boxes, labels, crowd: (image, boxes, labels))


def _eval_example(serialized, config):
    example = reader.parse_example(serialized)
    features = to_uint8(resize(example[fields.IMAGE], config))
    labels = {key: example[key] for key in (fields.IMAGE_ID, fields.HEIGHT, fields.WIDTH, fields.BOXES,
                                            fields.LABELS, fields.DIFFICULT, fields.IS_CROWD, fields.AREA)}
    return features, labels


def eval_input_fn(data_dir, config, batch_size, split="val"):
    """Every record of `split` exactly once, in file order; the last batch may be smaller."""
    files = reader.shard_files(data_dir, split)
    ds = tf.data.TFRecordDataset(files)
    ds = ds.map(lambda s: _eval_example(s, config), num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.padded_batch(batch_size, drop_remainder=False)
    return ds.prefetch(AUTOTUNE)
