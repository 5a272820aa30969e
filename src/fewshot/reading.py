"""Reading what users give fewshot: images, YAML, pickles, checkpoints, metrics files.

One rule for every file read: whatever its content, a problem with it ends in one
FewshotError line that names the file, says what it should have been, and gives a fix.
`failure(path, what, fix)` is where that happens: an error the content of a file can
cause while it is decoded or interpreted (a decoder's SyntaxError or ValueError, the
KeyError of a missing field, the TypeError of a null where a number belongs, the
MemoryError of an absurd size, ...) becomes that line. The readers below, and the ones
in data/, checkpoint.py and runs.py, read inside it, so a new reader inherits the rule.

Values shown in a message are bounded (`brief`): a file may hold anything, and a
message never prints more than a line of it.
"""
from __future__ import annotations

import io
import pickle
import re
import reprlib
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import FewshotError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import PIL.Image

# what the content of a file can raise while it is parsed (OSError: also a file that cannot be opened)
CONTENT_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, SyntaxError, EOFError, OSError,
                  MemoryError, OverflowError, RecursionError, pickle.UnpicklingError, zlib.error, struct.error,
                  yaml.YAMLError)
# the most values a YAML document may expand to (its aliases counted at every use): a preset holds
# about a hundred; far more is an alias bomb, which would exhaust memory once printed or walked
YAML_VALUES = 100_000

_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict, _repr.maxlevel = 60, 60, 8, 8, 3


def brief(value: object, width: int = 80) -> str:
    """repr(value) cut to about `width` characters, without building the whole repr."""
    text = _repr.repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def listed(items: Iterable[object], most: int = 8) -> str:
    """Names joined by commas, each brief, the first `most` of them and how many in all."""
    items = list(items)
    names = [str(i) if isinstance(i, str) and len(i) <= 40 else brief(i, 40) for i in items[:most]]
    return ", ".join(names) + (f", ... ({len(items)} in all)" if len(items) > most else "")


def reason(error: BaseException) -> str:
    """What an exception says, on one line of bounded length."""
    text = " ".join(str(error).split())
    if isinstance(error, MemoryError) or not text:
        text = f"{type(error).__name__}{': ' + text if text else ''}"
    return text if len(text) <= 160 else text[:157] + "..."


def shown(path: str | Path) -> str:
    """A path as printable text (bytes that are not UTF-8 as \\xNN)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@contextmanager
def failure(path: str | Path, what: str, fix: str) -> Iterator[None]:
    """Read inside this: a content error becomes `cannot read WHAT PATH (REASON); FIX`.
    A FewshotError raised inside (a reader's own, more precise refusal) passes as it is."""
    try:
        yield
    except FewshotError:
        raise
    except CONTENT_ERRORS as error:
        raise FewshotError(f"cannot read {what} {shown(path)} ({reason(error)}); {fix}") from None


# --- text and YAML ---------------------------------------------------------------

def read_text(path: str | Path, what: str, fix: str) -> str:
    """The UTF-8 text of a file."""
    with failure(path, what, fix):
        return Path(path).read_bytes().decode("utf-8")


class Loader(yaml.SafeLoader):
    """YAML as safe_load reads it, plus ordinary scientific notation: YAML 1.1 reads 1e-4 as
    text (its floats need a dot and a signed exponent, 1.0e-4); YAML 1.2 and every
    language read it as a number."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


class YAMLProblem(ValueError):
    """Text that is not YAML (`syntax`), or a document that expands too far."""

    def __init__(self, text: str, syntax: bool) -> None:
        super().__init__(text)
        self.syntax = syntax


def parse_yaml(text: str) -> Any:
    """The value of a YAML document: plain data only (tags that build objects are refused by
    the safe loader), and at most YAML_VALUES values; else a YAMLProblem."""
    try:
        value = yaml.load(text, Loader=Loader)
    except (yaml.YAMLError, ValueError) as error:  # ValueError: e.g. a number of more than 4300 digits
        raise YAMLProblem(reason(error).split(' in "<unicode string>"')[0], syntax=True) from None
    except RecursionError:
        raise YAMLProblem("it nests deeper than Python can follow", syntax=True) from None
    if _count(value, YAML_VALUES) > YAML_VALUES:
        raise YAMLProblem(f"it expands to more than {YAML_VALUES:,} values (aliases repeated within aliases, a "
                          f"YAML bomb?), where a config holds about a hundred", syntax=False)
    return value


def load_yaml(text: str, where: str) -> Any:
    """parse_yaml(text), its problems one line naming `where`."""
    try:
        return parse_yaml(text)
    except YAMLProblem as problem:
        what = f"is not valid YAML ({problem})" if problem.syntax else f"is refused: {problem}"
        raise FewshotError(f"{where} {what}; give plain keys and values") from None


def _count(value, limit: int) -> int:
    """The number of values in `value` with every shared (aliased) part counted at each use,
    up to just past `limit`."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
    return count


def read_yaml(path: str | Path, what: str, fix: str) -> Any:
    """The value of the YAML file at `path` (see load_yaml)."""
    text = read_text(path, what, fix)
    try:
        return parse_yaml(text)
    except YAMLProblem as problem:
        verdict = f"is not valid YAML ({problem})" if problem.syntax else f"is refused: {problem}"
        raise FewshotError(f"{what} {shown(path)} {verdict}; {fix}") from None


# --- images ---------------------------------------------------------------------

def _pillow():
    from PIL import Image
    # refused below, by size, before anything is decoded: Pillow's own warning would add a line
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return Image


def max_pixels() -> int:
    """The largest image fewshot decodes: Pillow's decompression-bomb threshold (about 89
    million pixels, 9459 x 9459), far above any image a few-shot model sees."""
    return _pillow().MAX_IMAGE_PIXELS or 89_478_485


def decode_image(source: str | Path | bytes, where: str | Path) -> PIL.Image.Image:
    """A decoded Pillow image from a file path or bytes (`where` names it in messages).
    An image larger than max_pixels() is refused from its header, never decoded."""
    Image = _pillow()
    limit = max_pixels()
    fix = "remove it or replace it with an image Pillow can read (PNG or JPEG)"
    with failure(where, "image", fix):
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except Image.DecompressionBombError as error:  # Pillow's own refusal, at twice the limit
            found = re.search(r"\((\d+) pixels\)", str(error))
            pixels = f"{int(found.group(1)):,} pixels" if found else f"more than {2 * limit:,} pixels"
            raise FewshotError(f"image {shown(where)} has {pixels}, more than {limit:,}, the most fewshot decodes "
                               f"(a decompression bomb?); it was not decoded: shrink it or remove it") from None
        width, height = image.size
        if width * height > limit:
            image.close()
            raise FewshotError(f"image {shown(where)} has {width}x{height} = {width * height:,} pixels, more than "
                               f"{limit:,}, the most fewshot decodes (a decompression bomb?); it was not decoded: "
                               f"shrink it or remove it")
        image.load()
        return image


def convert_image(image: PIL.Image.Image, mode: str, where: str | Path) -> PIL.Image.Image:
    """`image` in mode "L" (gray) or "RGB"; modes Pillow cannot convert directly (CIELAB)
    go through sRGB, and the rest are refused naming the file."""
    if image.mode == mode:
        return image
    try:
        if image.mode == "LAB":
            from PIL import ImageCms
            transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                                "LAB", "RGB")
            image = ImageCms.applyTransform(image, transform)
        return image.convert(mode)
    except (ValueError, OSError, ImportError) as error:
        target = "gray" if mode == "L" else "RGB"
        raise FewshotError(f"cannot convert image {shown(where)} from mode {image.mode} to {target} "
                           f"({reason(error)}); save it as an RGB or grayscale PNG or JPEG") from None


# --- pickles --------------------------------------------------------------------

class _NumpyOnly(pickle.Unpickler):
    """Builds numpy arrays, dtypes and builtin containers; refuses anything else."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("collections", "OrderedDict"),
               ("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"),
               ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("builtins", "object"),
               ("__builtin__", "object"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to build {module}.{name}")


def load_pickle(path: str | Path, what: str) -> Any:
    """The object in pickle `path`, built from numpy arrays and builtin containers only."""
    with failure(path, what, "it is damaged, or not in that format: write it again, or give the right file"):
        with open(path, "rb") as f:
            return _NumpyOnly(f, encoding="latin1").load()


def array(value: object, path: str | Path, what: str, dtype: npt.DTypeLike = None) -> np.ndarray:
    """np.asarray(value) for a field of a file, refusing ragged or mixed data by name."""
    import numpy as np
    with failure(path, what, "the file is damaged, or not in the format fewshot reads: write it again"):
        if isinstance(value, (dict, str, bytes)) or value is None:
            raise TypeError(f"a {type(value).__name__} where an array belongs")
        return np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
