"""label_map.pbtxt in the TF Object Detection API's text format: the single source of class ids.

    item {
      name: "aeroplane"
      id: 1
    }

The file is the protobuf text format of the OD API's `StringIntLabelMap` (object_detection/protos/
string_int_label_map.proto), read and written with protobuf's own `text_format`, never with regular
expressions (DESIGN.md): so `item: {`, comments, either quote style, escapes and non-ASCII names all
mean what protobuf says they mean, and every name we write reads back unchanged. The message is defined
once, below, from a descriptor built at import (no generated _pb2 file, no OD API dependency) in a private
descriptor pool, so it cannot clash with the OD API's own when both are imported.

Ids are 1..C in file order (DESIGN.md: 0 is background and never listed). Python code passes the map
around as the tuple of class names, where name i (0-based) has id i + 1.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from dataset.atomic import write_atomically

LABEL_MAP_FILENAME = "label_map.pbtxt"
_PACKAGE = "object_detection.protos"


def _build_label_map_class():
    """The StringIntLabelMap message class, with the OD API's field names, numbers and types."""
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="ssd_string_int_label_map.proto", package=_PACKAGE,
                                               syntax="proto2")
    item = proto.message_type.add(name="StringIntLabelMapItem")
    keypoint = item.nested_type.add(name="KeypointMap")
    keypoint.field.add(name="id", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    keypoint.field.add(name="label", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    frequency = item.enum_type.add(name="LVISFrequency")
    for number, name in enumerate(("UNSPECIFIED", "FREQUENT", "COMMON", "RARE")):
        frequency.value.add(name=name, number=number)
    item_type = f".{_PACKAGE}.StringIntLabelMapItem"
    item.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    item.field.add(name="id", number=2, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    item.field.add(name="display_name", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    item.field.add(name="keypoints", number=4, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                   type_name=f"{item_type}.KeypointMap")
    item.field.add(name="ancestor_ids", number=5, type=F.TYPE_INT32, label=F.LABEL_REPEATED)
    item.field.add(name="descendant_ids", number=6, type=F.TYPE_INT32, label=F.LABEL_REPEATED)
    item.field.add(name="frequency", number=7, type=F.TYPE_ENUM, label=F.LABEL_OPTIONAL,
                   type_name=f"{item_type}.LVISFrequency")
    item.field.add(name="instance_count", number=8, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    label_map = proto.message_type.add(name="StringIntLabelMap")
    label_map.field.add(name="item", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                        type_name=item_type)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.StringIntLabelMap"))


StringIntLabelMap = _build_label_map_class()


def format_label_map(class_names):
    """Text of a label map listing `class_names` with ids 1..C in the given order."""
    _check_names(class_names)
    message = StringIntLabelMap()
    for i, name in enumerate(class_names):
        message.item.add(name=name, id=i + 1)
    return text_format.MessageToString(message, as_utf8=True)


def _check_names(class_names):
    for name in class_names:
        if not isinstance(name, str) or not name:
            raise ValueError("class name %r cannot be written to a label map (empty or not text)" % (name,))
    if len(set(class_names)) != len(class_names):
        raise ValueError("label map names a class twice: %s" % (tuple(class_names),))


def write_label_map(path, class_names):
    """Write `class_names` as a label map to `path` atomically (temporary file, then rename)."""
    write_atomically(path, format_label_map(class_names))


def parse_label_map(text, source="label map"):
    """Class names of a label map text, ordered by id; ids must be exactly 1..C.

    Raises ValueError naming `source` and the problem: text that is not a StringIntLabelMap, no items,
    an item without id or name, a duplicate, or a gap in the ids.
    """
    message = StringIntLabelMap()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise ValueError("%s is not a StringIntLabelMap label map (%s)" % (source, e)) from None
    if not message.item:
        raise ValueError("%s is not a label map: it lists no `item { id: N name: '...' }`" % source)
    by_id = {}
    for item in message.item:
        if not item.HasField("id") or not item.name:
            raise ValueError("%s: label map item without id or name: %s" % (
                source, text_format.MessageToString(item, as_one_line=True, as_utf8=True)))
        if item.id in by_id:
            raise ValueError("%s: label map id %d appears twice" % (source, item.id))
        by_id[item.id] = item.name
    if sorted(by_id) != list(range(1, len(by_id) + 1)):
        raise ValueError("%s: label map ids must be 1..C without gaps, got %s" % (source, sorted(by_id)))
    names = tuple(by_id[i] for i in range(1, len(by_id) + 1))
    if len(set(names)) != len(names):
        raise ValueError("%s: label map names a class twice: %s" % (source, names))
    return names


def read_label_map(path):
    """Class names (tuple, id i + 1 at index i) of the label map file at `path`.

    FileNotFoundError or ValueError, each naming `path`, for a missing file or one that is no label map.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError("no label map at %s" % path) from None
    except UnicodeDecodeError as e:
        raise ValueError("%s is not a label map: not UTF-8 text (%s)" % (path, e)) from None
    return parse_label_map(text, source=path)


def num_classes(path):
    """C, the number of object classes in the label map at `path` (logits have C + 1 columns)."""
    return len(read_label_map(path))
