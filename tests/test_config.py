"""Config values are checked by type and range, finite numbers included, before any work starts."""
import math

import pytest
import yaml

from fewshot.config import DEFAULTS, apply_overrides, load_preset, parse_overrides, preset_names, validate
from fewshot.errors import FewshotError


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_passes_the_checks(name):
    validate(load_preset(name))


@pytest.mark.parametrize("pair,message", [
    ("inner_lr=nan", "inner_lr must be a finite number >= 0, got 'nan'"),  # YAML reads nan as a word
    ("inner_lr=.nan", "inner_lr must be a finite number >= 0, got nan"),
    ("inner_lr=-.inf", "inner_lr must be a finite number"),
    ("inner_lr=-0.1", "inner_lr must be a finite number >= 0"),
    ("meta_lr=abc", "meta_lr must be a finite number"),
    ("meta_lr=[0.1]", "meta_lr must be a finite number"),
    ("eval_inner_lr=.inf", "eval_inner_lr must be a finite number >= 0 or null"),
    ("stop_at_val=.nan", "stop_at_val must be a finite number"),
    ("val_every=0", "val_every must be a whole number >= 1"),
    ("log_every=0", "log_every must be a whole number >= 1"),
    ("save_every=-2", "save_every must be a whole number >= 1"),
    ("val_tasks=0", "val_tasks must be a whole number >= 1"),
    ("steps=2.0", "steps must be a whole number"),
    ("steps=yes", "steps must be a whole number"),  # YAML 1.1: yes is true, and a bool is no count
    ("seed=-1", "seed must be a whole number >= 0"),
    ("filters=0", "filters must be a whole number >= 1"),
    ("image_size=0", "image_size must be a whole number >= 1"),
    ("inner_batch=0", "inner_batch must be a whole number >= 1 or null"),
    ("threads=0", "threads must be a whole number >= 1 or null"),
    ("lr_decay_gamma=0", "lr_decay_gamma must be a finite number > 0"),
    ("grad_clip_value=0", "grad_clip_value must be a finite number > 0 or null"),
    ("dropout_rate=1", "dropout_rate must be below 1"),
    ("channels=4", "channels must be 1 (gray) or 3 (colour)"),
    ("model=[conv4]", "model must be text"),
    ("description=2024-01-01", "description must be text"),
    ("init=5", "init must be a path or name"),
    ("hidden=40", "hidden must be a list of positive integers"),
    ("widths=[]", "widths must be a list of positive integers"),
    ("eval_at_steps=[0,-1]", "eval_at_steps must be a list of whole numbers >= 0"),
    ("batch_tasks=maybe", "batch_tasks must be true, false or null"),
    ("dataset=imagenet", "dataset must be one of"),
    ("embedding_crop=left", "embedding_crop must be one of"),
    ("ways=1", "ways must be at least 2 for classification"),
])
def test_a_bad_value_is_one_line_naming_the_key(pair, message):
    with pytest.raises(FewshotError) as error:
        apply_overrides(load_preset("omniglot-5w1s"), parse_overrides([pair]))
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("pair,message", [
    ("steps=[1", "is not a value YAML can read"),
    ("steps={a: 1", "is not a value YAML can read"),
    ("steps=!!python/object/apply:os.system [echo]", "YAML tags are not accepted"),
    ("hidden=[!!python/name:os.system]", "is not a value YAML can read"),
    ("=1", "--set takes KEY=VALUE"),
    ("steps", "--set takes KEY=VALUE"),
])
def test_values_yaml_cannot_read_are_refused_in_one_line(pair, message):
    with pytest.raises(FewshotError) as error:
        parse_overrides([pair])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_good_values_pass_and_keep_their_types():
    config = apply_overrides(load_preset("omniglot-5w1s"), parse_overrides(
        ["inner_lr=1", "meta_lr=0.5", "eval_inner_lr=null", "hidden=[8, 8]", "eval_at_steps=[0, 1]",
         "stop_at_val=0.9", "threads=2", "batch_tasks=true"]))
    assert config["inner_lr"] == 1 and config["hidden"] == [8, 8] and config["batch_tasks"] is True


def test_mamlpp_refuses_more_test_steps_than_trained_rates():
    config = load_preset("mamlpp-omniglot-5w1s")
    assert config["inner_steps"] == 5
    validate({**config, "eval_inner_steps": 5})
    with pytest.raises(FewshotError, match=r"eval_inner_steps \(6\) > inner_steps \(5\).*--set eval_inner_steps=5"):
        validate({**config, "eval_inner_steps": 6})
    validate({**load_preset("omniglot-5w1s"), "eval_inner_steps": 10, "inner_steps": 1})  # MAML may adapt longer


def test_a_preset_file_with_a_non_finite_value_is_refused(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"inner_lr": math.nan}))
    config = load_preset(str(path))  # the file is read; the value is checked with the rest
    with pytest.raises(FewshotError, match="inner_lr must be a finite number"):
        validate(config)


def test_every_checked_key_is_a_config_key():
    from fewshot import config
    checked = {*config.INTEGERS, *config.OPTIONAL_INTEGERS, *config.NUMBERS, *config.OPTIONAL_NUMBERS,
               *config.CHOICES, *config.TEXTS, *config.OPTIONAL_TEXTS}
    assert checked <= set(DEFAULTS)
