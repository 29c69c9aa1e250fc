"""Every key the system passes around, named once.

Two families:

* `TFRecord keys`: the TF Object Detection API's `tf.train.Example` feature keys, so the records work
  with that API's and the TF Model Garden's readers.
* `Example keys`: the dict that `dataset.reader` parses a record into and that preprocessing consumes:

    image       uint8   [H, W, 3]  RGB
    boxes       float32 [N, 4]     [ymin, xmin, ymax, xmax], normalized to [0, 1]
    labels      int32   [N]        1..C (0 is background and never appears here)
    difficult   bool    [N]
    truncated   bool    [N]
    is_crowd    bool    [N]        COCO `iscrowd` (False for VOC records)
    area        float32 [N]        pixels: COCO's annotation `area` (the mask's), else the box's
    image_id    string  []         the VOC id (file stem), or the COCO image id in decimal; unique
                                   within a split
    filename    string  []
    height      int32   []         of the stored (decoded) image
    width       int32   []
"""

# --- TFRecord keys (TF Object Detection API names) ---
IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_FILENAME = "image/filename"
IMAGE_SOURCE_ID = "image/source_id"   # VOC: the file stem; COCO: the decimal image id (OD API)
IMAGE_KEY_SHA256 = "image/key/sha256"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
OBJECT_XMIN = "image/object/bbox/xmin"
OBJECT_YMIN = "image/object/bbox/ymin"
OBJECT_XMAX = "image/object/bbox/xmax"
OBJECT_YMAX = "image/object/bbox/ymax"
OBJECT_LABEL = "image/object/class/label"
OBJECT_TEXT = "image/object/class/text"
OBJECT_DIFFICULT = "image/object/difficult"
OBJECT_TRUNCATED = "image/object/truncated"
OBJECT_VIEW = "image/object/view"
OBJECT_AREA = "image/object/area"          # float, pixels of the stored image
OBJECT_IS_CROWD = "image/object/is_crowd"  # int 0/1

# --- Example dict keys (what dataset.reader yields) ---
IMAGE = "image"
BOXES = "boxes"
LABELS = "labels"
DIFFICULT = "difficult"
TRUNCATED = "truncated"
IS_CROWD = "is_crowd"
AREA = "area"
IMAGE_ID = "image_id"
FILENAME = "filename"
HEIGHT = "height"
WIDTH = "width"

# --- Model input/target keys (what the input functions yield) ---
CLS_TARGETS = "cls_targets"        # int32   [B, A]    0 = background, 1..C, IGNORE_CLASS
BOX_TARGETS = "box_targets"        # float32 [B, A, 4] encoded [ty, tx, th, tw]
NUM_POSITIVES = "num_positives"    # float32 [B]

# --- Model output keys ---
CLS_LOGITS = "cls_logits"          # [B, A, C + 1]
BOX_CODES = "box_codes"            # [B, A, 4]

# --- Detection keys (TF Object Detection API output names) ---
DETECTION_BOXES = "detection_boxes"        # float32 [B, K, 4] normalized yxyx
DETECTION_SCORES = "detection_scores"      # float32 [B, K]
DETECTION_CLASSES = "detection_classes"    # int32 [B, K], 1..C (0 in padding)
NUM_DETECTIONS = "num_detections"          # int32 [B]

BACKGROUND_CLASS = 0
# cls_targets value of an anchor that is neither positive nor negative (covered by a COCO crowd box,
# model/targets.py): the loss leaves it out of the cross-entropy and out of hard-negative mining.
IGNORE_CLASS = -1
