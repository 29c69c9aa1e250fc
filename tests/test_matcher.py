import numpy as np
import pytest
import tensorflow as tf

from model import matcher

NO = matcher.NO_MATCH


def _match(iou, valid=None, threshold=0.5, rule=matcher.SSD_PYTORCH):
    iou = np.asarray(iou, np.float32)
    if valid is None:
        valid = np.ones(iou.shape[:2], bool)
    return matcher.match(iou, valid, threshold, rule).numpy()


def _caffe(iou, valid=None, threshold=0.5):
    return _match(iou, valid, threshold, matcher.CAFFE_BIPARTITE)


def test_default_rule_is_caffe_bipartite():
    iou = np.array([[[0.9, 0.5], [0.8, 0.1]]], np.float32)
    np.testing.assert_array_equal(matcher.match(iou, np.ones((1, 2), bool), 0.5).numpy(), _caffe(iou))


def test_hand_built_iou_matrix():
    iou = [[[0.7, 0.6, 0.1, 0.0, 0.3],      # gt 0: best anchor 0
            [0.2, 0.55, 0.0, 0.4, 0.45]]]   # gt 1: best anchor 1, where it beats gt 0's 0.6 by claiming
    # anchor 0: gt 0 (claim); anchor 1: gt 1 (claim, although gt 0 has the higher IoU there);
    # anchors 2-4: best IoU 0.1 / 0.4 / 0.45 < 0.5 -> background.
    np.testing.assert_array_equal(_match(iou), [[0, 1, NO, NO, NO]])


def test_threshold_is_inclusive():
    iou = [[[0.9, 0.5, 0.49]]]
    np.testing.assert_array_equal(_match(iou), [[0, 0, NO]])


def test_box_below_threshold_still_claims_its_best_anchor():
    iou = [[[0.1, 0.3, 0.2]],
           [[0.0, 0.0, 0.0]]]   # no overlap at all: the argmax tie goes to the lowest anchor index
    np.testing.assert_array_equal(_match(iou), [[NO, 0, NO], [0, NO, NO]])


def test_two_boxes_wanting_the_same_anchor_highest_gt_index_wins():
    iou = [[[0.9, 0.5],
            [0.8, 0.1]]]
    # Both claim anchor 0: gt 1 wins it. Anchor 1 then goes to gt 0 by threshold (0.5 >= 0.5).
    np.testing.assert_array_equal(_match(iou), [[1, 0]])


@pytest.mark.parametrize("rule", matcher.RULES)
def test_zero_boxes_all_background(rule):
    np.testing.assert_array_equal(_match(np.zeros((2, 0, 3)), rule=rule), np.full((2, 3), NO))
    np.testing.assert_array_equal(_match(np.ones((1, 2, 3)), valid=np.zeros((1, 2), bool), rule=rule),
                                  np.full((1, 3), NO))


@pytest.mark.parametrize("rule", matcher.RULES)
def test_padding_never_matches_nor_claims(rule):
    iou = [[[0.3, 0.2, 0.1],
            [0.9, 0.9, 0.95]]]  # padding row with high IoUs everywhere
    valid = np.array([[True, False]])
    np.testing.assert_array_equal(_match(iou, valid, rule=rule), [[0, NO, NO]])
    # Padding before a real box, and a batch whose other image has more boxes.
    iou = [[[0.9, 0.9, 0.9], [0.1, 0.3, 0.2]],
           [[0.6, 0.2, 0.1], [0.7, 0.1, 0.0]]]
    valid = np.array([[False, True], [True, True]])
    expected = {matcher.SSD_PYTORCH: [[NO, 1, NO], [1, NO, NO]],   # gt 1 steals anchor 0: gt 0 untrained
                matcher.CAFFE_BIPARTITE: [[NO, 1, NO], [1, 0, NO]]}
    np.testing.assert_array_equal(_match(iou, valid, rule=rule), expected[rule])


def test_caffe_two_boxes_sharing_a_best_anchor_both_get_one():
    iou = [[[0.9, 0.5],
            [0.8, 0.1]]]
    # Best pair (gt 0, anchor 0) 0.9 first; gt 1's best free anchor is then anchor 1 (0.1 < 0.5, still
    # its own). ssd.pytorch gives [[1, 0]]: both anchors positive, but anchor 1 is gt 0's by threshold.
    np.testing.assert_array_equal(_caffe(iou), [[0, 1]])


def test_caffe_greedy_order_is_global_not_by_box():
    # gt 0 prefers anchor 1 (0.6) but gt 1 holds the global best pair there (0.8): gt 1 takes anchor 1,
    # then gt 0 its next best, anchor 0 (0.5). Anchor 2 has 0.55 with gt 0 -> gt 0 by threshold.
    iou = [[[0.5, 0.6, 0.55],
            [0.0, 0.8, 0.3]]]
    np.testing.assert_array_equal(_caffe(iou), [[0, 1, 0]])


def test_caffe_box_overlapping_no_anchor_gets_none():
    # Caffe keeps only overlaps > 1e-6: a box touching no anchor stays unmatched (ssd.pytorch forces
    # anchor 0, the argmax of zeros).
    iou = [[[0.0, 0.0, 0.0], [0.0, 2e-7, 0.0], [0.1, 0.3, 0.2]]]
    np.testing.assert_array_equal(_caffe(iou), [[NO, 2, NO]])
    np.testing.assert_array_equal(_match(iou), [[0, 2, NO]])


def test_caffe_ties_lowest_anchor_then_lowest_box():
    iou = [[[0.4, 0.7, 0.7],
            [0.7, 0.2, 0.0]]]
    # Three pairs at 0.7: (gt0, a1), (gt0, a2), (gt1, a0). Lowest anchor first: gt1 takes a0; then gt0
    # takes a1 (lower than a2). Anchor 2: 0.7 >= 0.5 -> gt 0.
    np.testing.assert_array_equal(_caffe(iou), [[1, 0, 0]])
    iou = [[[0.7, 0.1], [0.7, 0.6]]]
    # Tie on anchor 0 between gt 0 and gt 1: the lower box wins, gt 1 then takes anchor 1.
    np.testing.assert_array_equal(_caffe(iou), [[0, 1]])


def _caffe_match_loop(iou, valid, threshold):
    """Caffe's MatchBBox (bbox_util.cpp, PER_PREDICTION) as its loops read, for one image."""
    num_gt, num_anchors = iou.shape
    gts = [g for g in range(num_gt) if valid[g]]
    match = [NO] * num_anchors
    overlaps = {a: {g: iou[g, a] for g in gts if iou[g, a] > 1e-6} for a in range(num_anchors)}
    pool = list(gts)
    while pool:
        best_a, best_g, best = -1, -1, -1.0
        for a in range(num_anchors):
            if match[a] != NO:
                continue
            for g in pool:
                if g in overlaps[a] and overlaps[a][g] > best:
                    best_a, best_g, best = a, g, overlaps[a][g]
        if best_a == -1:
            break
        match[best_a] = best_g
        pool.remove(best_g)
    for a in range(num_anchors):
        if match[a] != NO:
            continue
        best_g, best = -1, -1.0
        for g in gts:
            if g in overlaps[a] and overlaps[a][g] >= threshold and overlaps[a][g] > best:
                best_g, best = g, overlaps[a][g]
        if best_g != -1:
            match[a] = best_g
    return match


def test_caffe_equals_matchbbox_loops_on_random_crowded_sets():
    rng = np.random.default_rng(3)
    batch, num_gt, num_anchors = 6, 9, 40
    # Coarse IoU values force many exact ties and shared best anchors; some padding, some zero rows.
    iou = rng.choice([0.0, 0.1, 0.3, 0.5, 0.6, 0.8], size=(batch, num_gt, num_anchors), p=[.5, .2, .1, .1, .05, .05])
    iou[:, :, : num_anchors // 2] = rng.uniform(0, 1, (batch, num_gt, num_anchors // 2)) ** 4
    iou[1] = 0.0
    iou = iou.astype(np.float32)
    valid = rng.uniform(size=(batch, num_gt)) < 0.8
    got = _caffe(iou, valid)
    for b in range(batch):
        np.testing.assert_array_equal(got[b], _caffe_match_loop(iou[b], valid[b], 0.5), err_msg=f"image {b}")
    # Every valid box overlapping some anchor has one of its own (the promise ssd.pytorch breaks).
    for b in range(batch):
        for g in np.flatnonzero(valid[b]):
            assert (g in got[b]) == bool((iou[b, g] > 1e-6).any())


def test_caffe_equals_forced_claims_when_best_anchors_distinct():
    rng = np.random.default_rng(5)
    iou = rng.uniform(0, 0.45, size=(1, 4, 30)).astype(np.float32)
    for g, a in enumerate([3, 11, 17, 29]):
        iou[0, g, a] = 0.9 - 0.1 * g
    np.testing.assert_array_equal(_caffe(iou), _match(iou))
    # The shortcut taken here (no shared best anchor) equals the greedy rounds themselves.
    top_iou, top_anchor = tf.math.top_k(tf.constant(iou), k=4)
    np.testing.assert_array_equal(matcher._greedy_rounds(top_iou, top_anchor, 30).numpy()[0], [3, 11, 17, 29])



@pytest.mark.parametrize("rule", matcher.RULES)
def test_flat_boxes_equal_each_image_alone(rule):
    """match_boxes (what encode_targets calls) on the boxes of four images laid out flat, 3 / 0 / 6 / 1
    of them, equals each image matched alone; box numbers are flat (image 2's first box is p = 3)."""
    rng = np.random.default_rng(11)
    counts, num_anchors = [3, 0, 6, 1], 25
    iou = rng.choice([0.0, 0.2, 0.5, 0.7, 0.9], size=(sum(counts), num_anchors)).astype(np.float32)
    iou[3:9, 4] = 0.95                      # image 2's six boxes share their best anchor: greedy rounds
    image_index = np.repeat(np.arange(4), counts).astype(np.int32)
    got = matcher.match_boxes(iou, image_index, 4, 0.5, rule).numpy()
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for b, n in enumerate(counts):
        alone = _match(iou[None, first[b]:first[b] + n], rule=rule)[0]
        np.testing.assert_array_equal(got[b], np.where(alone == NO, NO, alone + first[b]), err_msg=f"image {b}")
        if rule == matcher.CAFFE_BIPARTITE and n:
            np.testing.assert_array_equal(alone, _caffe_match_loop(iou[first[b]:first[b] + n], [True] * n, 0.5))
    assert (got[1] == NO).all()
    # Anchor 4, the six-way tie: Caffe gives it to the lowest box, ssd.pytorch's claims to the highest.
    assert got[2][4] == (3 if rule == matcher.CAFFE_BIPARTITE else 8)


@pytest.mark.parametrize("rule", matcher.RULES)
def test_vectorised_in_graph_with_unknown_sizes(rule):
    fn = tf.function(lambda iou, valid, threshold: matcher.match(iou, valid, threshold, rule), input_signature=[
        tf.TensorSpec([None, None, None], tf.float32), tf.TensorSpec([None, None], tf.bool),
        tf.TensorSpec([], tf.float32)])
    iou = np.array([[[0.7, 0.6, 0.1]], [[0.2, 0.1, 0.3]]], np.float32)
    got = fn(iou, np.ones((2, 1), bool), 0.5).numpy()
    np.testing.assert_array_equal(got, [[0, 0, NO], [NO, NO, 0]])
    assert got.dtype == np.int32
    np.testing.assert_array_equal(fn(np.zeros((2, 0, 3), np.float32), np.zeros((2, 0), bool), 0.5).numpy(),
                                  np.full((2, 3), NO))


def test_unknown_rule_is_named():
    with pytest.raises(ValueError, match="hungarian"):
        matcher.match(np.zeros((1, 1, 2), np.float32), np.ones((1, 1), bool), 0.5, "hungarian")
