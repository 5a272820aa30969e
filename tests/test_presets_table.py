"""README's table of presets is the generated one (`fewshot presets --markdown`)."""
from pathlib import Path

from fewshot.config import load_preset, preset_names
from fewshot.presets_table import markdown, network, task

from helpers import run

README = Path(__file__).resolve().parents[1] / "README.md"
OPEN = "<!-- the table below is `fewshot presets --markdown`; tests/test_presets_table.py keeps them equal -->"
CLOSE = "<!-- end of the generated table -->"


def test_the_readme_table_is_the_generated_one():
    text = README.read_text()
    assert text.count(OPEN) == 1 and text.count(CLOSE) == 1
    table = text.split(OPEN)[1].split(CLOSE)[0].strip("\n")
    assert table == markdown(), "regenerate it: fewshot presets --markdown"


def test_the_table_has_a_row_per_preset_read_from_its_config(capsys):
    code, out, _ = run(capsys, "presets", "--markdown")
    rows = out.strip().splitlines()[2:]
    assert code == 0 and [r.split("|")[1].strip(" `") for r in rows] == preset_names()
    reptile = next(r for r in rows if r.startswith("| `reptile-omniglot-5w5s`"))
    config = load_preset("reptile-omniglot-5w5s")
    assert f"{config.eval_inner_steps} inner steps at lr {config.eval_inner_lr or config.inner_lr}" in reptile
    leo = next(r for r in rows if r.startswith("| `leo-miniimagenet-conv4-5w1s`"))
    assert "on 800-d embeddings" in leo and "learned" in leo


def test_cells_come_from_the_config_keys():
    config = load_preset("protonet-omniglot-5w1s")
    assert task(config) == "60 / 1 / 5; 5 / 1 / 15"  # 60-way training episodes, 5-way tests
    # cbfinn/maml's Omniglot network: TensorFlow's batch norm (a shift, no scale; eps 0.001), 'SAME'
    # padding and a normal head; shape keys show at their defaults, the others only away from them
    assert network(load_preset("omniglot-5w1s")) == ("conv4 (filters 64, downsample stride, no bn_scale, bn_eps 0.001, "
                                                     "conv_padding tf_same, head_init normal)")
    assert network(load_preset("protonet-omniglot-5w1s")) == "conv4 (filters 64, downsample maxpool, batch_norm inductive, no head)"
    assert network(load_preset("mamlpp-omniglot-5w1s")) == ("conv4 (filters 64, downsample maxpool, per_step_bn, "
                                                           "leaky_relu)")
    assert network(load_preset("sinusoid-5shot")) == "mlp (in_features 1, hidden [40, 40], out_features 1)"
