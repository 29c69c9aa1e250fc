"""SavedModel export (engine/serving.py, export_saved_model.py): layout, parity with the eval path,
the checkpoint and its export equal through the detector door, the encoded-bytes signature, bad inputs,
atomic writes, the export arguments, the bfloat16 variant."""

import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import REPO_ROOT
from dataset import fields, label_map
from model import anchors as anchors_lib
from engine import checkpoints, evaluation, serving
from model import presets
from nets import ssd
from preprocessing import inputs

CLASS_NAMES = ("cat", "dog", "person")
WIDTH = 0.125
TOLERANCE = 1e-5
SAMPLE_IMAGES = os.path.join(REPO_ROOT, "dataset", "sample", "JPEGImages")


def _calibrate_heads(model, image_size, image=None):
    """Scales each random head so its outputs have unit spread on a noise image: untrained heads give
    logits in the hundreds (every score 1.0, ties everywhere), which would make parity tests weak."""
    if image is None:
        image = tf.random.stateless_normal([1, image_size, image_size, 3], seed=[1, 2], stddev=60.0)
    for layer in model.layers:
        if layer.name.endswith((ssd.CONF_SUFFIX, ssd.LOC_SUFFIX)):
            spread = float(tf.math.reduce_std(keras.Model(model.input, layer.output)(image)))
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel / spread, bias])


def _calibrate_batch_norm(model, image_size):
    """Sets each BatchNormalization's moving mean and variance to its input's on eight sample images (the
    inference pass then equals a training pass on them). With the initial 0 and 1, a random MobileNetV3
    is dead: its activations shrink to 0 by the fourth block and every head outputs its bias alone.
    Returns the images, or None for a model without batch norm (SSD300 VGG16: left as it was)."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        return None
    names = sorted(os.listdir(SAMPLE_IMAGES))[:8]
    images = tf.stack([tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(os.path.join(SAMPLE_IMAGES, name))),
                                       [image_size, image_size]) for name in names])
    for layer, x in zip(norms, keras.Model(model.input, [layer.input for layer in norms])(images, training=True)):
        axes = list(range(len(x.shape) - 1))
        layer.moving_mean.assign(tf.reduce_mean(x, axes))
        layer.moving_variance.assign(tf.math.reduce_variance(x, axes))
    return images


def write_random_model_dir(path, seed=0, class_names=CLASS_NAMES, preset="ssd300_vgg16", width=WIDTH):
    """A model_dir as train_ssd.py leaves it (checkpoint, config.json, label map), random weights."""
    config = presets.get(preset, len(class_names), width_multiplier=width)
    keras.utils.set_random_seed(seed)
    model = ssd.build(config)
    images = _calibrate_batch_norm(model, config.image_size)
    _calibrate_heads(model, config.image_size, None if images is None else images[:1])
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(path), max_to_keep=1).save()
    checkpoints.write(str(path), config, class_names)
    return config


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model_dir")
    return str(path), write_random_model_dir(path)


@pytest.fixture(scope="module")
def exported(trained_dir, tmp_path_factory):
    path, config = trained_dir
    module, _, _, _ = serving.from_checkpoint(path)
    export_dir = serving.export(module, CLASS_NAMES, str(tmp_path_factory.mktemp("export") / "ssd"))
    loaded, _, _ = serving.load(export_dir)
    return export_dir, loaded


@pytest.fixture(scope="module")
def eval_detect(trained_dir):
    """The eval path: a model restored from the checkpoint, make_detect_fn on resize(image)."""
    path, config = trained_dir
    model = ssd.build(config)
    checkpoints.restore_model(model, checkpoints.resolve_checkpoint(path))
    detect = evaluation.make_detect_fn(model, anchors_lib.generate(config), config)
    return lambda images: {k: v.numpy() for k, v in
                           detect(inputs.resize(images, config)).items()}


def _images(batch, height, width, seed):
    """Smooth uint8 RGB images (gradients plus noise), so JPEG coding keeps them recognisable."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 50, height)[:, None, None]
    noise = rng.integers(0, 50, size=(batch, height, width, 3))
    return np.clip(ramp[None] + noise, 0, 255).astype(np.uint8)


def _assert_same_detections(served, reference):
    np.testing.assert_array_equal(served[fields.NUM_DETECTIONS], reference[fields.NUM_DETECTIONS])
    for key in (fields.DETECTION_BOXES, fields.DETECTION_SCORES, fields.DETECTION_CLASSES):
        np.testing.assert_allclose(served[key], reference[key].astype(np.float32), atol=TOLERANCE,
                                   err_msg=key)


def _numpy(outputs):
    return {k: v.numpy() for k, v in outputs.items()}


@pytest.mark.slow
def test_export_layout_signatures_and_od_api_outputs(exported, trained_dir):
    export_dir, loaded = exported
    _, config = trained_dir
    for name in ("saved_model.pb", "variables", label_map.LABEL_MAP_FILENAME, checkpoints.CONFIG_FILENAME):
        assert os.path.exists(os.path.join(export_dir, name)), name
    assert label_map.read_label_map(os.path.join(export_dir, label_map.LABEL_MAP_FILENAME)) == CLASS_NAMES
    assert checkpoints.read(export_dir)[0] == config
    assert os.listdir(os.path.dirname(export_dir)) == ["ssd"]   # no temporary folder left beside it

    default = loaded.signatures[serving.SERVING_DEFAULT]
    encoded = loaded.signatures[serving.SERVING_ENCODED]
    assert serving.IMAGES_INPUT == "input_tensor"    # the OD API's input name
    assert default.structured_input_signature[1][serving.IMAGES_INPUT].dtype == tf.uint8
    assert encoded.structured_input_signature[1][serving.ENCODED_INPUT].dtype == tf.string
    for signature in (default, encoded):
        outputs = signature.structured_outputs
        assert sorted(outputs) == sorted([fields.DETECTION_BOXES, fields.DETECTION_SCORES,
                                          fields.DETECTION_CLASSES, fields.NUM_DETECTIONS])
        assert all(spec.dtype == tf.float32 for spec in outputs.values())   # the OD API's dtypes
        assert outputs[fields.DETECTION_BOXES].shape.as_list() == [None, config.max_detections, 4]


@pytest.mark.slow
@pytest.mark.parametrize("height,width,batch", [(300, 300, 2), (97, 211, 1)], ids=["SxS", "non_square"])
def test_serving_default_equals_eval_path(exported, eval_detect, height, width, batch):
    _, loaded = exported
    images = _images(batch, height, width, seed=height)
    served = _numpy(loaded.signatures[serving.SERVING_DEFAULT](input_tensor=tf.constant(images)))
    reference = eval_detect(tf.constant(images))
    _assert_same_detections(served, reference)
    assert served[fields.NUM_DETECTIONS].min() > 0
    # Distinct scores: the comparison is not between two columns of ties.
    assert len(np.unique(served[fields.DETECTION_SCORES][0][:10])) == 10
    classes = served[fields.DETECTION_CLASSES][0][:int(served[fields.NUM_DETECTIONS][0])]
    assert set(classes.astype(int)) <= {1, 2, 3}


# Only TensorFlow is imported in the client process: a client needs none of this repository's code.
_CLIENT = """
import json, sys
import numpy as np, tensorflow as tf
export_dir, images_path, png_path = sys.argv[1:]
images = tf.constant(np.load(images_path))
detect_fn = tf.saved_model.load(export_dir)
outputs = {
    "call": detect_fn(images),
    "serving_default": detect_fn.signatures["serving_default"](input_tensor=images),
    "serving_encoded": detect_fn.signatures["serving_encoded"](
        encoded_images=tf.constant([open(png_path, "rb").read()] * int(images.shape[0]))),
}
print(json.dumps({style: {k: v.numpy().tolist() for k, v in out.items()} for style, out in outputs.items()}))
"""


@pytest.mark.slow
def test_fresh_process_calls_the_export_three_ways(exported, eval_detect, tmp_path):
    """As the OD API's TF2 tutorial does: tf.saved_model.load(path)(images), its serving_default with
    input_tensor=, and serving_encoded with PNG bytes; all three equal the eval path."""
    export_dir, _ = exported
    images = _images(2, 90, 120, seed=7)
    images[1] = images[0]   # one PNG encodes both rows of serving_encoded's batch
    np.save(tmp_path / "images.npy", images)
    Image.fromarray(images[0]).save(tmp_path / "image.png")
    result = subprocess.run([sys.executable, "-c", _CLIENT, export_dir, str(tmp_path / "images.npy"),
                             str(tmp_path / "image.png")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout.strip().splitlines()[-1])
    reference = eval_detect(tf.constant(images))
    assert reference[fields.NUM_DETECTIONS].min() > 0
    for style in ("call", "serving_default", "serving_encoded"):
        _assert_same_detections({k: np.asarray(v, np.float32) for k, v in outputs[style].items()}, reference)


@pytest.mark.slow
def test_serving_encoded_equals_eval_decoder(exported, eval_detect):
    """A JPEG and a PNG of other sizes in one batch; each row equals the eval path on its decode."""
    _, loaded = exported
    jpeg_image, png_image = _images(1, 120, 160, seed=1)[0], _images(1, 75, 50, seed=2)[0]
    jpeg_bytes, png_bytes = io.BytesIO(), io.BytesIO()
    Image.fromarray(jpeg_image).save(jpeg_bytes, format="JPEG", quality=90)
    Image.fromarray(png_image).save(png_bytes, format="PNG")
    # The eval records' decoder (dataset/reader.py) is integer-accurate, which matches Pillow exactly.
    jpeg_decoded = tf.io.decode_jpeg(jpeg_bytes.getvalue(), channels=3, dct_method="INTEGER_ACCURATE")
    np.testing.assert_array_equal(jpeg_decoded.numpy(), np.asarray(Image.open(jpeg_bytes)))
    np.testing.assert_array_equal(serving.decode_image(tf.constant(jpeg_bytes.getvalue())).numpy(),
                                  jpeg_decoded.numpy())

    served = _numpy(loaded.signatures[serving.SERVING_ENCODED](
        encoded_images=tf.constant([jpeg_bytes.getvalue(), png_bytes.getvalue()])))
    for row, decoded in enumerate([jpeg_decoded, tf.constant(png_image)]):
        _assert_same_detections({k: v[row:row + 1] for k, v in served.items()}, eval_detect(decoded[None]))


@pytest.mark.slow
@pytest.mark.parametrize("signature,value,message", [
    (serving.SERVING_DEFAULT, tf.zeros([1, 8, 8, 3], tf.float32), "expected to be a uint8 tensor"),
    (serving.SERVING_DEFAULT, tf.zeros([8, 8, 3], tf.uint8), "not compatible with expected shape [?,?,?,?]"),
    (serving.SERVING_DEFAULT, tf.zeros([1, 0, 0, 3], tf.uint8), "empty image"),
    (serving.SERVING_DEFAULT, tf.zeros([0, 8, 8, 3], tf.uint8), "empty batch"),
    (serving.SERVING_DEFAULT, tf.zeros([1, 8, 8, 1], tf.uint8), "images must be RGB"),
    (serving.SERVING_DEFAULT, tf.zeros([1, 8, 8, 4], tf.uint8), "images must be RGB"),
    (serving.SERVING_ENCODED, tf.constant([b"not an image"]), "Unknown image file format"),
    (serving.SERVING_ENCODED, tf.zeros([0], tf.string), "encoded_images: empty batch"),
], ids=["float32", "rank3", "0x0", "batch0", "grey", "rgba", "not_image", "encoded_batch0"])
def test_bad_input_is_rejected_with_a_clear_message(exported, signature, value, message):
    _, loaded = exported
    name = serving.IMAGES_INPUT if signature == serving.SERVING_DEFAULT else serving.ENCODED_INPUT
    with pytest.raises(tf.errors.InvalidArgumentError, match=message.replace("[", r"\[").replace("?", r"\?")):
        loaded.signatures[signature](**{name: value})


@pytest.mark.slow
def test_checkpoint_and_its_saved_model_are_equal_through_the_door(trained_dir, exported):
    """serving.load_detector on the model_dir and on its export: the same trimmed rows, one record per
    image of a batch, each as many rows as the signature's (padded) num_detections says."""
    path, config = trained_dir
    export_dir, loaded = exported
    checkpoint, saved = serving.load_detector(path), serving.load_detector(export_dir)
    assert (checkpoint.kind, saved.kind, saved.path) == ("checkpoint", "saved_model", export_dir)
    assert checkpoint.config == saved.config == config and checkpoint.class_names == saved.class_names == CLASS_NAMES
    assert saved.class_name(3) == "person"
    images = _images(2, 97, 211, seed=5)
    padded = _numpy(loaded.signatures[serving.SERVING_DEFAULT](input_tensor=tf.constant(images)))
    ours, theirs = checkpoint(images), saved(images)
    assert isinstance(ours, list) and len(ours) == len(theirs) == 2
    for i, (a, b) in enumerate(zip(ours, theirs)):
        n = int(padded[fields.NUM_DETECTIONS][i])
        assert len(a) == len(b) == n > 0
        assert b.classes.dtype == np.int32 and b.scores.dtype == b.boxes.dtype == np.float32
        np.testing.assert_array_equal(a.classes, b.classes)
        np.testing.assert_allclose(a.scores, b.scores, atol=TOLERANCE)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=TOLERANCE)
        np.testing.assert_array_equal(b.boxes, padded[fields.DETECTION_BOXES][i, :n])
    one = saved(images[1])                              # one image: one record, the batch's row
    assert isinstance(one, serving.Detections)
    np.testing.assert_allclose(one.scores, theirs[1].scores, atol=TOLERANCE)


@pytest.mark.slow
def test_export_replaces_only_an_export_and_leaves_nothing_when_interrupted(trained_dir, tmp_path,
                                                                            monkeypatch):
    path, config = trained_dir
    module, _, _, _ = serving.from_checkpoint(path)
    not_an_export = tmp_path / "precious"
    not_an_export.mkdir()
    (not_an_export / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a SavedModel export"):
        serving.export(module, CLASS_NAMES, str(not_an_export))
    assert (not_an_export / "notes.txt").read_text() == "keep me"

    def killed(*args):
        raise KeyboardInterrupt("export killed")
    monkeypatch.setattr(checkpoints, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        serving.export(module, CLASS_NAMES, str(tmp_path / "ssd"))
    assert sorted(os.listdir(tmp_path)) == ["precious"]   # neither ssd/ nor a temporary folder


@pytest.mark.slow
def test_export_script_and_bfloat16_variant(trained_dir, tmp_path):
    """The CLI from --checkpoint_path, over an earlier export, with the bfloat16 policy: outputs float32."""
    path, config = trained_dir
    output_dir = tmp_path / "ssd_bf16"
    output_dir.mkdir()
    (output_dir / "saved_model.pb").write_bytes(b"an earlier export")
    checkpoint = checkpoints.resolve_checkpoint(path)
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "export_saved_model.py"), "--checkpoint_path", checkpoint,
         "--output_dir", str(output_dir), "--dtype_policy", "mixed_bfloat16"],
        capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exported " + checkpoint in result.stderr
    assert json.loads((output_dir / checkpoints.CONFIG_FILENAME).read_text())["width_multiplier"] == WIDTH
    loaded, _, class_names = serving.load(str(output_dir))
    assert class_names == CLASS_NAMES
    outputs = loaded.signatures[serving.SERVING_DEFAULT](input_tensor=tf.constant(_images(1, 64, 48, seed=3)))
    assert all(v.dtype == tf.float32 for v in outputs.values())
    assert 0 < float(outputs[fields.NUM_DETECTIONS][0]) <= config.max_detections


def test_from_checkpoint_builds_under_the_policy_and_restores_the_global_one(trained_dir):
    path, _ = trained_dir
    module, _, _, _ = serving.from_checkpoint(path, dtype_policy="mixed_bfloat16")
    assert module.model.get_layer("conv1_1").compute_dtype == "bfloat16"
    assert keras.config.dtype_policy().name == "float32"
