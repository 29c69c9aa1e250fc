import pytest

from dataset import label_map

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


def test_format_is_tf_object_detection_api_text():
    # protobuf text_format of StringIntLabelMap: fields in field-number order (name = 1, id = 2).
    assert label_map.format_label_map(["aeroplane", "bicycle"]) == (
        'item {\n  name: "aeroplane"\n  id: 1\n}\nitem {\n  name: "bicycle"\n  id: 2\n}\n')


def test_write_then_read_round_trip(tmp_path):
    path = str(tmp_path / "label_map.pbtxt")
    label_map.write_label_map(path, VOC_CLASSES)
    assert label_map.read_label_map(path) == VOC_CLASSES
    assert label_map.num_classes(path) == 20
    assert [p.name for p in tmp_path.iterdir()] == ["label_map.pbtxt"]  # no temporary file left


def test_reads_double_quotes_display_name_and_any_item_order():
    text = ('item { name: "dog" id: 2 display_name: "Dog" }\n'
            "item {\n  id: 1\n  name: 'cat'\n}\n")
    assert label_map.parse_label_map(text) == ("cat", "dog")


@pytest.mark.parametrize("text, message", [
    ("item { id: 1 name: 'a' } item { id: 3 name: 'b' }", "without gaps"),
    ("item { id: 1 name: 'a' } item { id: 1 name: 'b' }", "twice"),
    ("item { id: 1 name: 'a' } item { id: 2 name: 'a' }", "twice"),
    ("item { id: 1 }", "without id or name"),
    ("item { id: 0 name: 'background' } item { id: 1 name: 'a' }", "without gaps"),
])
def test_rejects_bad_maps_naming_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        label_map.parse_label_map(text)


def test_refuses_unwritable_name(tmp_path):
    with pytest.raises(ValueError, match="cannot be written"):
        label_map.write_label_map(str(tmp_path / "m.pbtxt"), [""])
    assert not list(tmp_path.iterdir())
