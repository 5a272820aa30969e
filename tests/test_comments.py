"""Measured figures live in docs/ (with the command and machine that produced them), not in
code comments, where they go stale: a comment points to the docs instead."""
import io
import re
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fewshot"
# a speed-up or slow-down, a time per call, a percentage of time: what a measurement reads like
FIGURE = re.compile(r"\d(\.\d+)?(-\d+(\.\d+)?)?x (faster|slower)|\b\d+(\.\d+)?-\d+(\.\d+)?x\b"
                    r"|\b\d+(\.\d+)? ?(us|µs|ms)\b|\d+(\.\d+)?(-\d+(\.\d+)?)?% (more|less|slower|faster|of)\b")


def comments(path):
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return [(token.start[0], token.string) for token in tokens if token.type == tokenize.COMMENT]


def test_no_comment_in_the_package_quotes_a_measurement():
    found = [f"{path.relative_to(PACKAGE)}:{line}: {text}" for path in sorted(PACKAGE.rglob("*.py"))
             for line, text in comments(path) if FIGURE.search(text)]
    assert not found, "move the figures to docs/benchmarks.md and point there:\n" + "\n".join(found)


def test_the_pattern_finds_the_figures_it_is_for():
    for text in ("# 1.2-1.7x faster at 10", "# slow both by 10-100x", "# about 4 us a layer",
                 "# 3-5% more CPU time", "# 0.5% slower"):
        assert FIGURE.search(text), text
    for text in ("# 20 Omniglot images of 28 x 28", "# a 95% confidence interval", "# 5-way 1-shot"):
        assert not FIGURE.search(text), text
