"""Anchor files: the JSON that `analyze_dataset.py --fit_anchors FILE` writes and
`train_ssd.py --anchor_config FILE` applies to its preset.

    {"format": "ssd_anchor_config/1", "preset": "ssd300_vgg16", "image_size": 300,
     "feature_maps": [{"source": "conv4_3_norm", "size": 38, "step": 8, "min_size": 21.0,
                       "max_size": 45.0, "aspect_ratios": [2.5]}, ...],
     "fit": {"coverage_before": 0.41, "coverage_after": 0.83, ...}}

Only min_size, max_size and aspect_ratios change the model; the rest is checked against the preset
(model/presets.py with_anchor_config) so the heads stay. The fitted config then goes into the
model_dir's config.json with everything else, so eval, export and detect rebuild the same anchors
without the file.
"""

import json

from absl import app

from dataset.atomic import write_atomically
from model import anchor_stats, presets

FORMAT = "ssd_anchor_config/1"


def write(path, config, fit_info=None):
    """Writes the anchors of `config` (and the fit's numbers, for the record) to `path` atomically."""
    content = dict(format=FORMAT, **anchor_stats.anchor_config_dict(config))
    if fit_info:
        content["fit"] = fit_info
    write_atomically(path, json.dumps(content, indent=2) + "\n")


def read(path):
    """The dict of the anchor file `path`; ValueError naming the file on anything unreadable."""
    try:
        with open(path) as f:
            content = json.load(f)
    except OSError as e:
        raise ValueError(f"anchor config {path}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"anchor config {path}: not JSON ({e})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ValueError(f"anchor config {path}: not an anchor file (no \"format\": \"{FORMAT}\"; "
                         f"write one with analyze_dataset.py --fit_anchors)")
    return content


def apply(config, path):
    """`config` with the anchors of the file at `path`; ValueError naming the file and the problem."""
    content = read(path)
    if content.get("preset") not in (None, config.name):
        raise ValueError(f"anchor config {path} was fitted for preset {content['preset']}, "
                         f"not {config.name}")
    try:
        return presets.with_anchor_config(config, content)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def overrides(path, preset_name):
    """presets.get overrides for train_ssd.py: {} without a file, else {"feature_maps": ...}.

    A bad file is an app.UsageError, so the script exits with one line naming it, no traceback.
    """
    if not path:
        return {}
    try:
        return {"feature_maps": apply(presets.get(preset_name, 1), path).feature_maps}
    except ValueError as e:
        raise app.UsageError(str(e)) from None
