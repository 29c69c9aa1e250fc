"""Serving: a tf.Module whose signatures take raw images and return post-processed detections, and
`load_detector`, one Python callable for a SavedModel, a .tflite file or a training checkpoint.

Everything between the raw image and the detections runs in the graph, with the eval path's functions
(preprocessing/inputs.py resize, the model's own normalization layer, model/postprocess.py), so a
SavedModel's detections equal the checkpoint's through engine/evaluation.make_detect_fn on resize(image).

A SavedModel is called as TF Object Detection API clients call theirs (its TF2 inference tutorial):

  detect_fn = tf.saved_model.load(path)
  detect_fn(images)                                          # the object is callable
  detect_fn.signatures["serving_default"](input_tensor=images)
  detect_fn.signatures["serving_encoded"](encoded_images=jpeg_bytes)

Signatures (input names are the keyword names a loaded signature takes):

  serving_default(input_tensor: uint8 [B, H, W, 3])  any H, W > 0 and B > 0; RGB
  serving_encoded(encoded_images: string [B])        JPEG, PNG, GIF (first frame) or BMP bytes;
                                                     images of one batch may differ in size

Both (and the call) return the TF Object Detection API's output names and dtypes, so tools written
for its exported detectors read ours unchanged:

  detection_boxes    float32 [B, K, 4]  normalized [ymin, xmin, ymax, xmax] of the original image
  detection_scores   float32 [B, K]     descending, 0 in padding
  detection_classes  float32 [B, K]     label-map ids 1..C as floats (the OD API's dtype), 0 in padding
  num_detections     float32 [B]        valid rows per image (the OD API's dtype)

K = config.max_detections. Resizing warps to S x S (no letterbox), so normalized boxes of the S x S
input are normalized boxes of the original image.
"""

import os

import numpy as np
import tensorflow as tf

from dataset import atomic, fields
from dataset.voc import MAX_IMAGE_PIXELS
from engine import checkpoints
from model import postprocess
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
        self._anchors = tf.constant(anchors, tf.float32)      # [A, 4]
        self._config = config

    def _detect(self, resized):
        """float32 [B, S, S, 3] 0-255 RGB -> the output dict of the module docstring."""
        outputs = self.model(resized, training=False)   # the model normalizes (nets/ssd.py)
        detections = postprocess.postprocess(outputs[fields.CLS_LOGITS], outputs[fields.BOX_CODES],
                                             self._anchors, self._config)
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
            resized = inputs.resize(input_tensor, self._config)         # [B, S, S, 3] float32
        return self._detect(resized)

    # Saved with the module, so the loaded object is callable: tf.saved_model.load(path)(images).
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8, name=IMAGES_INPUT)])
    def __call__(self, input_tensor):
        """uint8 [B, H, W, 3] -> detections (the same graph as serving_default)."""
        return self.serve_images(input_tensor)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=ENCODED_INPUT)])
    def serve_encoded(self, encoded_images):
        """string [B] of encoded images (sizes may differ) -> detections."""
        size = self._config.image_size
        check = tf.debugging.assert_positive(tf.size(encoded_images),
                                             message="encoded_images: empty batch (batch size 0)")

        def decode_and_resize(encoded):
            # The converter's decompression-bomb cap (dataset/voc.py), from the JPEG header before decoding.
            pixels = tf.cond(tf.io.is_jpeg(encoded), lambda: tf.reduce_prod(tf.io.extract_jpeg_shape(encoded)[:2]),
                             lambda: tf.constant(0, tf.int32))
            with tf.control_dependencies([tf.debugging.assert_less_equal(
                    pixels, MAX_IMAGE_PIXELS, message=f"encoded image over the {MAX_IMAGE_PIXELS}-pixel cap")]):
                image = decode_image(encoded)
            with tf.control_dependencies([tf.debugging.assert_less_equal(
                    tf.shape(image)[0] * tf.shape(image)[1], MAX_IMAGE_PIXELS,
                    message=f"encoded image over the {MAX_IMAGE_PIXELS}-pixel cap")]):
                image = tf.identity(image)
            with tf.control_dependencies(_check_images(image[None])):
                return inputs.resize(image, self._config)                 # [S, S, 3] float32

        with tf.control_dependencies([check]):
            resized = tf.map_fn(decode_and_resize, encoded_images,
                                fn_output_signature=tf.TensorSpec([size, size, RGB_CHANNELS], tf.float32))
        return self._detect(resized)

    def signatures(self):
        return {SERVING_DEFAULT: self.serve_images.get_concrete_function(),
                SERVING_ENCODED: self.serve_encoded.get_concrete_function()}


def export(module, config, class_names, output_dir):
    """Writes `module` as a SavedModel plus config.json and label_map.pbtxt into `output_dir`.

    Written into a temporary folder beside `output_dir` and renamed into place, so an interrupted
    export never leaves a complete-looking half SavedModel. An existing `output_dir` is replaced only
    when it is itself an export (holds saved_model.pb); any other existing path is refused.
    """
    output_dir = os.path.abspath(output_dir)
    # Leftovers of a killed export recovered first, swapped in as a whole (dataset/atomic.py).
    replaceable = atomic.must_hold_one_of([SAVED_MODEL_FILENAME], "a SavedModel export")
    with atomic.staged_folder(output_dir, replaceable) as temp_dir:
        tf.saved_model.save(module, temp_dir, signatures=module.signatures())
        checkpoints.write(temp_dir, config, class_names)
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


class Detector:
    """A loaded detector as a plain Python callable (made by `load_detector`; see there)."""

    def __init__(self, kind, path, config, class_names, detect_one):
        self.kind = kind                      # "saved_model", "tflite" or "checkpoint"
        self.path = path                      # what was loaded (for a checkpoint: its ckpt-N prefix)
        self.config = config
        self.class_names = tuple(class_names)
        self._detect_one = detect_one         # uint8 [H, W, 3] -> dict of [K, ...] numpy arrays

    def class_name(self, class_id):
        """The label-map name of class id 1..C."""
        return self.class_names[int(class_id) - 1]

    def __call__(self, images):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[-1] != RGB_CHANNELS or (
                0 in images.shape):
            raise ValueError(f"detector input must be uint8 [H, W, 3] or [B, H, W, 3] RGB with no empty "
                             f"axis, got {images.dtype} {list(images.shape)}")
        if images.ndim == 3:
            return self._detect_one(images)
        rows = [self._detect_one(image) for image in images]
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

    def __repr__(self):
        return f"Detector({self.kind}, {self.path}, {self.config.name}, {len(self.class_names)} classes)"


def load_detector(path, num_threads=None):
    """A detector from `path`: a SavedModel folder (export_saved_model.py), a .tflite file
    (export_tflite.py; its label_map.pbtxt and config.json lie beside it), a training model_dir (its
    latest checkpoint) or a checkpoint prefix ckpt-N.

    Contract of the returned Detector `d`:
      d(image)   image uint8 numpy [H, W, 3] RGB, any H, W > 0 ->
                 {"detection_boxes":   float32 [K, 4] normalized [ymin, xmin, ymax, xmax] of the image,
                  "detection_scores":  float32 [K]    descending, 0 in padding,
                  "detection_classes": float32 [K]    label-map ids 1..C, 0 in padding,
                  "num_detections":    float32 []     the first num_detections rows are valid}
      d(images)  uint8 [B, H, W, 3] -> the same keys with a leading batch axis B
      d.class_names  C names, d.class_name(i) the name of id i (1..C); d.config, d.kind, d.path.
    K = config.max_detections (200 in every preset); scores go down to config.score_threshold
    (0.01), so filter by score for display. Every kind gives the same detections (float32 TFLite within
    1e-4; float16/int8 TFLite approximately). Not thread-safe: use one detector per thread.
    A wrong input raises ValueError; `num_threads` applies to TFLite interpreters only.
    """
    from engine import tflite_export

    path = os.fspath(path)
    if path.endswith(".tflite"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such .tflite file")
        config, class_names = checkpoints.read(os.path.dirname(os.path.abspath(path)))
        runner = tflite_export.TFLiteRunner(path, num_threads)
        return Detector("tflite", path, config, class_names, runner)
    if os.path.isfile(os.path.join(path, SAVED_MODEL_FILENAME)):
        loaded, config, class_names = load(path)

        def detect_saved(image):
            # `loaded` is captured too: the signature holds its variables only weakly.
            outputs = loaded.signatures[SERVING_DEFAULT](**{IMAGES_INPUT: tf.constant(image[None])})
            return {key: value.numpy()[0] for key, value in outputs.items()}
        return Detector("saved_model", path, config, class_names, detect_saved)
    if os.path.isdir(path) or tf.io.gfile.exists(path + ".index"):
        is_prefix = not os.path.isdir(path)
        module, config, class_names, checkpoint = from_checkpoint(
            model_dir=None if is_prefix else path, checkpoint_path=path if is_prefix else None)

        def detect_checkpoint(image):
            # The closure holds the module strongly (a tf.function method holds it weakly).
            return {key: value.numpy()[0] for key, value in module.serve_images(tf.constant(image[None])).items()}
        return Detector("checkpoint", checkpoint, config, class_names, detect_checkpoint)
    raise FileNotFoundError(f"{path}: not a .tflite file, a SavedModel folder, a model_dir or a checkpoint prefix")
