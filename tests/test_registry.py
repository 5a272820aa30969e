import sys
import types

import pytest

from fewshot.errors import FewshotError
from fewshot.registry import Registry


def test_modules_are_imported_on_the_first_lookup_and_register_their_entries(tmp_path, monkeypatch):
    registry = Registry("widget", modules=["fewshot_test_widgets"])
    holder = types.ModuleType("fewshot_test_holder")
    holder.REGISTRY = registry
    monkeypatch.setitem(sys.modules, "fewshot_test_holder", holder)
    (tmp_path / "fewshot_test_widgets.py").write_text(
        "from fewshot_test_holder import REGISTRY\n\n"
        "@REGISTRY.register('round')\nclass Round:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fewshot_test_widgets", raising=False)
    assert registry.entries == {}  # nothing imported at construction
    assert registry.get("round").__name__ == "Round"
    assert registry.names() == ["round"] and "round" in registry
    with pytest.raises(FewshotError, match=r"^unknown widget 'square'; choose one of: round$"):
        registry.get("square")


def test_a_name_registered_twice_for_two_things_is_a_bug():
    registry = Registry("widget")
    registry.register("a")(int)
    registry.register("a")(int)  # the same entry again (a module reloaded) is fine
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(float)


def test_a_package_registry_imports_every_module_of_the_package(tmp_path, monkeypatch):
    """Adding an algorithm or a backbone is one file: the registry finds it in its package."""
    registry = Registry("widget", package="fewshot_test_shapes")
    holder = types.ModuleType("fewshot_test_shape_holder")
    holder.REGISTRY = registry
    monkeypatch.setitem(sys.modules, "fewshot_test_shape_holder", holder)
    package = tmp_path / "fewshot_test_shapes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("SIDES = 4\n")  # a module that registers nothing is imported too
    for name in ("square", "triangle"):
        (package / f"{name}.py").write_text(
            f"from fewshot_test_shape_holder import REGISTRY\n\n@REGISTRY.register('{name}')\nclass Shape:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert registry.entries == {}
    assert registry.names() == ["square", "triangle"] and "fewshot_test_shapes.helpers" in sys.modules
    for name in ("fewshot_test_shapes", "fewshot_test_shapes.helpers", "fewshot_test_shapes.square",
                 "fewshot_test_shapes.triangle"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_the_algorithm_and_backbone_registries_name_exactly_their_files():
    from fewshot.algorithms import ALGORITHMS
    from fewshot.models import BACKBONES
    assert ALGORITHMS.names() == ["anil", "leo", "maml", "mamlpp", "metasgd", "protonet", "reptile"]
    assert BACKBONES.names() == ["conv4", "mlp", "none", "resnet12", "wrn28_10"]
