"""Serving: the one detector door (`load_detector` -> `Detector`) for every model kind, the SavedModel's
tf.Module (`DetectionModule`) and its export, and the one builder of a JSON detections record.

The door. `load_detector(path)` opens, by what `path` is (the dispatch in `load_detector`; one more
kind, e.g. an ONNX file, is one more opener there):

  a training model_dir     its latest checkpoint                kind "checkpoint"
  a checkpoint prefix      ckpt-N                               kind "checkpoint"
  a SavedModel folder      export_saved_model.py's              kind "saved_model"
  a .tflite file           export_tflite.py's (config.json and  kind "tflite"
                           label_map.pbtxt lie beside it)
  a .onnx file             export_onnx.py's, run by ONNX        kind "onnx"
                           Runtime (config and label map beside)

and every kind answers the same Python contract, with TRIMMED rows:

  detector(image)    uint8 numpy [H, W, 3] RGB, any H, W > 0 -> one `Detections`
  detector(images)   uint8 numpy [B, H, W, 3]                 -> a list of B `Detections`
                     (one model call for the batch where the kind takes batches: checkpoint and
                     SavedModel; TFLite and ONNX files are batch 1 and run the images one by one)

  Detections (frozen; N = the valid detections of that image: scores above config.score_threshold,
  N <= config.max_detections; filter further with .select(min_score, class_ids)):
    boxes    float32 [N, 4]  normalized [ymin, xmin, ymax, xmax] of the original image
    scores   float32 [N]     descending
    classes  int32   [N]     label-map ids 1..C

  detector.class_names (C names), detector.class_name(id), detector.config, detector.kind,
  detector.path (for a checkpoint: its ckpt-N prefix). A wrong input raises ValueError. Every kind
  gives the same detections (checkpoint and SavedModel within 1e-5; float32 ONNX and any-size
  float32 TFLite within 1e-4; a fixed-input float32 TFLite file within 1e-4 on S x S images, up to
  the uint8 rounding of the resized image on others; float16 and int8 files approximately). Safe to
  call from several threads: checkpoint, SavedModel and ONNX Runtime calls run concurrently, a TFLite
  file's (one interpreter) one at a time. `read_image` turns a file's bytes into the uint8 RGB input,
  or a BadImage naming the problem (pixel cap from the header).

`detections_record` turns one image's Detections into the JSON dict that detect_ssd.py's
detections.json and stream_ssd.py's JSON lines hold.

The SavedModel (export) keeps the TF Object Detection API's PADDED contract, for TF Serving and OD API
clients. Everything between the raw image and the detections runs in its graph, with the eval path's
functions (preprocessing/inputs.py resize, the model's own normalization layer, engine/inference.py
forward + post-processing), so its detections equal evaluation's on resize(image). It is called as
the OD API's TF2 inference tutorial calls theirs:

  detect_fn = tf.saved_model.load(path)
  detect_fn(images)                                          # the object is callable
  detect_fn.signatures["serving_default"](input_tensor=images)
  detect_fn.signatures["serving_encoded"](encoded_images=jpeg_bytes)

Signatures (input names are the keyword names a loaded signature takes):

  serving_default(input_tensor: uint8 [B, H, W, 3])  any H, W > 0 and B > 0; RGB
  serving_encoded(encoded_images: string [B])        JPEG, PNG, GIF (first frame) or BMP bytes;
                                                     images of one batch may differ in size

Both (and the call) return the OD API's output names and dtypes, so tools written for its exported
detectors read ours unchanged:

  detection_boxes    float32 [B, K, 4]  normalized [ymin, xmin, ymax, xmax] of the original image
  detection_scores   float32 [B, K]     descending, 0 in padding
  detection_classes  float32 [B, K]     label-map ids 1..C as floats (the OD API's dtype), 0 in padding
  num_detections     float32 [B]        valid rows per image (the OD API's dtype)

K = config.max_detections. Resizing warps to S x S (no letterbox), so normalized boxes of the S x S
input are normalized boxes of the original image.
"""

import dataclasses
import os
import threading

import numpy as np
import tensorflow as tf
from absl import logging

from dataset import atomic, fields
from dataset.voc import MAX_IMAGE_PIXELS
from dataset.voc_boxes import normalized_to_voc_pixels
from engine import checkpoints, inference
from preprocessing import inputs

SERVING_DEFAULT = "serving_default"
SERVING_ENCODED = "serving_encoded"
IMAGES_INPUT = "input_tensor"   # the OD API's name
ENCODED_INPUT = "encoded_images"
RGB_CHANNELS = 3
SAVED_MODEL_FILENAME = "saved_model.pb"


def decode_image(encoded):
    """Encoded image bytes (string []) -> uint8 [H, W, 3] RGB, decoded as the eval records are.

    JPEG goes through decode_jpeg with INTEGER_ACCURATE (dataset/reader.py's choice: it matches a
    Pillow decode); decode_image cannot take a dct_method, so it handles only the other formats.
    A string that is no image raises InvalidArgumentError ("Unknown image file format ...").
    """
    def jpeg():
        return tf.io.decode_jpeg(encoded, channels=RGB_CHANNELS, dct_method="INTEGER_ACCURATE")

    def other():
        return tf.io.decode_image(encoded, channels=RGB_CHANNELS, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    image.set_shape([None, None, RGB_CHANNELS])
    return image


class BadImage(ValueError):
    """Bytes that are no usable image; the message names the problem (the caller adds the file name)."""


def read_image(data, max_pixels=MAX_IMAGE_PIXELS):
    """Encoded image bytes -> uint8 [H, W, 3] RGB as the model should see it, or BadImage naming why not.

    What detect_ssd.py (and any caller of the door with files) does with each kind of input:
    - not an image (zero bytes, text named .jpg, another format): BadImage from the header;
    - over `max_pixels` (the converter's decompression-bomb cap, dataset/voc.py), read from the header
      before anything is decoded: BadImage (20,000 x 20,000 RGB would take 1.2 GB decoded);
    - truncated or corrupt data: BadImage (the whole file is decoded once by Pillow to find out);
    - an EXIF rotation is applied and CMYK converted to RGB (Pillow's pixels), as the converter does,
      since boxes refer to the upright image a viewer shows;
    - everything else (RGB or grey JPEG, progressive JPEG, 8- or 16-bit PNG, the first frame of an
      animated GIF, BMP, 1 x 1) is decoded by `decode_image`, the eval records' decode, so a file's
      detections equal those of the same image in a record.
    """
    import io
    import re
    import warnings

    from PIL import Image, ImageOps

    over_cap = "{} pixels is over the %s-pixel cap (read from the header; not decoded)" % f"{max_pixels:,}"
    try:
        with warnings.catch_warnings():   # Pillow's own, milder bomb warning: refused below anyway
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=["JPEG", "PNG", "GIF", "BMP"])
    except Image.DecompressionBombError as e:   # Pillow refuses over 2 x its own limit, from the header too
        declared = re.search(r"\((\d+) pixels\)", str(e))
        raise BadImage(over_cap.format(f"{int(declared.group(1)):,}" if declared else "its")) from None
    except Image.UnidentifiedImageError:
        raise BadImage(f"not a JPEG, PNG, GIF or BMP image ({len(data)} bytes"
                       + (f", starting {data[:12]!r})" if data else ")")) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"not a readable JPEG, PNG, GIF or BMP image ({e})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadImage(over_cap.format(f"{width} x {height}"))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(f"corrupt or truncated {image.format} data ({e})") from None
    rotated = image.getexif().get(0x0112, 1) not in (0, 1)   # EXIF Orientation
    if rotated or image.mode == "CMYK":
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    try:
        return decode_image(tf.constant(data)).numpy()
    except tf.errors.InvalidArgumentError as e:
        raise BadImage(f"cannot decode this {image.format} ({e.message.split('}} ')[-1]})") from None


def header_pixels(encoded):
    """Width x height (int64 []) that encoded image bytes (string []) declare in their header, read
    without decoding: JPEG (extract_jpeg_shape), PNG (IHDR, big-endian at byte 16), GIF (logical
    screen, little-endian at byte 6), BMP (info header, little-endian int32 at byte 18; a top-down
    BMP's height is negative); 0 for anything else (its decode fails with its own message)."""
    padded = tf.strings.join([encoded, "\0" * 26])   # every field below lies inside

    def unsigned(offset, length, big_endian):
        digits = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, offset, length), tf.uint8), tf.int64)
        weights = tf.constant([256 ** i for i in range(length)], tf.int64)
        return tf.reduce_sum((digits[::-1] if big_endian else digits) * weights)

    def jpeg():
        return tf.reduce_prod(tf.cast(tf.io.extract_jpeg_shape(encoded)[:2], tf.int64))

    def other():
        magic = tf.strings.substr(padded, 0, 4)
        png = unsigned(16, 4, True) * unsigned(20, 4, True)
        gif = unsigned(6, 2, False) * unsigned(8, 2, False)
        bmp_height = unsigned(22, 4, False)
        bmp_height = tf.where(bmp_height >= 2 ** 31, 2 ** 32 - bmp_height, bmp_height)
        bmp = unsigned(18, 4, False) * bmp_height
        return tf.where(tf.equal(magic, b"\x89PNG"), png,
                        tf.where(tf.strings.regex_full_match(magic, "GIF8"), gif,
                                 tf.where(tf.strings.substr(magic, 0, 2) == "BM", bmp, tf.constant(0, tf.int64))))

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _check_images(images):
    """Run-time checks of uint8 images [B, H, W, C] with readable messages: rank 4, C = 3, B, H, W > 0.

    A loaded signature checks only the dtype of its TensorSpec, not the rank, and an assert on the
    rank of a tensor whose static rank is 4 would be folded away: EnsureShape checks at run time.
    """
    images = tf.ensure_shape(images, [None, None, None, None],
                             name="images_must_be_batch_height_width_channels")
    shape = tf.shape(images)
    return [
        tf.debugging.assert_equal(shape[-1], RGB_CHANNELS,
                                  message="images must be RGB: [batch, height, width, 3] uint8 "
                                          "(got another number of channels; convert grey/RGBA first)"),
        tf.debugging.assert_positive(shape[0], message="images: empty batch (batch size 0)"),
        tf.debugging.assert_positive(shape[1] * shape[2],
                                     message="images: empty image (height or width is 0)"),
    ]


class DetectionModule(tf.Module):
    """Raw images in, post-processed detections out (module docstring); `model` is nets.ssd.build's."""

    def __init__(self, model, anchors, config):
        super().__init__(name="ssd_detector")
        self.model = model
        self.anchors = tf.constant(anchors, tf.float32)       # [A, 4]
        self.config = config

    def _detect(self, resized):
        """float32 [B, S, S, 3] 0-255 RGB -> the output dict of the module docstring."""
        detections = inference.detect(self.model, resized, self.anchors, self.config)
        return {
            fields.DETECTION_BOXES: detections[fields.DETECTION_BOXES],
            fields.DETECTION_SCORES: detections[fields.DETECTION_SCORES],
            fields.DETECTION_CLASSES: tf.cast(detections[fields.DETECTION_CLASSES], tf.float32),
            fields.NUM_DETECTIONS: tf.cast(detections[fields.NUM_DETECTIONS], tf.float32),
        }

    # Channels are left open in the spec so a grey or RGBA batch gets the clear message of
    # _check_images instead of a bare shape mismatch.
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8, name=IMAGES_INPUT)])
    def serve_images(self, input_tensor):
        """uint8 [B, H, W, 3] -> detections."""
        with tf.control_dependencies(_check_images(input_tensor)):
            resized = inputs.resize(input_tensor, self.config)         # [B, S, S, 3] float32
        return self._detect(resized)

    # Saved with the module, so the loaded object is callable: tf.saved_model.load(path)(images).
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8, name=IMAGES_INPUT)])
    def __call__(self, input_tensor):
        """uint8 [B, H, W, 3] -> detections (the same graph as serving_default)."""
        return self.serve_images(input_tensor)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=ENCODED_INPUT)])
    def serve_encoded(self, encoded_images):
        """string [B] of encoded images (sizes may differ) -> detections."""
        size = self.config.image_size
        check = tf.debugging.assert_positive(tf.size(encoded_images),
                                             message="encoded_images: empty batch (batch size 0)")

        def decode_and_resize(encoded):
            # The converter's decompression-bomb cap (dataset/voc.py), from the header before decoding.
            with tf.control_dependencies([tf.debugging.assert_less_equal(
                    header_pixels(encoded), tf.constant(MAX_IMAGE_PIXELS, tf.int64),
                    message=f"encoded image over the {MAX_IMAGE_PIXELS}-pixel cap (its header)")]):
                image = decode_image(encoded)
            with tf.control_dependencies([tf.debugging.assert_less_equal(
                    tf.shape(image)[0] * tf.shape(image)[1], MAX_IMAGE_PIXELS,
                    message=f"encoded image over the {MAX_IMAGE_PIXELS}-pixel cap")]):
                image = tf.identity(image)
            with tf.control_dependencies(_check_images(image[None])):
                return inputs.resize(image, self.config)                 # [S, S, 3] float32

        with tf.control_dependencies([check]):
            resized = tf.map_fn(decode_and_resize, encoded_images,
                                fn_output_signature=tf.TensorSpec([size, size, RGB_CHANNELS], tf.float32))
        return self._detect(resized)

    def signatures(self):
        return {SERVING_DEFAULT: self.serve_images.get_concrete_function(),
                SERVING_ENCODED: self.serve_encoded.get_concrete_function()}


def export(module, class_names, output_dir):
    """Writes `module` (a DetectionModule) as a SavedModel plus its config.json and label_map.pbtxt into
    `output_dir` (engine/tflite_export.export takes the same arguments).

    Written into a temporary folder beside `output_dir` and renamed into place, so an interrupted
    export never leaves a complete-looking half SavedModel. An existing `output_dir` is replaced only
    when it is itself an export (holds saved_model.pb); any other existing path is refused.
    """
    output_dir = os.path.abspath(output_dir)
    # Leftovers of a killed export recovered first, swapped in as a whole (dataset/atomic.py).
    replaceable = atomic.must_hold_one_of([SAVED_MODEL_FILENAME], "a SavedModel export")
    with atomic.staged_folder(output_dir, replaceable) as temp_dir:
        tf.saved_model.save(module, temp_dir, signatures=module.signatures())
        checkpoints.write(temp_dir, module.config, class_names)
    return output_dir


def from_checkpoint(model_dir=None, checkpoint_path=None, dtype_policy="float32"):
    """(DetectionModule, config, class_names, checkpoint path) for --checkpoint_path or the latest in
    --model_dir, with the model built under the Keras `dtype_policy` (e.g. "mixed_bfloat16")."""
    from model import anchors as anchors_lib
    from nets import ssd

    checkpoint = checkpoints.resolve_checkpoint(model_dir, checkpoint_path)
    config, class_names = checkpoints.read(checkpoint if checkpoint_path else model_dir)
    model = ssd.build(config, dtype_policy)
    checkpoints.restore_model(model, checkpoint)
    return DetectionModule(model, anchors_lib.generate(config), config), config, class_names, checkpoint


def load(saved_model_dir):
    """(loaded SavedModel, config, class_names) of an export; call loaded.signatures[SERVING_DEFAULT].

    Keep the loaded object alive while using its signatures: they hold its variables only weakly.
    """
    config, class_names = checkpoints.read(saved_model_dir)
    return tf.saved_model.load(saved_model_dir), config, class_names


@dataclasses.dataclass(frozen=True, eq=False)
class Detections:
    """One image's valid detections (the door's contract, module docstring): boxes float32 [N, 4]
    normalized yxyx of the original image, scores float32 [N] descending, classes int32 [N] ids 1..C."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @classmethod
    def from_padded(cls, outputs, index):
        """Row `index` of padded outputs (numpy dict with the SavedModel's keys and a batch axis),
        trimmed to its num_detections rows."""
        n = int(outputs[fields.NUM_DETECTIONS][index])
        return cls(boxes=np.asarray(outputs[fields.DETECTION_BOXES][index, :n], np.float32),
                   scores=np.asarray(outputs[fields.DETECTION_SCORES][index, :n], np.float32),
                   classes=np.asarray(outputs[fields.DETECTION_CLASSES][index, :n]).astype(np.int32))

    def __len__(self):
        return len(self.scores)

    def select(self, min_score=0.0, class_ids=None):
        """The rows scoring >= min_score whose class is in `class_ids` (all classes when None), in order."""
        keep = self.scores >= min_score
        if class_ids is not None:
            keep &= np.isin(self.classes, list(class_ids))
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])


class Detector:
    """A loaded detector of any kind behind the one contract of the module docstring.

    Opened by `load_detector`. `run_batch` maps uint8 numpy [B, H, W, 3] to the padded outputs (numpy,
    the SavedModel's keys, batch axis B); `runtime` is the object it runs (a DetectionModule, a loaded
    SavedModel, a TFLiteRunner, an ONNXRunner), kept for inspection (e.g. a TFLite file's ops).
    """

    def __init__(self, kind, path, config, class_names, run_batch, runtime=None, thread_safe=True):
        self.kind = kind                      # "checkpoint", "saved_model", "tflite" or "onnx"
        self.path = path                      # what was loaded (for a checkpoint: its ckpt-N prefix)
        self.config = config
        self.class_names = tuple(class_names)
        self.runtime = runtime
        self._run_batch = run_batch
        # A runtime that is not thread-safe (a TFLite interpreter's tensors are shared) runs one call at
        # a time; tf.function and SavedModel signatures take concurrent calls.
        self._lock = None if thread_safe else threading.Lock()

    def class_name(self, class_id):
        """The label-map name of class id 1..C."""
        return self.class_names[int(class_id) - 1]

    def __call__(self, images):
        """uint8 [H, W, 3] -> Detections; uint8 [B, H, W, 3] -> a list of B Detections."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[-1] != RGB_CHANNELS or (
                0 in images.shape):
            raise ValueError(f"detector input must be uint8 [H, W, 3] or [B, H, W, 3] RGB with no empty "
                             f"axis, got {images.dtype} {list(images.shape)}")
        batch = images if images.ndim == 4 else images[None]
        if self._lock is None:
            outputs = self._run_batch(batch)
        else:
            with self._lock:
                outputs = self._run_batch(batch)
        found = [Detections.from_padded(outputs, i) for i in range(len(batch))]
        return found if images.ndim == 4 else found[0]

    def __repr__(self):
        name = getattr(self.config, "name", None)
        return f"Detector({self.kind}, {self.path}, {name}, {len(self.class_names)} classes)"


def _open_file(kind, path, runner, thread_safe=True):
    """A Detector over a single-image exported file (.tflite, .onnx) whose model_dir files sit beside it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such .{kind} file")
    config, class_names = checkpoints.read(os.path.dirname(os.path.abspath(path)))
    runner = runner(path)

    def run_batch(images):   # the file takes batch 1
        rows = [runner(image) for image in images]
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    return Detector(kind, path, config, class_names, run_batch, runner, thread_safe=thread_safe)


def _open_tflite(path, num_threads):
    from engine import tflite_export
    return _open_file("tflite", path, lambda p: tflite_export.TFLiteRunner(p, num_threads), thread_safe=False)


def _open_onnx(path, num_threads):
    from engine import onnx_export
    return _open_file("onnx", path, lambda p: onnx_export.ONNXRunner(p, num_threads))


def _open_saved_model(path):
    loaded, config, class_names = load(path)

    def run_batch(images):
        # Looked up through `loaded` at each call: the signature holds its variables only weakly.
        outputs = loaded.signatures[SERVING_DEFAULT](**{IMAGES_INPUT: tf.constant(images)})
        return {key: value.numpy() for key, value in outputs.items()}
    return Detector("saved_model", path, config, class_names, run_batch, loaded)


def _open_checkpoint(path, dtype_policy):
    is_prefix = not os.path.isdir(path)
    module, config, class_names, checkpoint = from_checkpoint(
        model_dir=None if is_prefix else path, checkpoint_path=path if is_prefix else None,
        dtype_policy=dtype_policy)

    def run_batch(images):   # the closure holds the module, which its tf.function method holds weakly
        return {key: value.numpy() for key, value in module.serve_images(tf.constant(images)).items()}
    return Detector("checkpoint", checkpoint, config, class_names, run_batch, module)


def load_detector(path, num_threads=None, dtype_policy="float32"):
    """The Detector of `path` (module docstring: the kinds and the contract). `num_threads` applies to
    TFLite interpreters and ONNX Runtime sessions only, `dtype_policy` (a Keras policy, e.g.
    "mixed_bfloat16") to checkpoints only. Raises FileNotFoundError when `path` is none of the kinds.
    """
    path = os.fspath(path)
    # The dispatch: one opener per kind, told apart by the file name or the folder's content.
    if path.endswith(".tflite"):
        return _open_tflite(path, num_threads)
    if path.endswith(".onnx"):
        return _open_onnx(path, num_threads)
    if os.path.isfile(os.path.join(path, SAVED_MODEL_FILENAME)):
        return _open_saved_model(path)
    if os.path.isdir(path) or tf.io.gfile.exists(path + ".index"):
        return _open_checkpoint(path, dtype_policy)
    raise FileNotFoundError(f"{path}: not a .tflite file, a .onnx file, a SavedModel folder, a model_dir or a "
                            f"checkpoint prefix")


def detections_record(detections, class_names, height, width, min_score=0.0, class_ids=None):
    """One image's JSON-ready dict, the form of detect_ssd.py's detections.json and stream_ssd.py's lines:

      {"width": W, "height": H,
       "detections": [{"class_id": 1..C, "class_name": str, "score": float,
                       "box": [ymin, xmin, ymax, xmax] normalized,
                       "box_pixels": [xmin, ymin, xmax, ymax] VOC 1-based inclusive pixels}, ...]}

    listing the rows of `detections` (Detections) scoring >= min_score whose class is in `class_ids`
    (all when None), by descending score. Callers add their own keys (file, frame, ...).
    """
    shown = detections.select(min_score, class_ids)
    pixels = normalized_to_voc_pixels(shown.boxes, width, height)
    return {"width": int(width), "height": int(height),
            "detections": [{"class_id": int(c), "class_name": class_names[int(c) - 1], "score": float(s),
                            "box": [float(v) for v in box], "box_pixels": [float(v) for v in pixel_box]}
                           for c, s, box, pixel_box in zip(shown.classes, shown.scores, shown.boxes, pixels)]}


def log_evaluations(sources, data_dir, split):
    """Evaluates each of `sources` ({name: a path the detector door opens}) on `split` and logs its mAPs:
    what export_tflite.py and export_onnx.py --evaluate_split print for the checkpoint and its exports."""
    from engine import tflite_export
    for name, path in sources.items():
        results = tflite_export.evaluate_detector(load_detector(path), data_dir, split)
        logging.info("%s on %s (%d images): VOC07 mAP %.4f, VOC2010+ mAP %.4f", name, split,
                     results["num_images"], results["voc07"]["mAP"] or 0.0, results["voc12"]["mAP"] or 0.0)
