"""Every command in the README's ``bash`` blocks runs as written (with ``trainer.max_steps=2``), from a clean folder.

Commands that need the Hugging Face Hub, several GPUs or the installer are excepted and listed in ``EXCEPTED``; a
README command that is neither run nor listed fails the test, so the list cannot go stale silently.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXCEPTED = {  # command prefix -> why it is not run here
    "pip install": "the installer: CI runs it before the tests",
    "pytest": "the test command itself",
    "python train.py model=llama3b loss=table6": "downloads Llama-3.2-3B and GSM8k-AUG from the Hub",
    "python train.py model=llama1b loss=table6 data=gsm8k_aug_nl strategy=ddp": "the Hub, and 4 GPUs",
    "python eval.py ckpt_path=... eval_sets=[gsm8k,gsm_hard,svamp,multiarith]": "the four sets from the Hub",
}
RUN_PLACEHOLDER = "outputs/train/runs/<date>_<time>_seed<seed>"


def readme_commands() -> list[str]:
    """The command lines of the README's ``bash`` blocks, comments stripped, in order."""
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            cmd = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if cmd and not cmd.startswith("#"):
                lines.append(cmd)
    return lines


def excepted(cmd: str) -> str | None:
    return next((why for prefix, why in EXCEPTED.items() if cmd.startswith(prefix)), None)


def test_readme_lists_what_it_does_not_run():
    cmds = readme_commands()
    assert any(c == "python train.py" for c in cmds)  # the quick start is among them
    for prefix in EXCEPTED:
        assert any(c.startswith(prefix) for c in cmds), f"EXCEPTED names '{prefix}', which the README no longer has"


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path):
    for name in ("train.py", "eval.py", "conf", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", KAVA_CACHE=str(tmp_path / "c")
    )
    ran, first_run = [], None
    for cmd in readme_commands():
        if excepted(cmd):
            continue
        assert cmd.startswith(("python train.py", "python eval.py")), f"README command not run nor excepted: {cmd}"
        if RUN_PLACEHOLDER in cmd:  # the folder the quick start wrote
            assert first_run is not None, f"the README uses a run folder before any run: {cmd}"
            cmd = cmd.replace(RUN_PLACEHOLDER, str(first_run.relative_to(tmp_path)))
        args = cmd.split()[1:]
        if args[0] == "train.py":
            resume = any(a.startswith("ckpt_path=") for a in args)
            args.append(f"trainer.max_steps={4 if resume else 2}")  # a resumed run goes on past its checkpoint
        else:
            args.append("eval.limit=4")
        proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"README command failed: {cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        ran.append(cmd)
        if first_run is None and args[0] == "train.py":
            (first_run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert len(ran) >= 10
