"""label_map.pbtxt in the TF Object Detection API's text format: the single source of class ids.

    item {
      id: 1
      name: 'aeroplane'
    }

Ids are 1..C in file order (DESIGN.md: 0 is background and never listed). Python code passes the map
around as the tuple of class names, where name i (0-based) has id i + 1.
"""

import re

from dataset.atomic import write_atomically

LABEL_MAP_FILENAME = "label_map.pbtxt"
_ITEM = re.compile(r"item\s*\{(.*?)\}", re.DOTALL)
_ID = re.compile(r"\bid\s*:\s*(\d+)")
_NAME = re.compile(r"""\bname\s*:\s*(?:'([^']*)'|"([^"]*)")""")


def format_label_map(class_names):
    """Text of a label map listing `class_names` with ids 1..C in the given order."""
    return "".join("item {\n  id: %d\n  name: '%s'\n}\n" % (i + 1, name)
                   for i, name in enumerate(class_names))


def write_label_map(path, class_names):
    """Write `class_names` as a label map to `path` atomically (temporary file, then rename)."""
    for name in class_names:
        if "'" in name or "\n" in name:
            raise ValueError("class name %r cannot be written to a label map" % name)
    write_atomically(path, format_label_map(class_names))


def parse_label_map(text):
    """Class names of a label map text, ordered by id; ids must be exactly 1..C.

    Raises ValueError naming the problem for a missing field, a duplicate, or a gap in the ids.
    """
    by_id = {}
    for item in _ITEM.findall(text):
        id_match, name_match = _ID.search(item), _NAME.search(item)
        if not id_match or not name_match:
            raise ValueError("label map item without id or name: %r" % item.strip())
        class_id = int(id_match.group(1))
        name = name_match.group(1) if name_match.group(1) is not None else name_match.group(2)
        if class_id in by_id:
            raise ValueError("label map id %d appears twice" % class_id)
        by_id[class_id] = name
    if sorted(by_id) != list(range(1, len(by_id) + 1)):
        raise ValueError("label map ids must be 1..C without gaps, got %s" % sorted(by_id))
    names = tuple(by_id[i] for i in range(1, len(by_id) + 1))
    if len(set(names)) != len(names):
        raise ValueError("label map names a class twice: %s" % (names,))
    return names


def read_label_map(path):
    """Class names (tuple, id i + 1 at index i) of the label map file at `path`."""
    with open(path) as f:
        return parse_label_map(f.read())


def num_classes(path):
    """C, the number of object classes in the label map at `path` (logits have C + 1 columns)."""
    return len(read_label_map(path))
