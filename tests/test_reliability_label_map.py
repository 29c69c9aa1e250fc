"""Label maps through protobuf text_format against the OD API's StringIntLabelMap (issue 11, item 5)."""

import pytest

from dataset import label_map

HARD_NAMES = ("it's", "a}b", "#not a comment", "näive café", "日本", 'say "hi"', "back\\slash", "two\nlines",
              "item {", "  spaced  ")


def test_every_hard_name_round_trips_through_a_file(tmp_path):
    path = str(tmp_path / "label_map.pbtxt")
    label_map.write_label_map(path, HARD_NAMES)
    assert label_map.read_label_map(path) == HARD_NAMES


def test_od_api_spellings_item_colon_comments_and_extra_fields():
    # The OD API's own maps use `item: {` in places, comments, display_name and keypoints.
    text = """
    # PASCAL-like map
    item: {
      id: 2   # trailing comment
      name: 'dog'
      display_name: "Dog"
    }
    # item { id: 3 name: 'commented out' }
    item {
      name: "cat"
      id: 1
      keypoints { id: 0 label: "nose" }
      frequency: RARE
    }
    """
    assert label_map.parse_label_map(text) == ("cat", "dog")


def test_commented_out_item_is_not_counted():
    text = "item { id: 1 name: 'a' }\n# item { id: 2 name: 'b' }\n"
    assert label_map.parse_label_map(text) == ("a",)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "hello world\n", "{ not: protobuf",
                                  "item { id: 1 name: 'a' } garbage"])
def test_a_file_that_is_no_label_map_is_an_error_naming_it(tmp_path, text):
    path = tmp_path / "notes.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"notes\.txt.*(not a StringIntLabelMap|not a label map)"):
        label_map.read_label_map(str(path))


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no label map at .*absent.pbtxt"):
        label_map.read_label_map(str(tmp_path / "absent.pbtxt"))


def test_written_text_is_what_the_od_api_parser_reads():
    # The OD API reads with text_format.Merge into its generated StringIntLabelMap; ours is built from
    # a descriptor with the same names and numbers, so the wire bytes of the same map must be these.
    message = label_map.StringIntLabelMap()
    message.item.add(name="a", id=1)
    assert message.SerializeToString() == b"\n\x05\n\x01a\x10\x01"  # item(1){name(1)="a", id(2)=1}
