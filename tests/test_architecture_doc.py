"""docs/architecture.md's table of modules names every module where it lives."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fewshot"


def rows():
    """{first cell: the rest of the row} of the module table."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| (.+?) \| (.+) \|$", text, re.M)}


def test_every_module_is_in_the_table_row_of_its_folder():
    table = rows()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        folder = path.parent.relative_to(PACKAGE)
        if str(folder) == ".":
            if not any(f"`{path.name}`" in cell for cell in table):
                missing.append(path.name)
        elif f"`{path.name}`" not in table.get(f"`{folder}/`", ""):
            missing.append(f"{folder}/{path.name}")
    assert not missing, f"add to docs/architecture.md: {missing}"


def test_the_data_row_says_where_load_sampler_and_resolve_live_and_which_backbones_batch_tasks():
    table = rows()
    data = table["`data/`"]
    assert "`__init__.py`" in data and all(f"`{name}`" in data for name in ("load", "sampler", "resolve"))
    models = table["`models/`"]
    assert "`conv4.py` and `mlp.py`, which also write `tasks_forward`" in models
