"""engine/drawing.py: outlines where the normalized box says, in the class's colour; captions on a
filled background inside the image and apart from each other; at most the top 20 detections above
the score floor; the input left alone."""

import numpy as np
import pytest
import tensorflow as tf

from engine import drawing
from engine.drawing import draw_boxes, draw_detections

BLACK = (0, 0, 0)


def test_outline_lies_on_the_box_edges_in_the_class_colour_and_inside_is_untouched():
    image = np.zeros([61, 81, 3], np.uint8)
    # Rows 0.25 * 60 = 15 .. 0.75 * 60 = 45; columns 0.2 * 80 = 16 .. 0.8 * 80 = 64.
    drawn = draw_boxes(image, [[0.25, 0.2, 0.75, 0.8]], [2], class_names=["cat", "dog"], scores=[0.9])
    dog = drawing.class_color(2)
    assert drawn.dtype == np.uint8 and drawn.shape == image.shape
    np.testing.assert_array_equal(drawn[45, 30], dog)   # bottom edge
    np.testing.assert_array_equal(drawn[40, 16], dog)   # left edge
    np.testing.assert_array_equal(drawn[40, 64], dog)   # right edge
    np.testing.assert_array_equal(drawn[40, 40], BLACK)  # inside, away from the caption
    np.testing.assert_array_equal(drawn[58, 78], BLACK)  # outside
    assert not image.any()  # the input is not drawn on


def test_palette_gives_each_of_20_classes_its_own_colour_and_cycles():
    colors = [drawing.class_color(i) for i in range(1, 21)]
    assert len(set(colors)) == 20
    assert drawing.class_color(21) == drawing.class_color(1)
    assert drawing._text_color((255, 225, 25)) == (0, 0, 0)       # dark text on yellow
    assert drawing._text_color((0, 0, 128)) == (255, 255, 255)     # white text on navy


def test_caption_has_a_filled_background_inside_the_image_for_a_box_in_the_corner():
    image = np.zeros([100, 120, 3], np.uint8)
    # A box touching the top-right corner: above it there is no room, to its right neither.
    drawn = draw_boxes(image, [[0.0, 0.9, 0.3, 1.0]], [1], class_names=["a_long_class_name"], scores=[0.5])
    fill = np.all(drawn == drawing.class_color(1), axis=-1)
    rows, cols = np.nonzero(fill[:, :108])   # left of the box: only the caption's background
    assert rows.size > 200                   # a filled patch, not a line
    # Inside the image, at the top (moved inside the box's top), shifted left to fit its width.
    assert rows.min() == 0 and cols.max() == 107
    patch = drawn[rows.min():rows.max() + 1, cols.min():cols.max() + 1].astype(int)
    # White (antialiased) text on that background: brighter pixels inside the patch.
    assert (patch.sum(-1) > sum(drawing.class_color(1)) + 200).sum() > 20


def test_layout_moves_captions_of_close_boxes_apart_and_keeps_them_inside():
    boxes = [[10, 30, 60, 80]] * 4 + [[0, 0, 200, 150]]   # four identical boxes, one as big as the image
    sizes = [(40, 12)] * 5
    corners = drawing.layout_captions(150, 200, boxes, sizes)
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, sizes)]
    assert corners[0] == (10, 18)          # the best first: above the top-left corner
    for i, (x0, y0, x1, y1) in enumerate(rects):
        assert 0 <= x0 and x1 <= 200 and 0 <= y0 and y1 <= 150
        for other in rects[:i]:
            assert not (x0 < other[2] and other[0] < x1 and y0 < other[3] and other[1] < y1), (i, other)


def test_draw_detections_keeps_the_top_20_above_the_floor():
    # 30 small boxes on a 6 x 5 grid of 100-px cells; box i scores 0.99 - 0.02 i, so boxes 0..22 are
    # >= 0.54 > 0.5 floor... with a 0.5 floor, 25 qualify (0.99 .. 0.51) and the top 20 (0..19) are drawn.
    count = 30
    rows, cols = np.divmod(np.arange(count), 6)
    boxes = np.stack([(rows * 100 + 40) / 499, (cols * 100 + 30) / 599,
                      (rows * 100 + 90) / 499, (cols * 100 + 90) / 599], axis=1)
    scores = 0.99 - 0.02 * np.arange(count)
    classes = np.full(count, 3.0)   # float ids, as the SavedModel returns them
    drawn = draw_detections(np.zeros([500, 600, 3], np.uint8), boxes, scores, classes, ["a", "b", "c"],
                            min_score=0.5)
    outlined = [bool(drawn[r * 100 + 80, c * 100 + 30].any()) for r, c in zip(rows, cols)]   # left edges
    assert outlined == [True] * 20 + [False] * 10
    assert list(drawing.top_detections(scores, 0.5)) == list(range(20))
    assert list(drawing.top_detections([0.2, 0.9, 0.4], 0.3, max_drawn=1)) == [1]


def test_accepts_tensors_and_no_boxes():
    image = tf.fill([10, 12, 3], tf.constant(7, tf.uint8))
    drawn = draw_boxes(image, tf.zeros([0, 4]), tf.zeros([0], tf.int32))
    np.testing.assert_array_equal(drawn, np.full([10, 12, 3], 7, np.uint8))
    image = tf.fill([40, 48, 3], tf.constant(7, tf.uint8))
    drawn = draw_boxes(image, tf.constant([[0.0, 0.0, 1.0, 1.0]]), tf.constant([3]), color=(0, 255, 0))
    np.testing.assert_array_equal(drawn[39, 30], [0, 255, 0])   # bottom edge, below the caption


@pytest.mark.parametrize("side,expected", [(300, (2, 11)), (1080, (4, 36)), (40, (2, 10))])
def test_line_and_font_grow_with_the_image(side, expected):
    assert drawing._sizes(side, side * 2) == expected
