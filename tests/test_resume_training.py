"""scripts/resume_training.sh: which folders of training/ it resumes, and with what."""
import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_it_resumes_runs_and_unfinished_pretrainings_with_one_thread_and_the_time_limit(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "resume_training.sh", tmp_path / "scripts")
    training = tmp_path / "training"
    for name, files in {"run": ["config.yaml", "last.pt"], "pretraining": [], "embedded": ["embed.json"],
                        "empty": [], "held": ["config.yaml", "last.pt"]}.items():
        (training / name).mkdir(parents=True)
        for file in files:
            (training / name / file).write_text("")
    for name in ("pretraining", "embedded"):
        (training / name / "command").write_text(f"fewshot embed p --data d --out training/{name} --pretrain-steps 9\n")
    (training / "held" / "paused").write_text("behind at every step\n")
    # `echo` stands in for fewshot: each log then holds the command it was given
    done = subprocess.run(["bash", "scripts/resume_training.sh", "7"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "FEWSHOT": "echo"}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "training/embedded: nothing to resume" in done.stdout and "training/empty: nothing to resume" in done.stdout
    assert "training/held: paused (behind at every step); name it to resume it" in done.stdout
    expected = {"run.log": "train --resume training/run --threads 1 --time-limit 7 --no-progress\n",
                "pretraining.log": "embed p --data d --out training/pretraining --pretrain-steps 9 --threads 1 "
                                   "--time-limit 7 --no-progress\n"}
    for _ in range(100):  # the commands run in the background
        if all((training / log).is_file() and (training / log).read_text() for log in expected):
            break
        time.sleep(0.05)
    assert {p.name: p.read_text() for p in training.glob("*.log")} == expected


def test_a_paused_folder_resumes_when_named(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "resume_training.sh", tmp_path / "scripts")
    held = tmp_path / "training" / "held"
    held.mkdir(parents=True)
    for file in ("config.yaml", "last.pt"):
        (held / file).write_text("")
    (held / "paused").write_text("behind at every step\n")
    done = subprocess.run(["bash", "scripts/resume_training.sh", "3", "held"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "FEWSHOT": "echo"}, timeout=60)
    assert done.returncode == 0 and "training/held: resumed" in done.stdout, done.stderr
    log = tmp_path / "training" / "held.log"
    for _ in range(100):
        if log.is_file() and log.read_text():
            break
        time.sleep(0.05)
    assert log.read_text() == "train --resume training/held --threads 1 --time-limit 3 --no-progress\n"
