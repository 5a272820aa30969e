"""How long the datasets take to load: the timings the data tests once asserted (under 2 s),
measured here instead, where a busy machine makes a slow figure a figure and not a failure.

    python benchmarks/load_time.py [--data ../shared/data] [--repeat 3]

With the real data in `--data` (default: ../shared/data next to the repository), each
in a fresh temporary FEWSHOT_HOME:

- omniglot prepared:  images.read_dataset of the imported 28x28 Omniglot, then
  np.ascontiguousarray (what load() does for small sets) -- the 32,460 x 28 x 28 array;
- omniglot cached:    load() of the raw sprite folder once its cache exists (the import
  itself is timed once, first);
- miniimagenet cached: read_dataset of the imported 6,000-image sample and its first image
  (a memory map: nothing else is read).

Prints the import time and, for each start, the median and the slowest of `--repeat`
runs. The figures depend on the page cache: the first run after an import is warm.
Say with the figures whether the cores were shared.
"""
import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(function, repeat):
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), max(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = Path(args.data)
    home = tempfile.mkdtemp(prefix="fewshot-load-time-")
    os.environ["FEWSHOT_HOME"] = home  # before fewshot reads it: never the user's cache

    from fewshot.config import Config
    from fewshot.data import images, load, resolve
    from fewshot.data import miniimagenet as mini
    from fewshot.data.omniglot import import_omniglot

    rows = []
    sprites = data / "omniglot-28"
    if (sprites / "index.csv").is_file():
        folder = Path(home) / "omniglot-28"
        started = time.perf_counter()
        import_omniglot(sprites, folder, size=28, progress=False)
        rows.append(("omniglot import (sprites -> prepared 28x28)", time.perf_counter() - started, None))
        rows.append(("omniglot prepared: read_dataset + contiguous array",
                     *timed(lambda: np.ascontiguousarray(images.read_dataset(folder, 28).images), args.repeat)))
        config = Config(data=str(sprites))
        started = time.perf_counter()
        resolve(config, progress=False)  # the raw copy's first start: decoded into the cache
        rows.append(("omniglot raw copy, first start (cache written)", time.perf_counter() - started, None))
        rows.append(("omniglot raw copy, later start: load()", *timed(lambda: load(config, progress=False),
                                                                        args.repeat)))
    else:
        print(f"skipped Omniglot: no {sprites / 'index.csv'}")

    sample = data / "miniimagenet"
    if (sample / "train.csv").is_file():
        folder = Path(home) / "miniimagenet"
        started = time.perf_counter()
        mini.import_miniimagenet(sample, folder, progress=False, allow_partial=True)
        rows.append(("miniimagenet sample import (6,000 JPEGs)", time.perf_counter() - started, None))
        rows.append(("miniimagenet cached: read_dataset + first image",
                     *timed(lambda: images.read_dataset(folder, 84).images[0].copy(), args.repeat)))
    else:
        print(f"skipped miniImageNet: no {sample / 'train.csv'}")

    print(f"| what | median s | slowest s |  ({args.repeat} runs each; imports once)")
    print("| --- | --- | --- |")
    for name, median, slowest in rows:
        print(f"| {name} | {median:.3f} | {'' if slowest is None else f'{slowest:.3f}'} |")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
