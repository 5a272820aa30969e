"""fewshot installs beside whatever torch a user already has (a CUDA build, an older
release): its metadata asks for a range, so pip keeps the installed torch.

The test builds fewshot's wheel, makes a fresh venv that already holds a torch
2.5.0 (a stand-in distribution: only its version matters to pip's resolver) and
stand-ins of the other dependencies, installs fewshot there from local files only,
and checks that torch is still 2.5.0.
"""
import base64
import csv
import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# what pip finds besides fewshot's wheel: stand-ins at versions inside fewshot's ranges
STAND_INS = {"torch": "2.5.0", "numpy": "1.26.4", "pillow": "10.4.0", "pyyaml": "6.0.2", "tqdm": "4.66.5",
             "matplotlib": "3.9.2"}


def stand_in_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal valid wheel of distribution `name` at `version` holding one empty module."""
    module = name.replace("-", "_") + "_stand_in"
    dist_info = f"{name.replace('-', '_')}-{version}.dist-info"
    files = {f"{module}/__init__.py": b"",
             f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: fewshot-test\nRoot-Is-Purelib: true\n"
                                   b"Tag: py3-none-any\n"}
    record = io.StringIO()
    writer = csv.writer(record)
    for path, content in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        writer.writerow([path, f"sha256={digest}", len(content)])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    files[f"{dist_info}/RECORD"] = record.getvalue().encode()
    wheel = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, content in files.items():
            archive.writestr(path, content)
    return wheel


def run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def installed_version(venv: Path, name: str) -> str:
    shown = run(str(venv / "bin" / "python"), "-m", "pip", "show", name)
    return next(line.split(":", 1)[1].strip() for line in shown.splitlines() if line.startswith("Version:"))


def test_installing_fewshot_keeps_the_torch_already_there(tmp_path):
    pytest.importorskip("setuptools", reason="building fewshot's wheel offline needs setuptools in this env")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
        "-w", str(wheels), str(ROOT))
    for name, version in STAND_INS.items():
        stand_in_wheel(wheels, name, version)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
           str(wheels)]
    run(*pip, "torch==2.5.0")
    run(*pip, "fewshot")
    assert installed_version(venv, "torch") == "2.5.0"
    import fewshot
    assert installed_version(venv, "fewshot") == fewshot.__version__


def test_the_metadata_asks_for_a_torch_range_not_a_pin():
    text = (ROOT / "pyproject.toml").read_text()
    requirement = next(line.strip().strip('",') for line in text.splitlines() if line.strip().startswith('"torch'))
    assert "==" not in requirement and ">=" in requirement, requirement
