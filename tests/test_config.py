"""Config values are checked by type and range, finite numbers included, before any work starts."""
import math

import pytest
import yaml

from fewshot import config as config_module
from fewshot.config import (DEFAULTS, Config, apply_overrides, complete, dump, load_preset, parse_overrides,
                            preset_names, validate)
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
    ("inner_batch=0", "inner_batch must be a whole number >= 1 or null (at most 1000000)"),
    ("threads=0", "threads must be a whole number >= 1 or null (at most 4096)"),
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
    ("dataset=imagenet", "unknown dataset 'imagenet'; choose one of: embeddings, folder, miniimagenet, omniglot, "
                         "sinusoid"),
    ("algorithm=mamlxx", "unknown algorithm 'mamlxx'; choose one of: anil, leo, maml"),
    ("model=resnet99", "unknown model 'resnet99'; choose one of: conv4, mlp, none"),
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
    assert config.inner_lr == 1 and config.hidden == [8, 8] and config.batch_tasks is True


def test_mamlpp_refuses_more_test_steps_than_trained_rates():
    config = load_preset("mamlpp-omniglot-5w1s")
    assert config.inner_steps == 5
    config.replace(eval_inner_steps=5)
    with pytest.raises(FewshotError, match=r"eval_inner_steps \(6\) > inner_steps \(5\).*--set eval_inner_steps=5"):
        config.replace(eval_inner_steps=6)
    load_preset("omniglot-5w1s").replace(eval_inner_steps=10, inner_steps=1)  # MAML may adapt longer


def test_a_preset_file_with_a_non_finite_value_is_refused(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"inner_lr": math.nan}))
    config = load_preset(str(path))  # the file is read; the value is checked with the rest
    with pytest.raises(FewshotError, match="inner_lr must be a finite number"):
        validate(config)


def test_every_key_is_checked_by_its_type():
    """The checks are generated from the schema: no key escapes them (a mapping is no value of any key)."""
    for key in DEFAULTS:
        with pytest.raises(FewshotError) as error:
            validate({**load_preset("omniglot-5w1s").to_dict(), key: {"a": 1}})
        assert str(error.value).startswith(f"{key} must be ") and "\n" not in str(error.value)


def test_defaults_are_the_schemas():
    fresh = Config()
    assert list(DEFAULTS) == [name for name in config_module.FIELDS if name != "preset"]
    assert all(getattr(fresh, key) == value for key, value in DEFAULTS.items())
    assert DEFAULTS["inner_lr"] == 0.4 and DEFAULTS["hidden"] == [40, 40] and DEFAULTS["eval_query"] is None
    assert Config().hidden is not Config().hidden  # a list default is not shared between configs


@pytest.mark.parametrize("preset,pairs,message", [
    ("mamlpp-omniglot-5w1s", ["model=resnet12"], "per_step_bn: true would be ignored: only model conv4 reads it"),
    ("omniglot-5w1s", ["per_step_bn=true", "model=wrn28_10"], "per_step_bn: true would be ignored"),
    ("omniglot-5w1s", ["algorithm=protonet"], "protonet classifies by the distance"),
    ("omniglot-5w1s", ["algorithm=reptile"], "loss_reduction: sum_div_shots would be ignored: only algorithms"),
    ("omniglot-5w1s", ["inner_optimizer=adam"], "inner_optimizer: adam would be ignored: only algorithm reptile"),
    ("omniglot-5w1s", ["msl_epochs=3"], "msl_epochs: 3 would be ignored: only algorithm mamlpp reads it"),
    ("reptile-omniglot-5w1s", ["algorithm=maml"], "inner_optimizer: adam would be ignored"),
    ("omniglot-5w1s", ["kl_weight=0.5"], "kl_weight: 0.5 would be ignored: only algorithm leo reads it"),
    ("protonet-omniglot-5w1s", ["first_order=true"],
     "first_order: true would be ignored: only algorithms anil, maml, mamlpp, metasgd read it"),
    ("omniglot-5w1s", ["widths=[8, 8, 8, 8]"], "widths: [8, 8, 8, 8] would be ignored"),
    ("omniglot-5w1s", ["embedding_crop=multiview"], "only dataset embeddings reads it"),
    ("sinusoid-10shot", ["batch_norm=inductive"], "batch_norm: inductive would be ignored"),
    ("sinusoid-10shot", ["affine_distortion=true"],
     "affine_distortion: true would be ignored: only datasets folder, miniimagenet, omniglot read it"),
    # the learned rates of Meta-SGD and MAML++ serve at meta-test; ProtoNets and LEO have no such rate
    ("metasgd-omniglot-5w1s", ["eval_inner_lr=0.1"],
     "eval_inner_lr: 0.1 would be ignored: only algorithms anil, maml, reptile read it, and this algorithm is metasgd"),
    ("mamlpp-omniglot-5w1s", ["eval_inner_lr=0.1"], "eval_inner_lr: 0.1 would be ignored"),
    ("protonet-omniglot-5w1s", ["eval_inner_lr=0.1"], "eval_inner_lr: 0.1 would be ignored"),
    ("leo-miniimagenet-5w1s", ["eval_inner_lr=0.1"], "eval_inner_lr: 0.1 would be ignored"),
    # no gradient inner loop on the network's weights: LEO's latent steps have keys of their own
    ("protonet-omniglot-5w1s", ["inner_steps=3"], "inner_steps: 3 would be ignored"),
    ("protonet-omniglot-5w1s", ["inner_lr=0.1"], "inner_lr: 0.1 would be ignored"),
    ("protonet-omniglot-5w1s", ["eval_inner_steps=3"], "eval_inner_steps: 3 would be ignored"),
    ("protonet-omniglot-5w1s", ["eval_at_steps=[0, 1]"], "eval_at_steps: [0, 1] would be ignored"),
    ("leo-miniimagenet-5w1s", ["inner_steps=3"],
     "inner_steps: 3 would be ignored: only algorithms anil, maml, mamlpp, metasgd, reptile read it, and this "
     "algorithm is leo; remove inner_steps from the preset or --set inner_steps=5"),
    ("leo-miniimagenet-5w1s", ["inner_lr=0.1"], "inner_lr: 0.1 would be ignored"),
    # ANIL adapts the head only and MAML++ never adapts batch norm: whether it is adapted is not theirs to say
    ("anil-omniglot-5w1s", ["adapt_bn=false"],
     "adapt_bn: false would be ignored: only algorithms maml, metasgd read it, and this algorithm is anil"),
    ("mamlpp-omniglot-5w1s", ["adapt_bn=false"], "adapt_bn: false would be ignored"),
    # the step schedule's keys under the others, and the others' floor under the step schedule
    ("mamlpp-omniglot-5w1s", ["lr_decay_every=1000"],
     "lr_decay_every: 1000 would be ignored: only lr_schedule step reads it, and this lr_schedule is cosine"),
    ("reptile-omniglot-5w1s", ["lr_decay_every=1000"], "and this lr_schedule is linear"),
    ("reptile-omniglot-5w1s", ["lr_decay_gamma=0.1"], "lr_decay_gamma: 0.1 would be ignored"),
    ("omniglot-5w1s", ["min_meta_lr=0.0001"],
     "min_meta_lr: 0.0001 would be ignored: only lr_schedules cosine, linear read it, and this lr_schedule is step"),
])
def test_a_setting_that_would_be_ignored_is_refused_in_one_line(preset, pairs, message):
    with pytest.raises(FewshotError) as error:
        apply_overrides(load_preset(preset), parse_overrides(pairs))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert "--set " in str(error.value) or "remove " in str(error.value)  # and says what to do


def test_mamlpp_refuses_more_test_steps_in_eval_at_steps_too():
    config = load_preset("mamlpp-omniglot-5w1s")
    config.replace(eval_at_steps=[0, 1, 5])
    with pytest.raises(FewshotError, match=r"eval_at_steps \(\[0, 6\]\) > inner_steps \(5\).*--set eval_at_steps=\[5\]"):
        config.replace(eval_at_steps=[0, 6])


@pytest.mark.parametrize("preset,asked,message", [
    ("mamlpp-omniglot-5w1s", {"eval_inner_steps": 6},
     r"^MAML\+\+ learns a rate and batch-norm weights per inner step, so eval_inner_steps \(6\) > inner_steps "
     r"\(5\) would adapt with untrained ones; ask this run for at most 5 inner steps$"),
    ("mamlpp-omniglot-5w1s", {"eval_at_steps": [0, 1, 8]}, r"eval_at_steps \(\[0, 1, 8\]\) > inner_steps \(5\)"),
    # asked of a run, a key its algorithm does not read is refused even at the default's value
    ("protonet-omniglot-5w1s", {"eval_inner_steps": 10},
     r"^eval_inner_steps: 10 would be ignored: only algorithms anil, leo, maml, mamlpp, metasgd, reptile read it, "
     r"and this algorithm is protonet; ask this run for no eval_inner_steps: its algorithm has no use for it$"),
    ("protonet-omniglot-5w1s", {"eval_at_steps": [0]}, r"eval_at_steps: \[0\] would be ignored"),
    ("omniglot-5w1s", {"eval_inner_steps": -1}, "eval_inner_steps must be a whole number >= 0"),
])
def test_meta_test_settings_asked_of_a_run_are_checked_as_a_presets(preset, asked, message):
    """`fewshot eval` and `predict` ask a trained run for other inner steps: what a preset may
    not set, they may not ask (config.meta_test)."""
    with pytest.raises(FewshotError, match=message):
        config_module.meta_test(load_preset(preset), **asked)


def test_meta_test_settings_a_run_can_take_change_a_copy():
    config = load_preset("mamlpp-omniglot-5w1s")
    asked = config_module.meta_test(config, eval_inner_steps=3, eval_at_steps=[0, 5])
    assert (asked.eval_inner_steps, asked.eval_at_steps) == (3, [0, 5]) and config.eval_inner_steps == 5
    assert config_module.meta_test(load_preset("omniglot-5w1s"), eval_inner_steps=50).eval_inner_steps == 50


def test_a_key_at_its_default_is_never_refused_under_another_algorithm():
    config = apply_overrides(load_preset("omniglot-5w1s"), {"msl_epochs": 0, "inner_optimizer": "sgd"})
    assert config.algorithm == "maml"
    apply_overrides(load_preset("omniglot-5w1s"), {"model": "resnet12"})  # downsample travels with the preset


def test_unknown_keys_are_refused_with_the_closest_name():
    with pytest.raises(FewshotError, match=r"unknown config key 'shotz' in --set \(did you mean 'shots'\?\)"):
        parse_overrides(["shotz=1"])
    with pytest.raises(FewshotError, match="unknown config key 'inner_lrr' in the config"):
        validate({**load_preset("omniglot-5w1s").to_dict(), "inner_lrr": 0.1})


def test_config_is_typed_attributes_not_a_mapping(tmp_path):
    config = apply_overrides(load_preset("omniglot-5w1s"), {"steps": 7})
    assert isinstance(config, Config) and validate(config) is config and config.steps == 7
    values = config.to_dict()
    assert list(values) == list(config_module.FIELDS) and values["preset"] == "omniglot-5w1s"
    assert yaml.safe_load(dump(config)) == values == yaml.safe_load(yaml.safe_dump(config))
    with pytest.raises(TypeError):  # no mapping protocol: the library reads typed fields
        config["steps"]
    with pytest.raises(AttributeError):  # slots: a misspelt key is an error, not a new attribute
        config.stepz = 9
    config.steps = 9
    assert config.replace(steps=3).steps == 3 and config.steps == 9
    assert config.unchecked_replace(steps=0).steps == 0  # internal configs no user wrote: not checked
    import copy
    twin = copy.deepcopy(config)
    assert isinstance(twin, Config) and twin == config and twin.hidden is not config.hidden
    with pytest.raises(FewshotError, match="steps must be a whole number"):
        config.replace(steps=0)


def test_a_config_in_a_checkpoint_is_plain_data(tmp_path):
    """torch.load(weights_only=True) refuses classes: checkpoint.save writes a Config as its
    mapping, and checkpoint.load makes it a Config again."""
    import pickle
    import torch
    from fewshot import checkpoint
    config = load_preset("omniglot-5w1s")
    checkpoint.save(tmp_path / "c.pt", config=config, algorithm={}, step=0)
    saved = torch.load(tmp_path / "c.pt", weights_only=True)["config"]
    assert type(saved) is dict and saved == config.to_dict()
    assert checkpoint.load(tmp_path / "c.pt")["config"] == config
    assert complete(saved) == config and isinstance(complete(saved), Config)
    assert pickle.loads(pickle.dumps(config)) == config  # a Config crosses into --procs processes as itself


def test_complete_fills_keys_added_since_and_drops_keys_it_does_not_know():
    old = {k: v for k, v in load_preset("omniglot-5w1s").to_dict().items() if k not in ("precision", "compile")}
    completed = complete({**old, "from_a_newer_version": 1})
    assert isinstance(completed, Config) and completed.precision == "fp32" and completed.compile is False
    assert "from_a_newer_version" not in completed.to_dict() and completed.inner_lr == 0.4
    validate(completed)


def test_a_saved_config_with_a_setting_its_algorithm_ignored_still_loads():
    """Runs saved before the combination checks: the ignored key goes back to its default
    (it changed nothing then), so the run resumes; the keys the run reads are kept."""
    saved = {**load_preset("omniglot-5w1s").to_dict(), "inner_optimizer": "adam", "msl_epochs": 4, "kl_weight": 2.0}
    with pytest.raises(FewshotError, match="would be ignored"):
        validate(saved)
    completed = validate(complete(saved))
    assert (completed.inner_optimizer, completed.msl_epochs, completed.kl_weight) == ("sgd", 0, 0.001)
    assert completed.to_dict() == {**saved, "inner_optimizer": "sgd", "msl_epochs": 0, "kl_weight": 0.001}
    mamlpp = load_preset("mamlpp-omniglot-5w1s").to_dict()
    assert complete(mamlpp).to_dict() == mamlpp  # a key the algorithm reads is never touched


def test_saved_configs_with_keys_now_refused_still_load():
    """ProtoNets presets once set inner_steps: 0 and eval_inner_steps: 0, and a cosine run could
    carry lr_decay_every: such runs resume and evaluate as before, those keys back at their
    defaults (they changed nothing)."""
    protonet = {**load_preset("protonet-omniglot-5w1s").to_dict(), "inner_steps": 0, "eval_inner_steps": 0,
                "eval_inner_lr": 0.1}
    cosine = {**load_preset("mamlpp-omniglot-5w1s").to_dict(), "lr_decay_every": 2000, "eval_inner_lr": 0.5}
    for saved in (protonet, cosine):
        with pytest.raises(FewshotError, match="would be ignored"):
            validate(saved)
        assert validate(complete(saved)).eval_inner_lr is None
    assert (complete(protonet).inner_steps, complete(protonet).eval_inner_steps) == (5, 10)
    assert complete(protonet).lr_decay_every == 2000 and complete(cosine).lr_decay_every == 0  # step: read


def test_which_keys_an_algorithm_reads_is_its_own_declaration(monkeypatch):
    """Adding an algorithm is one file: a class registered with its `reads` is all the config
    checks and `fewshot presets --keys` need."""
    from fewshot.algorithms import ALGORITHMS
    from fewshot.algorithms.base import Algorithm
    ALGORITHMS.names()  # loaded before the entry is added, so the new one stays
    monkeypatch.setitem(ALGORITHMS.entries, "steps_only", type("StepsOnly", (Algorithm,), {
        "reads": frozenset({"inner_steps", "eval_inner_steps"})}))
    base = load_preset("omniglot-5w1s-pytorch").to_dict()  # no key only the MAML family reads
    assert validate({**base, "algorithm": "steps_only", "inner_steps": 3}).inner_steps == 3
    with pytest.raises(FewshotError, match="inner_lr: 0.1 would be ignored: only algorithms anil, maml, mamlpp, "
                                           "metasgd, reptile read it, and this algorithm is steps_only"):
        validate({**base, "algorithm": "steps_only", "inner_lr": 0.1})
    assert config_module.readers("inner_steps") == ("anil", "maml", "mamlpp", "metasgd", "reptile", "steps_only")
    rows = {line.split()[0]: line for line in config_module.schema_lines()[1:]}
    assert "steps_only" in rows["eval_inner_steps"] and "steps_only" not in rows["inner_lr"]


@pytest.mark.parametrize("reads,message", [
    ({"inner_stepz"}, "algorithm 'bad' declares that it reads 'inner_stepz', which config.Config has no key named"),
    ({"meta_lr"}, "declares that it reads 'meta_lr', which config.Config has no key read_by 'algorithm'"),
])
def test_a_declaration_the_schema_does_not_expect_is_a_bug(monkeypatch, reads, message):
    """A misspelt key, or one the trainer reads for every algorithm (declaring it would refuse
    it under all the others), fails loudly at the first check instead of refusing quietly."""
    from fewshot.algorithms import ALGORITHMS
    from fewshot.algorithms.base import Algorithm
    ALGORITHMS.names()
    monkeypatch.setitem(ALGORITHMS.entries, "bad", type("Bad", (Algorithm,), {"reads": frozenset(reads)}))
    with pytest.raises(ValueError, match=message):
        validate(load_preset("omniglot-5w1s"))


def test_a_key_read_by_the_model_that_no_backbone_declares_is_a_bug(monkeypatch):
    from fewshot.models import BACKBONES
    conv4 = BACKBONES.get("conv4")
    monkeypatch.setattr(conv4, "reads", conv4.reads - {"per_step_bn"})
    with pytest.raises(ValueError, match="config key 'per_step_bn' is read_by the model, but no model declares it"):
        validate(load_preset("omniglot-5w1s"))


def test_the_schema_lists_every_key_with_type_default_range_and_readers():
    lines = config_module.schema_lines()
    assert lines[0].split() == ["key", "type", "default", "range", "read", "by", "meaning"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == list(DEFAULTS)
    assert rows["inner_lr"].split()[:5] == ["inner_lr", "float", "0.4", "finite,", ">="]
    assert rows["msl_epochs"].split()[:6] == ["msl_epochs", "int", "0", ">=", "0", "mamlpp"]
    assert rows["eval_query"].split()[:9] == ["eval_query", "int", "|", "null", "null", ">=", "1,", "<=", "10000"]
    assert "sgd | adam" in rows["inner_optimizer"] and "reptile" in rows["inner_optimizer"]
    # the readers of a key are the classes that declare it
    for name, reading in [("eval_inner_lr", "anil,maml,reptile"), ("inner_steps", "anil,maml,mamlpp,metasgd,reptile"),
                          ("batch_norm", "conv4,resnet12,wrn28_10"), ("embedding_crop", "embeddings"),
                          ("eval_at_steps", "anil,leo,maml,mamlpp,metasgd,reptile,evaluator"),
                          ("lr_decay_every", "lr_schedule=step,trainer")]:
        assert f" {reading} " in rows[name], rows[name]
