"""TFLite export: the serving graph (resize + normalize + network + post-processing) as one .tflite
file per format, run by the standard interpreter with no custom or TF (Flex) ops.

Formats:
  float32   weights and activations float32; detections equal the SavedModel's (tests/test_tflite.py)
  float16   weights stored float16 (half the file), computed in float32 after dequantization
  int8      full integer post-training quantization of the network: weights and activations int8
            (every conv, pooling, MobileNetV3's squeeze-excitation and residual adds), calibrated on
            uint8 images (e.g. N records of the training split); the heads' outputs are dequantized
            where they are concatenated, and the post-processing and the normalization layers (input
            scaling, SSD300's L2 norm) run in float32 (INT8_FLOAT_LAYERS, chosen by node name), as does
            MobileNetV3's hard-swish (INT8_FLOAT_OPS: XNNPACK has no int8 kernel for it), so the network
            runs as one partition of LiteRT's XNNPACK delegate. Quantizing the post-processing (the
            converter's default) rounds softmax scores to steps of 1/256: ties everywhere, and on the
            sample the VOC07 mAP of a trained model fell from 0.178 to 0.095; with it in float, 0.182.

Graph contract (every format):
  input   input_tensor       uint8   [1, S, S, 3]  RGB, S fixed: the preset's size unless input_size says
                                                   otherwise (the graph resizes S to the preset's size);
                                     uint8   [1, H, W, 3]  with dynamic_input: any H, W (the interpreter
                                                   resizes the input tensor; our own Detector only)
  outputs detection_boxes    float32 [1, K, 4]     normalized yxyx of the original image, clipped
          detection_scores   float32 [1, K]        descending, 0 in padding
          detection_classes  float32 [1, K]        label-map ids 1..C, 0 in padding
          num_detections     float32 [1]
with the SavedModel's names, dtypes and K (engine/serving.py), read by signature name. In Python,
engine.serving.load_detector(path) opens a file behind the one detector contract (trimmed rows); for a
fixed-input file it first resizes the image to S x S (TF bilinear, rounded to uint8), so its
detections equal the SavedModel's exactly on S x S images and approximately on others.

Fixed-input files carry TFLite Model Metadata and the label file (engine/tflite_metadata.py), so
MediaPipe's ObjectDetector and the TFLite task libraries load them as they are; MediaPipe reads H and W
from the input's static shape (an any-size input ran at 1 x 1 there, silently: every score equal), so
dynamic-input files get no metadata and MediaPipe refuses them with a message instead. Every format
takes uint8 input (MediaPipe feeds uint8 0-255 and needs no NormalizationOptions for it); no
float-input file is written.

Post-processing is model/postprocess.py's algorithm written with TFLite built-ins only, batch 1:
softmax, per class the top config.max_detections_per_class anchors (TOPK_V2), NON_MAX_SUPPRESSION_V5
per class (strictly-greater score threshold and IoU suppression, as tf.image.combined_non_max_suppression),
then the config.max_detections best survivors over all classes. Boxes of zero area (clipped flat onto
an image edge) enter the NMS op as stand-ins, as its TFLite kernel would select them over and over, and
exact score ties follow one rule (postprocess_batch1). It is the one graph that does not call
engine/inference.detect: model/postprocess.py's combined_non_max_suppression has no TFLite built-in
kernel (it would need the Flex delegate), so the same steps are written here with ops that have one.
The OD API's TFLite_Detection_PostProcess custom op was not used either: it has no per-class
pre-selection before NMS (Caffe `top_k: 400`), so its detections differ from the SavedModel's wherever
NMS would reach past the 400th candidate of a class.

Keras 3 variables are not frozen into constants by the converter (they stay READ_VARIABLE ops, which
the interpreter cannot initialise: every output is NaN); the module therefore tracks the underlying
tf.Variables themselves, which the converter does freeze.
"""

import itertools
import os
import re
import time

import numpy as np
import tensorflow as tf
from absl import logging

from dataset import atomic, fields
from engine import checkpoints, tflite_metadata
from model import box_coder
from nets import ssd, vgg16
from preprocessing import inputs

INPUT_NAME = "input_tensor"
FORMATS = ("float32", "float16", "int8")
OUTPUT_KEYS = (fields.DETECTION_BOXES, fields.DETECTION_SCORES, fields.DETECTION_CLASSES,
               fields.NUM_DETECTIONS)
# Nodes kept in float32 in the int8 file, chosen by name (_float_nodes), not by op type: everything
# from the heads' concatenation on (the post-processing runs under POSTPROCESS_SCOPE) and the network's
# own elementwise normalization layers (input mean/std, SSD300's L2 norm). Keeping op TYPES in float
# (MUL, ADD, ...) also kept MobileNetV3's squeeze-excitation products and residual sums in float: 26
# XNNPACK fragments between QUANTIZE/DEQUANTIZE pieces, every int8 conv on TFLite's own kernels, 5x
# slower than the float32 file (docs/performance.md).
INT8_FLOAT_LAYERS = (ssd.NORMALIZATION_LAYER, vgg16.CONV4_3_NORM, "mbox_conf", "mbox_loc")
# Kept in float by op type. TOPK_V2, UNPACK: the quantizer does not match ops of several outputs by any of
# their names; they occur only in the post-processing. HARD_SWISH: LiteRT's XNNPACK delegate takes only
# float hard-swish (its VisitHardSwishNode checks for a float tensor), so each int8 one ran on TFLite's own
# kernel and cut the MobileNetV3 graph into 25 XNNPACK partitions (SSDLite int8 0.037 s against float32's
# 0.020 s); in float, between a DEQUANTIZE and a QUANTIZE that XNNPACK also runs, the network is one
# partition again (docs/performance.md).
INT8_FLOAT_OPS = ("TOPK_V2", "UNPACK", "HARD_SWISH")
POSTPROCESS_SCOPE = "postprocess"
_INVALID_SCORE = -1.0   # marks dropped candidates; every kept score is > config.score_threshold >= 0


def tflite_filename(fmt):
    return f"model_{fmt}.tflite"


def postprocess_batch1(cls_logits, box_codes, anchors, config):
    """model/postprocess.py's detections for one image, with TFLite built-in ops only.

    cls_logits [1, A, C+1], box_codes [1, A, 4], anchors [A, 4] -> the module docstring's outputs.

    Per class, the top-k candidates (TOPK_V2: score descending, the lower anchor index first among
    equal scores) go through NON_MAX_SUPPRESSION_V5 with two guards for TFLite's kernel:
      - a box of zero area (a box clipped flat onto an image edge) enters NMS as a stand-in: a unit
        square of its own far outside the image. TFLite's kernel pushes every box it selects back onto
        its queue and drops it the next time only because its IoU with itself is 1; a flat box has
        IoU 0 with everything, itself included, so TFLite selected it again and again, filling its
        class with one box (docs/deployment.md). The stand-in has IoU 1 with itself and 0 with every
        other box, which is what a flat box has in every NMS that is right (TF's and ONNX Runtime's
        kernels: IoU 0 by rule; torchvision's nms: 0/0 is NaN): it never suppresses and is never
        suppressed. The detection keeps the flat box itself.
      - NMS is fed the candidates' ranks (k, k-1, ..., 1), not their scores: TFLite's queue orders
        equal scores arbitrarily; with ranks, a tie between overlapping boxes keeps the lower
        anchor index, as a stable sort does (torchvision's nms).
    The survivors' own scores are then ranked over all classes (TOPK_V2 again), so exact score ties
    come out by class, then anchor index.
    """
    boxes = box_coder.decode(box_codes[0], anchors, config.variances)                # [A, 4]
    if config.clip_boxes_before_nms:
        boxes = tf.clip_by_value(boxes, 0.0, 1.0)
    scores = tf.nn.softmax(tf.cast(cls_logits[0], tf.float32), axis=-1)[:, fields.BACKGROUND_CLASS + 1:]
    k = min(config.max_detections_per_class, int(anchors.shape[0]))
    class_scores, anchor_index = tf.math.top_k(tf.transpose(scores), k)             # [C, k]
    positions = tf.range(k)
    ranks = tf.cast(k - positions, tf.float32)                                        # [k] k..1
    # Position p's stand-in: [1e4 + 2p, 0, 1e4 + 2p + 1, 1] (exact in float32), apart from each other
    # and from every box: clipped boxes lie in [0, 1], and unclipped ones (Caffe's mode) reach 1e4
    # only from codes no network puts out.
    low = 1e4 + 2.0 * tf.cast(positions, tf.float32)
    stand_ins = tf.stack([low, tf.zeros([k]), low + 1.0, tf.ones([k])], axis=1)      # [k, 4]
    kept_scores, kept_boxes, kept_classes = [], [], []
    for c in range(config.num_classes):   # unrolled: C NMS ops, no WHILE loop in the graph
        candidates = tf.gather(boxes, anchor_index[c])                                # [k, 4]
        ymin, xmin, ymax, xmax = tf.unstack(candidates, axis=1)
        # Area as the NMS kernels compute it (corners in either order); 1 positive, 0 flat.
        positive = tf.cast(tf.abs(ymax - ymin) * tf.abs(xmax - xmin) > 0.0, tf.float32)[:, None]
        passing = class_scores[c] > config.score_threshold                            # [k]
        # Blended by arithmetic, not tf.where: a SELECT_V2 here made the int8 quantizer put a
        # QUANTIZE/DEQUANTIZE pair on the softmax output (every score rounded to a step of 1/256).
        selected, _, count = tf.raw_ops.NonMaxSuppressionV5(
            boxes=candidates * positive + stand_ins * (1.0 - positive),
            scores=tf.where(passing, ranks, _INVALID_SCORE), max_output_size=k,
            iou_threshold=config.nms_iou_threshold, score_threshold=0.0, soft_nms_sigma=0.0,
            pad_to_max_output_size=True)
        valid = tf.cast(positions < count, tf.float32)                                # [k]
        kept_scores.append(tf.gather(class_scores[c], selected) * valid + (valid - 1.0))  # -1 in padding
        kept_boxes.append(tf.gather(candidates, selected))
        kept_classes.append(tf.fill([k], float(c + 1)))
    top_scores, top_index = tf.math.top_k(tf.concat(kept_scores, 0), config.max_detections)  # [K]
    valid = tf.cast(top_scores >= 0.0, tf.float32)                                    # [K]
    top_boxes = tf.clip_by_value(tf.gather(tf.concat(kept_boxes, 0), top_index), 0.0, 1.0)
    return {
        fields.DETECTION_BOXES: (top_boxes * valid[:, None])[None],
        fields.DETECTION_SCORES: (top_scores * valid)[None],
        fields.DETECTION_CLASSES: (tf.gather(tf.concat(kept_classes, 0), top_index) * valid)[None],
        fields.NUM_DETECTIONS: tf.reduce_sum(valid)[None],
    }


class TFLiteGraph(tf.Module):
    """The serving graph for the converter: uint8 [1, S, S, 3] (S = input_size), or [1, H, W, 3] when
    input_size is None, -> detections (module docstring)."""

    def __init__(self, model, anchors, config, input_size=None):
        super().__init__(name="ssd_tflite")
        # The raw tf.Variables (see the module docstring); the Keras model is captured, not tracked.
        self.weights = [v if isinstance(v, tf.Variable) else v.value for v in model.variables]
        # Made a constant inside the function: a tensor captured from outside would stay an input of
        # the graph for tf2onnx (engine/onnx_export.py), which freezes variables but not captures.
        anchors = np.asarray(anchors, np.float32)

        @tf.function(input_signature=[tf.TensorSpec([1, input_size, input_size, 3], tf.uint8, name=INPUT_NAME)])
        def serve(input_tensor):
            # ResizeBilinear has no uint8-input TFLite kernel; on float input its result is the same.
            resized = tf.cast(input_tensor, tf.float32)
            if input_size != config.image_size:   # bilinear to the same size is the identity: no op
                resized = inputs.resize(resized, config)                              # [1, S, S, 3]
            outputs = model(resized, training=False)   # the model normalizes (nets/ssd.py)
            with tf.name_scope(POSTPROCESS_SCOPE):   # the int8 file keeps it in float (_float_nodes)
                return postprocess_batch1(outputs[fields.CLS_LOGITS], outputs[fields.BOX_CODES],
                                          tf.constant(anchors), config)
        self.serve = serve


def convert(model, anchors, config, fmt, calibration_images=None, input_size=None):
    """The .tflite bytes of `fmt` (FORMATS), input uint8 [1, S, S, 3] for S = input_size, any size when
    None. int8 needs `calibration_images`: an iterable of uint8 [H, W, 3] arrays (re-iterable; each one
    is one calibration step; resized to S x S for a fixed input)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown TFLite format {fmt!r}; known: {', '.join(FORMATS)}")
    graph = TFLiteGraph(model, anchors, config, input_size)
    if input_size and calibration_images is not None:
        calibration_images = [resize_uint8(image, input_size) for image in calibration_images]
    converter = _float_converter(graph)
    if fmt == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "int8":
        if calibration_images is None:
            raise ValueError("int8 export needs calibration images (e.g. --num_calibration_records)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _calibration_steps(calibration_images)
        # Int8 kernels everywhere they exist; float built-ins (the NMS ops) where they do not.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
        # The quantization debugger is TF's public way to keep chosen ops in float (selective
        # quantization); its debug dataset is not run for the model it returns.
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: _calibration_steps(itertools.islice(calibration_images, 1)),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=list(INT8_FLOAT_OPS), denylisted_nodes=_float_nodes(_float_converter(graph).convert())))
        return debugger.get_nondebug_quantized_model()
    return converter.convert()


def _float_converter(graph):
    return tf.lite.TFLiteConverter.from_concrete_functions([graph.serve.get_concrete_function()], graph)


def _float_nodes(float_model):
    """The output tensor names, in the float32 conversion of the same graph, of the nodes the int8 file
    keeps in float (INT8_FLOAT_LAYERS): the quantizer matches the calibrated model's names, which are the
    same conversion's."""
    interpreter = tf.lite.Interpreter(model_content=float_model)
    float_layer = re.compile(r"/(%s)(_\d+)?/" % "|".join(map(re.escape, INT8_FLOAT_LAYERS)))
    outputs = {detail["index"] for detail in interpreter.get_output_details()}
    names = []
    for op in interpreter._get_ops_details():
        op_names = [interpreter._get_tensor_details(index, 0)["name"] for index in op["outputs"]]
        if (outputs.intersection(op["outputs"]) or any(name.startswith(POSTPROCESS_SCOPE + "/") for name in op_names)
                or any(float_layer.search(name) for name in op_names)):
            names += op_names
    return names


def _calibration_steps(images):
    start = time.time()
    count = 0
    for count, image in enumerate(images, 1):
        yield {INPUT_NAME: np.asarray(image, np.uint8)[None]}
        logging.log_every_n_seconds(logging.INFO, "int8 calibration: %d images (%.1f images/s)", 10, count,
                                    count / max(time.time() - start, 1e-9))
    logging.info("int8 calibration: %d images in %.1f s", count, time.time() - start)


def calibration_images(data_dir, split, num_records):
    """The first `num_records` decoded images (uint8 [H, W, 3]) of `split`, as a list."""
    from dataset import reader

    images = [example[fields.IMAGE].numpy() for example in reader.read_split(data_dir, split).take(num_records)]
    if not images:
        raise ValueError(f"no records in the {split} split of {data_dir} to calibrate int8 on")
    return images


def resize_uint8(image, size):
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: TF bilinear (preprocessing/inputs.py's), rounded."""
    image = np.asarray(image)
    if image.shape[:2] == (size, size):
        return image
    resized = tf.image.resize(image, [size, size], method=tf.image.ResizeMethod.BILINEAR)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8).numpy()


def export(module, class_names, output_dir, formats=FORMATS, calibration=None, input_size=None,
           dynamic_input=False):
    """Writes model_<format>.tflite of `module` (an engine.serving.DetectionModule, as
    engine.serving.export takes) for each format plus config.json and label_map.pbtxt into
    `output_dir`; returns {format: path}. `calibration`: convert's calibration_images (int8).
    The input is uint8 [1, S, S, 3] with S = input_size (default: the preset's image size) and the
    files carry TFLite Metadata with the label file (engine/tflite_metadata.py); dynamic_input=True
    writes any-size [1, H, W, 3] files without metadata instead.

    Written into a temporary folder beside `output_dir` and renamed into place; an existing
    `output_dir` is replaced only when it is itself a TFLite export (holds a model_*.tflite).
    """
    config = module.config
    if dynamic_input and input_size:
        raise ValueError("input_size fixes the input; it cannot be combined with dynamic_input")
    input_size = None if dynamic_input else (input_size or config.image_size)
    if input_size is not None and input_size <= 0:
        raise ValueError(f"input_size must be positive, got {input_size}")
    output_dir = os.path.abspath(output_dir)
    # Leftovers of a killed export recovered first, swapped in as a whole (dataset/atomic.py).
    replaceable = atomic.must_hold_one_of([tflite_filename(f) for f in FORMATS], "a TFLite export")
    with atomic.staged_folder(output_dir, replaceable) as temp_dir:
        for fmt in formats:
            start = time.time()
            content = convert(module.model, module.anchors, config, fmt, calibration, input_size)
            if input_size:
                content = tflite_metadata.populate(
                    content, class_names, name=f"SSD {config.name} ({fmt})",
                    description=f"{config.name} detector of {len(class_names)} classes, {fmt}, "
                                f"uint8 RGB input {input_size}x{input_size}; exported by export_tflite.py")
            with open(os.path.join(temp_dir, tflite_filename(fmt)), "wb") as f:
                f.write(content)
            logging.info("converted %s: %.1f MB in %.1f s", fmt, len(content) / 1e6, time.time() - start)
        checkpoints.write(temp_dir, config, class_names)
    return {fmt: os.path.join(output_dir, tflite_filename(fmt)) for fmt in formats}


def make_interpreter(path, num_threads=None):
    """The LiteRT interpreter (ai_edge_litert, in requirements.txt) of the .tflite file at `path`.

    Without ai-edge-litert: TF's tf.lite.Interpreter WITHOUT its default delegates, with a warning.
    Never tf.lite's default: in TF 2.21 its default delegate returns zeros for a 3x3 convolution of
    stride >= 4 (LiteRT and the interpreter without default delegates are right; tests/test_tflite.py
    shows all three on such a convolution).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        logging.warning("ai-edge-litert is not installed (pip install ai-edge-litert): running %s with "
                        "tf.lite.Interpreter without its default delegates (slower; its default delegate "
                        "gives wrong results for stride >= 4 convolutions in TF 2.21)", path)
        return tf.lite.Interpreter(
            model_path=path, num_threads=num_threads,
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return Interpreter(model_path=path, num_threads=num_threads)


class TFLiteRunner:
    """uint8 [H, W, 3] numpy -> numpy dict of the graph's outputs without the batch axis.

    One interpreter, not thread-safe. A dynamic-input file's input tensor is resized whenever the image
    size changes; for a fixed [1, S, S, 3] file the image is resized to S x S first (resize_uint8).
    """

    def __init__(self, path, num_threads=None):
        self.path = path
        self.interpreter = make_interpreter(path, num_threads)
        signatures = self.interpreter.get_signature_list()
        if len(signatures) != 1 or sorted(next(iter(signatures.values()))["outputs"]) != sorted(OUTPUT_KEYS):
            raise ValueError(f"{path} is not an SSD TFLite export of export_tflite.py (signatures: {signatures})")
        self._run = self.interpreter.get_signature_runner()
        shape = self._run.get_input_details()[INPUT_NAME]["shape_signature"]     # [1, S, S, 3] or -1s
        self.input_size = int(shape[1]) if shape[1] > 0 else None

    def __call__(self, image):
        if self.input_size:
            image = resize_uint8(image, self.input_size)
        outputs = self._run(**{INPUT_NAME: np.ascontiguousarray(image, np.uint8)[None]})
        return {key: outputs[key][0] for key in OUTPUT_KEYS}


def evaluate_detector(detector, data_dir, split, metrics=("voc07", "voc12")):
    """Metrics (metrics/evaluator.py's result dict) of an engine.serving.Detector of any kind on every
    image of `split`, fed the decoded uint8 records as a deployed model would see them."""
    from dataset import reader
    from metrics.evaluator import DetectionEvaluator

    evaluator = DetectionEvaluator(detector.class_names)
    start = time.time()
    for count, example in enumerate(reader.read_split(data_dir, split), 1):
        image = example[fields.IMAGE].numpy()
        found = detector(image)
        evaluator.add(example[fields.IMAGE_ID].numpy().decode(), image.shape[0], image.shape[1],
                      example[fields.BOXES].numpy(), example[fields.LABELS].numpy(),
                      example[fields.DIFFICULT].numpy(), found.boxes, found.scores, found.classes)
        logging.log_every_n_seconds(logging.INFO, "%s: %d images (%.1f images/s)", 10, detector.kind, count,
                                    count / max(time.time() - start, 1e-9))
    return evaluator.evaluate(list(metrics))
