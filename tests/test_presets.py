import pytest

from model import presets


def test_derived_counts_follow_the_paper():
    ssd300 = presets.get("ssd300_vgg16", 20)
    # 38^2*4 + 19^2*6 + 10^2*6 + 5^2*6 + 3^2*4 + 1*4 = 5776 + 2166 + 600 + 150 + 36 + 4
    assert ssd300.boxes_per_location == (4, 6, 6, 6, 4, 4)
    assert ssd300.num_anchors == 8732
    # 64^2*4 + 32^2*6 + 16^2*6 + 8^2*6 + 4^2*6 + 2^2*4 + 1*4
    assert presets.get("ssd512_vgg16", 20).num_anchors == 16384 + 6144 + 1536 + 384 + 96 + 16 + 4


def test_overrides_and_width_multiplier():
    config = presets.get("ssd300_vgg16", 3, width_multiplier=0.25)
    assert config.num_classes == 3 and config.channels(512) == 128 and config.channels(2) == 1


def test_unknown_preset_and_bad_class_count_are_named():
    with pytest.raises(ValueError, match="ssd301"):
        presets.get("ssd301", 20)
    with pytest.raises(ValueError, match="num_classes"):
        presets.get("ssd300_vgg16", 0)


def test_json_round_trip():
    for name in presets.NAMES:
        config = presets.get(name, 7, width_multiplier=0.5)
        assert presets.from_json(presets.to_json(config)) == config


def test_caffe_fidelity_fields():
    for name in ("ssd300_vgg16", "ssd512_vgg16"):
        config = presets.get(name, 20)
        assert config.matching == "caffe_bipartite" and config.integer_prior_sizes
    # A config.json written before these fields existed still loads, with the defaults.
    import json
    values = json.loads(presets.to_json(presets.get("ssd300_vgg16", 20)))
    del values["matching"], values["integer_prior_sizes"]
    old = presets.from_json(json.dumps(values))
    assert old.matching == "caffe_bipartite" and old.integer_prior_sizes is False
