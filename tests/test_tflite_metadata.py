"""engine/tflite_metadata.py on a tiny graph with the detection files' signature (uint8 image in, the four
named outputs): the metadata read back with MediaPipe's own generated reader of metadata_schema.fbs
(an independent parser), names placed by signature, box properties, the packed label file, and the
model unchanged otherwise. The real exports are checked in MediaPipe in tests/test_tflite.py."""

import io
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

from dataset import fields
from engine import tflite_export, tflite_metadata

CLASS_NAMES = ("cat", "dog")


def _tiny_detection_file(input_size):
    """The .tflite bytes of a graph with the export's signature: uint8 [1, S, S, 3] -> boxes [1, 2, 4],
    scores [1, 2], classes [1, 2], num_detections [1], each a simple function of the image."""
    @tf.function(input_signature=[tf.TensorSpec([1, input_size, input_size, 3], tf.uint8,
                                                name=tflite_export.INPUT_NAME)])
    def serve(input_tensor):
        mean = tf.reduce_mean(tf.cast(input_tensor, tf.float32)) / 255.0
        return {fields.DETECTION_BOXES: tf.fill([1, 2, 4], mean), fields.DETECTION_SCORES: tf.fill([1, 2], mean),
                fields.DETECTION_CLASSES: tf.constant([[2.0, 1.0]]), fields.NUM_DETECTIONS: tf.constant([2.0])}

    module = tf.Module()
    module.serve = serve
    return tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], module).convert()


@pytest.fixture(scope="module")
def files():
    plain = _tiny_detection_file(8)
    return plain, tflite_metadata.populate(plain, CLASS_NAMES, "tiny", "a test graph")


def _interpreter(content):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=content)


def test_label_file_has_the_background_line_first():
    assert tflite_metadata.label_file(CLASS_NAMES) == b"???\ncat\ndog\n"


def test_metadata_read_back_with_the_schema_names_outputs_by_signature(files):
    _, content = files
    metadata, packed = tflite_metadata.read(content)
    assert schema.ModelMetadata.ModelMetadataBufferHasIdentifier(metadata, 0)     # "M001"
    root = schema.ModelMetadata.GetRootAsModelMetadata(metadata, 0)
    assert (root.Name(), root.MinParserVersion(), root.SubgraphMetadataLength()) == (b"tiny", b"1.0.0", 1)
    subgraph = root.SubgraphMetadata(0)
    assert subgraph.InputTensorMetadataLength() == 1 and subgraph.OutputTensorMetadataLength() == 4

    image = subgraph.InputTensorMetadata(0).Content()
    assert image.ContentPropertiesType() == schema.ContentProperties.ImageProperties
    properties = schema.ImageProperties()
    properties.Init(image.ContentProperties().Bytes, image.ContentProperties().Pos)
    assert properties.ColorSpace() == schema.ColorSpaceType.RGB
    assert (properties.DefaultSize().Width(), properties.DefaultSize().Height()) == (8, 8)

    # The converter orders this subgraph's outputs otherwise than the signature lists them (so an
    # index-order writer would misname them); each metadata entry names the output at its position.
    interpreter = _interpreter(content)
    order = [d["index"] for d in interpreter.get_output_details()]
    by_signature = {d["index"]: key for key, d in interpreter.get_signature_runner().get_output_details().items()}
    keys = [by_signature[index] for index in order]
    assert keys != sorted(keys, key=list(tflite_metadata.OUTPUT_METADATA_NAMES).index)
    tensors = [subgraph.OutputTensorMetadata(i) for i in range(4)]
    assert [t.Name().decode() for t in tensors] == [tflite_metadata.OUTPUT_METADATA_NAMES[k] for k in keys]
    named = dict(zip([t.Name().decode() for t in tensors], tensors))

    location = named["location"].Content()
    assert location.ContentPropertiesType() == schema.ContentProperties.BoundingBoxProperties
    box = schema.BoundingBoxProperties()
    box.Init(location.ContentProperties().Bytes, location.ContentProperties().Pos)
    # [ymin, xmin, ymax, xmax] rows: xmin is at 1, ymin at 0, xmax at 3, ymax at 2.
    assert list(box.IndexAsNumpy()) == [1, 0, 3, 2]
    assert (box.Type(), box.CoordinateType()) == (schema.BoundingBoxType.BOUNDARIES, schema.CoordinateType.RATIO)
    assert (location.Range().Min(), location.Range().Max()) == (2, 2)

    category = named["category"]
    assert category.AssociatedFilesLength() == 1
    label = category.AssociatedFiles(0)
    assert (label.Name(), label.Type()) == (b"labelmap.txt", schema.AssociatedFileType.TENSOR_VALUE_LABELS)
    assert packed == {"labelmap.txt": b"???\ncat\ndog\n"}


def test_label_file_is_an_uncompressed_zip_after_the_model(files):
    plain, content = files
    archive = zipfile.ZipFile(io.BytesIO(content))
    (info,) = archive.infolist()
    assert info.compress_type == zipfile.ZIP_STORED
    assert info.header_offset > len(plain) // 2            # counted from the file's start, after the model


def test_populated_model_runs_as_before(files):
    plain, content = files
    image = np.full([1, 8, 8, 3], 51, np.uint8)
    outputs = [_interpreter(c).get_signature_runner()(**{tflite_export.INPUT_NAME: image}) for c in (plain, content)]
    assert sorted(outputs[0]) == sorted(outputs[1]) == sorted(tflite_metadata.OUTPUT_METADATA_NAMES)
    for key in outputs[0]:
        np.testing.assert_array_equal(outputs[0][key], outputs[1][key])
    np.testing.assert_allclose(outputs[1][fields.DETECTION_SCORES], [[0.2, 0.2]], rtol=1e-6)   # 51 / 255


def test_any_size_input_is_refused():
    with pytest.raises(ValueError, match=r"fixed \[1, S, S, 3\] input, the file has \[1, -1, -1, 3\]"):
        tflite_metadata.populate(_tiny_detection_file(None), CLASS_NAMES, "tiny", "")
