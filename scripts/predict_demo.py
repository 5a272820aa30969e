"""Build a support/query set for `fewshot predict` from the official images_evaluation.zip:
N characters of one evaluation alphabet that are in the checkpoint's meta-test split
(never seen in meta-training), drawer 1 as the support image, drawers 2-4 as queries.

    python scripts/predict_demo.py CHECKPOINT ../shared/data/omniglot/images_evaluation.zip OUT_DIR [ALPHABET]
"""
import sys
import zipfile
from pathlib import Path

from fewshot import checkpoint, data
from fewshot.config import eval_ways


def main(target, zip_path, out, alphabet="Manipuri"):
    config = checkpoint.load(target)["config"]
    _, refs = data.load(config, progress=False)
    ways = eval_ways(config)  # a test task's ways (ProtoNets train on 60-way episodes)
    chosen = sorted(cls.name for cls in refs["test"] if cls.name.startswith(alphabet + "/"))[:ways]
    if len(chosen) < ways:
        sys.exit(f"only {len(chosen)} test-split characters of {alphabet}; pick another alphabet")
    out = Path(out)
    with zipfile.ZipFile(zip_path) as z:
        for name in chosen:
            character = name.split("/")[1]
            members = sorted(m for m in z.namelist() if f"/{alphabet}/{character}/" in m and m.endswith(".png"))
            for member in members[:4]:
                drawer = int(member[-6:-4])
                folder = out / "support" / character if drawer == 1 else out / "query"
                folder.mkdir(parents=True, exist_ok=True)
                target_name = Path(member).name if drawer == 1 else f"{character}_{Path(member).name}"
                (folder / target_name).write_bytes(z.read(member))
    print(f"{len(chosen)} characters of {alphabet} from the test split: {', '.join(chosen)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
