import pytest

from engine import checkpoints
from model import presets


def test_write_read_round_trip_and_refuse_another_model(tmp_path):
    config = presets.get("ssd300_vgg16", 2, width_multiplier=0.125)
    checkpoints.write(str(tmp_path), config, ("cat", "dog"))
    assert checkpoints.read(str(tmp_path)) == (config, ("cat", "dog"))
    checkpoints.write(str(tmp_path), config, ("cat", "dog"))  # same model: resuming is fine
    with pytest.raises(ValueError, match="trained with another model"):
        checkpoints.write(str(tmp_path), presets.get("ssd300_vgg16", 2, width_multiplier=0.25), ("cat", "dog"))
    with pytest.raises(ValueError, match="trained with another model"):
        checkpoints.write(str(tmp_path), config, ("dog", "cat"))


def test_read_of_a_folder_without_config_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        checkpoints.read(str(tmp_path))


def test_resolve_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        checkpoints.resolve_checkpoint(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ckpt-7.index missing"):
        checkpoints.resolve_checkpoint(checkpoint_path=str(tmp_path / "ckpt-7"))
