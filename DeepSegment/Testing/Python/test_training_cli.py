"""``python -m DeepSegmentLib train``: one-line errors before any work, and a real training from an nnU-Net export,
interrupted with Ctrl-C and continued by the same command, into a registry the ``run`` command uses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from fault_injection import child_environment, interruptible_children
from training_cases import write_case_list, write_export

from DeepSegmentLib.cli import main

DEEPSEGMENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["--channels", "8", "16", "32", "--strides", "2", "2", "--residual-units", "1", "--patch-size", "16", "16",
         "16", "--threads", "2", "--learning-rate", "0.01"]


def epochs_done(output: str) -> int:
    try:
        with open(os.path.join(output, "training.json"), encoding="utf-8") as file:
            return len(json.load(file)["history"])
    except FileNotFoundError:
        return 0


def deepsegment(*arguments, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "DeepSegmentLib", *arguments], cwd=DEEPSEGMENT,
                          env=child_environment(), capture_output=True, text=True, timeout=600, **options)


@pytest.fixture(scope="module")
def case_list(tmp_path_factory):
    return write_case_list(str(tmp_path_factory.mktemp("cases")))


def test_bad_arguments_are_one_line_before_any_work(case_list, tmp_path, capsys):
    output = str(tmp_path / "run")
    for arguments, message in (
            (["--data", str(tmp_path / "none"), "--output", output], "training data not found"),
            (["--data", case_list, "--output", output, "--epochs", "0"], "epochs must be 1 or more"),
            (["--data", case_list, "--output", output, "--patch-size", "20", "16", "16"], "multiple of 16"),
            (["--data", case_list, "--output", output, "--fold", "first"], "--fold takes a fold number or none"),
            (["--data", case_list, "--output", output, "--model-id", "Liver CT"], "not a model id"),
            (["--data", case_list, "--output", output, "--augmentation", '{"rotation": 3}'],
             "unknown augmentation settings: rotation"),
            (["--data", case_list, "--output", output, "--augmentation", "{"], "neither a JSON file nor JSON text"),
            (["--data", case_list, "--output", case_list], "the output must be a folder"),
            (["--data", case_list, "--output", output, "--network", "vnet"], "invalid choice: 'vnet'"),
            (["--data", case_list, "--output", output, "--device", "tpu"], "unknown device"),
            (["--data", case_list, "--output", output, "--strides", "2"], "one stride fewer than channel counts")):
        assert main(["train", *arguments]) == 1
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], (arguments, errors)
    assert not os.path.exists(output)


def test_a_training_interrupted_with_ctrl_c_continues_and_its_model_runs(case_list, tmp_path):
    pytest.importorskip("monai")
    export = write_export(case_list, str(tmp_path / "raw"), "nnunet")
    output, registry, cache = (str(tmp_path / name) for name in ("run", "registry", "cache"))
    command = ["train", "--data", export, "--output", output, "--epochs", "4", "--steps-per-epoch", "3", *SMALL,
               "--registry", registry, "--cache-dir", cache, "--model-id", "cli-organs"]
    with interruptible_children():
        child = subprocess.Popen([sys.executable, "-m", "DeepSegmentLib", *command], cwd=DEEPSEGMENT,
                                 env=child_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None and not epochs_done(output):
        time.sleep(0.2)  # the child process trains meanwhile
    child.send_signal(signal.SIGINT)  # Ctrl-C, once an epoch has ended
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("error: interrupted; run the same command again to continue from the "
                                            "last epoch")
    finished = deepsegment(*command)
    assert finished.returncode == 0, finished.stderr
    assert "continuing the training" in finished.stderr
    lines = finished.stdout.splitlines()
    assert lines[0] == f"model cli-organs@1.0.0 in {os.path.join(registry, 'index.json')}"
    assert lines[1].startswith("best epoch ") and "held-out Dice: organ " in lines[1]
    image = str(tmp_path / "case00_copy.nrrd")
    os.link(os.path.join(os.path.dirname(case_list), "case00.nrrd"), image)
    run = deepsegment("run", "--model", "cli-organs", "--input", image, "--output", str(tmp_path / "labels.nii.gz"),
                      "--cache-dir", cache)
    assert run.returncode == 0, run.stderr
