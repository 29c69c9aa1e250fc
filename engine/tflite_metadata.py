"""TFLite Model Metadata for the detection files, so MediaPipe's ObjectDetector and the mobile task
libraries load them as they are.

MediaPipe Tasks (mediapipe/tasks/cc/components/processors/detection_postprocessing_graph.cc) refuses a
detector without metadata. For a graph with its NMS inside and four outputs it reads:

  output tensor metadata, one entry per subgraph output in the subgraph's output order, found by name:
    "location"              detection_boxes   content BoundingBoxProperties: type BOUNDARIES, coordinate
                                              RATIO, index [1, 0, 3, 2] = the positions of xmin, ymin,
                                              xmax, ymax in our yxyx rows; content range [2, 2] (the axis
                                              holding the box)
    "category"              detection_classes a TENSOR_VALUE_LABELS associated file: one label per line,
                                              line i = class id i, so line 0 is a placeholder for the
                                              background (class ids are 1..C, DESIGN.md)
    "score"                 detection_scores
    "number of detections"  num_detections
  input tensor metadata: ImageProperties (RGB); a uint8 input needs no NormalizationOptions (they are
  required for float input only). MediaPipe takes H and W from the input's static shape, so the file
  must have a fixed [1, S, S, 3] input (engine/tflite_export.py's default).

The names are given by the SIGNATURE's output names (detection_boxes -> "location", ...), mapped to
positions through the signature's tensor indices, never assumed from tensor-index order: the converter
orders the subgraph's outputs by its own rules (alphabetically by signature key here), which is the
trap MediaPipe's own writer falls into (it labels num_detections "location" on our graph).

The metadata is a flatbuffer of the TFLite metadata schema (metadata_schema.fbs, file identifier
"M001", in tflite-support and in mediapipe/tasks/metadata/), written here with the `flatbuffers`
Builder field by field (slot numbers are the fields' positions in the schema; a union field takes two
slots, its type then its value). It is stored as the model's buffer named "TFLITE_METADATA" (the Model
table's metadata list), and the label file is packed as tflite-support's populator packs associated
files: an uncompressed zip appended after the flatbuffer, its offsets counted from the file's start.
Neither tflite-support (it needs protobuf < 4) nor mediapipe is imported.
"""

import io
import zipfile

import flatbuffers

from dataset import fields

METADATA_BUFFER_NAME = "TFLITE_METADATA"
METADATA_FILE_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"   # no field added after schema 1.0.0 is used (schema history)
LABEL_FILENAME = "labelmap.txt"
BACKGROUND_LABEL = "???"       # line 0 of the label file, as the TF model zoo's SSD label files have it
OUTPUT_METADATA_NAMES = {
    fields.DETECTION_BOXES: "location",
    fields.DETECTION_CLASSES: "category",
    fields.DETECTION_SCORES: "score",
    fields.NUM_DETECTIONS: "number of detections",
}
BOX_CORNER_INDEX = (1, 0, 3, 2)   # xmin, ymin, xmax, ymax within a [ymin, xmin, ymax, xmax] row

# metadata_schema.fbs enum values used here.
_ASSOCIATED_FILE_TENSOR_VALUE_LABELS = 3
_COLOR_SPACE_RGB = 1
_BOUNDING_BOX_BOUNDARIES = 1
_COORDINATE_RATIO = 0
_CONTENT_FEATURE_PROPERTIES = 1
_CONTENT_IMAGE_PROPERTIES = 2
_CONTENT_BOUNDING_BOX_PROPERTIES = 3


def label_file(class_names):
    """The label file's bytes: a placeholder line for the background (id 0), then the C class names."""
    return ("\n".join((BACKGROUND_LABEL,) + tuple(class_names)) + "\n").encode("utf-8")


def _table(builder, slots):
    """One table from {slot: (kind, value)}, kind "offset", "uint8", "int8", "int32" or "uint32".
    Offsets (strings, vectors, tables) must have been created before the table starts."""
    prepend = {"offset": builder.PrependUOffsetTRelativeSlot, "uint8": builder.PrependUint8Slot,
               "int8": builder.PrependInt8Slot, "int32": builder.PrependInt32Slot,
               "uint32": builder.PrependUint32Slot}
    builder.StartObject(max(slots, default=-1) + 1)
    for slot, (kind, value) in sorted(slots.items()):
        prepend[kind](slot, value, 0)   # written even when equal to the default (ForceDefaults in build)
    return builder.EndObject()


def _vector(builder, offsets):
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _uint32_vector(builder, values):
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependUint32(value)
    return builder.EndVector()


def _tensor(builder, name, description, content=None, associated_files=None):
    """TensorMetadata: 0 name, 1 description, 3 content, 6 associated_files."""
    slots = {0: ("offset", builder.CreateString(name)), 1: ("offset", builder.CreateString(description))}
    if content is not None:
        slots[3] = ("offset", content)
    if associated_files is not None:
        slots[6] = ("offset", associated_files)
    return _table(builder, slots)


def _content(builder, properties_type, properties, value_range=None):
    """Content: 0 content_properties_type, 1 content_properties, 2 range."""
    slots = {0: ("uint8", properties_type), 1: ("offset", properties)}
    if value_range is not None:
        slots[2] = ("offset", _table(builder, {0: ("int32", value_range[0]), 1: ("int32", value_range[1])}))
    return _table(builder, slots)


def build(output_keys, class_names, input_size, name, description):
    """The ModelMetadata flatbuffer (bytes) of a detection file whose subgraph outputs are the
    signature keys `output_keys` in subgraph order, with a uint8 [1, S, S, 3] input (S = input_size)."""
    builder = flatbuffers.Builder(1024)
    builder.ForceDefaults(True)
    # Input: an RGB image of S x S (ImageProperties: 0 color_space, 1 default_size).
    image_size = _table(builder, {0: ("uint32", input_size), 1: ("uint32", input_size)})
    image_properties = _table(builder, {0: ("int8", _COLOR_SPACE_RGB), 1: ("offset", image_size)})
    inputs = [_tensor(builder, "image", "uint8 RGB image, 0-255; resized to the model's input size",
                      _content(builder, _CONTENT_IMAGE_PROPERTIES, image_properties))]

    labels = _table(builder, {0: ("offset", builder.CreateString(LABEL_FILENAME)),
                              1: ("offset", builder.CreateString("Labels of the class ids; line 0 is the "
                                                                 "background, never detected")),
                              2: ("int8", _ASSOCIATED_FILE_TENSOR_VALUE_LABELS)})
    described = {
        fields.DETECTION_BOXES: "normalized [ymin, xmin, ymax, xmax] of the image, 0 in padding",
        fields.DETECTION_CLASSES: "class ids 1..C (label file line), 0 in padding",
        fields.DETECTION_SCORES: "scores, descending, 0 in padding",
        fields.NUM_DETECTIONS: "number of valid rows",
    }
    outputs = []
    for key in output_keys:
        if key == fields.DETECTION_BOXES:
            index = _uint32_vector(builder, BOX_CORNER_INDEX)
            properties = _table(builder, {0: ("offset", index), 1: ("int8", _BOUNDING_BOX_BOUNDARIES),
                                          2: ("int8", _COORDINATE_RATIO)})
            content = _content(builder, _CONTENT_BOUNDING_BOX_PROPERTIES, properties, value_range=(2, 2))
        else:
            content = _content(builder, _CONTENT_FEATURE_PROPERTIES, _table(builder, {}))
        files = _vector(builder, [labels]) if key == fields.DETECTION_CLASSES else None
        outputs.append(_tensor(builder, OUTPUT_METADATA_NAMES[key], described[key], content, files))

    # SubGraphMetadata: 0 name, 1 description, 2 input_tensor_metadata, 3 output_tensor_metadata.
    subgraph = _table(builder, {0: ("offset", builder.CreateString(name)),
                                1: ("offset", builder.CreateString(description)),
                                2: ("offset", _vector(builder, inputs)),
                                3: ("offset", _vector(builder, outputs))})
    # ModelMetadata: 0 name, 1 description, 3 subgraph_metadata, 7 min_parser_version.
    root = _table(builder, {0: ("offset", builder.CreateString(name)),
                            1: ("offset", builder.CreateString(description)),
                            3: ("offset", _vector(builder, [subgraph])),
                            7: ("offset", builder.CreateString(MIN_PARSER_VERSION))})
    builder.Finish(root, file_identifier=METADATA_FILE_IDENTIFIER)
    return bytes(builder.Output())


def subgraph_output_keys(model):
    """The signature output keys of `model` (a tflite ModelT) in the order of its subgraph's outputs."""
    if len(model.signatureDefs or []) != 1 or len(model.subgraphs) != 1:
        raise ValueError("expected one subgraph with one signature")
    signature = model.signatureDefs[0]
    by_tensor = {tensor_map.tensorIndex: tensor_map.name.decode() for tensor_map in signature.outputs}
    return [by_tensor[index] for index in model.subgraphs[0].outputs]


def populate(tflite_bytes, class_names, name, description):
    """`tflite_bytes` (a detection file of engine/tflite_export.py with a fixed [1, S, S, 3] input) with
    its metadata and packed label file: bytes of the new file."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    subgraph = model.subgraphs[0]
    tensor = subgraph.tensors[subgraph.inputs[0]]
    # shape_signature holds -1 for a dynamic axis (shape then says 1); absent when every axis is fixed.
    input_shape = [int(d) for d in (tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape)]
    if len(input_shape) != 4 or input_shape[1] != input_shape[2] or input_shape[1] <= 0:
        raise ValueError(f"metadata needs a fixed [1, S, S, 3] input, the file has {input_shape}")
    output_keys = subgraph_output_keys(model)
    if sorted(output_keys) != sorted(OUTPUT_METADATA_NAMES):
        raise ValueError(f"not a detection file: outputs {output_keys}")
    metadata = build(output_keys, class_names, int(input_shape[1]), name, description)

    buffer = schema.BufferT()
    buffer.data = metadata
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_BUFFER_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_BUFFER_NAME.encode()] + [entry]
    content = io.BytesIO(flatbuffer_utils.convert_object_to_bytearray(model))
    # Mode "a" on bytes that are no zip appends an archive whose offsets count from the file's start.
    with zipfile.ZipFile(content, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(LABEL_FILENAME, label_file(class_names))
    return content.getvalue()


def read(tflite_bytes):
    """(the ModelMetadata flatbuffer's bytes or None, {associated file name: bytes}) of a .tflite file."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(bytearray(tflite_bytes), 0)
    metadata = None
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name() == METADATA_BUFFER_NAME.encode():
            metadata = model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes()
    files = {}
    if zipfile.is_zipfile(io.BytesIO(tflite_bytes)):
        with zipfile.ZipFile(io.BytesIO(tflite_bytes)) as archive:
            files = {info.filename: archive.read(info) for info in archive.infolist()}
    return metadata, files
