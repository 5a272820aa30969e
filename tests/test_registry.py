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
