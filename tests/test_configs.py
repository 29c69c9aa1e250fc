"""configs/*.flags: each parses as train_ssd.py's flags and builds its model."""

import glob
import json
import os
import subprocess
import sys

import pytest

from model import presets
from nets import ssd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.flags")))
# Object classes of each recipe's dataset (VOC 20, COCO 80); train_ssd.py reads them from the label map.
CLASSES = {"ssd300_voc0712": 20, "ssd512_voc0712": 20, "ssd300_coco": 80, "mlperf_ssd_resnet34_1x8": 80,
           "ssdlite320_mobilenet_v3_large": 80}
# In its own process, so no other script's flags clash: train_ssd.py's flags parse the file as
# `train_ssd.py --flagfile` does. The recipes' data is not here, so the data folder is pointed at a stand-in
# holding a label map and the backbone requirement is lifted; every other value is the file's.
_PARSE = """
import json, sys
from absl import flags
import train_ssd
argv = flags.FLAGS.read_flags_from_files(["train_ssd.py", "--flagfile=" + sys.argv[1]], force_gnu=False)
file_values = [a for a in argv if a.startswith("--data_dir=")]
flags.FLAGS(argv + ["--data_dir=" + sys.argv[2], "--norequire_pretrained"])
values = {n: flags.FLAGS[n].value for n in flags.FLAGS if flags.FLAGS[n].present}
values["data_dir"] = file_values[-1].split("=", 1)[1] if file_values else None
print(json.dumps(values))
"""


def _parse(path, tmp_path):
    """The flag values the file sets, as train_ssd.py parses them."""
    (tmp_path / "label_map.pbtxt").write_text('item {\n  name: "a"\n  id: 1\n}\n')
    result = subprocess.run([sys.executable, "-c", _PARSE, path, str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_recipe_is_here():
    assert sorted(os.path.basename(p)[:-len(".flags")] for p in CONFIGS) == sorted(CLASSES)


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_config_parses_and_builds(path, tmp_path):
    values = _parse(path, tmp_path)
    assert values["model_dir"].startswith("logs/") and values["batch_size"] in (32, 192, 1024)
    name = os.path.basename(path)[:-len(".flags")]
    config = presets.get(values["model"], CLASSES[name])
    model = ssd.build(config)
    assert model.outputs[0].shape[1] == config.num_anchors
    if name.startswith("mlperf"):
        assert values["mlperf"] and values["target_map"] == 0.23 and config.backbone == "resnet34"
