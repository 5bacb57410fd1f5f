"""The README's snippets and commands run as written on a CPU machine.

Every ```python block runs, in order and in one namespace (a later block may use an earlier one's class),
in a fresh interpreter with ``TRITON_INTERPRET=1`` where there is no GPU. Every ``./run.sh`` line of a
```bash block names an app of experiments/ whose overrides compose against its Hydra config; those marked
``(CPU, under a minute)`` are run as written.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)
BASH_BLOCKS = re.findall(r"^```bash\n(.*?)^```", README, re.S | re.M)
# ./run.sh <app> lines (a bare ./run.sh is the main job, run by ./run.sh itself).
RUN_LINES = [line for block in BASH_BLOCKS for line in block.splitlines() if re.match(r"\./run\.sh +[a-z_]", line)]
RUN_AS_WRITTEN = "(CPU, under a minute)"


def _env() -> dict[str, str]:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    return env


def test_readme_python_snippets_run():
    assert len(PYTHON_BLOCKS) >= 4
    program = (
        "import sys\n"
        "namespace = {'__name__': '__readme__'}\n"
        "for index, block in enumerate(sys.argv[1:]):\n"
        "    try:\n"
        "        exec(compile(block, f'README.md python block {index}', 'exec'), namespace)\n"
        "    except BaseException:\n"
        "        print(f'README.md python block {index} failed:\\n{block}', file=sys.stderr)\n"
        "        raise\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, *PYTHON_BLOCKS],
        check=False,
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-4000:]


def _command(line: str) -> tuple[str, list[str]]:
    """(app, overrides) of a ``./run.sh <app> ...`` line, its comment dropped."""
    words = shlex.split(line, comments=True)[1:]
    return words[0], words[1:]


@pytest.mark.parametrize("line", RUN_LINES)
def test_readme_run_commands_name_an_app_and_compose(line):
    app, overrides = _command(line)
    assert (ROOT / "experiments" / f"{app}.py").is_file(), f"{line}: no experiments/{app}.py"
    assert (ROOT / "conf" / f"{app}.yaml").is_file(), f"{line}: {app} is not a Hydra app of conf/"
    # A sweep (-m a=x,y) composes as its first job.
    first = [o.split(",")[0] if "=" in o and "[" not in o else o for o in overrides if o != "-m"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        compose(app, overrides=first)


@pytest.mark.parametrize("line", [line for line in RUN_LINES if RUN_AS_WRITTEN in line])
def test_readme_cheap_commands_run_as_written(line):
    done = subprocess.run(["bash", "-c", line], check=False, cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


def test_readme_shows_a_command_that_runs_as_written():
    assert any(RUN_AS_WRITTEN in line for line in RUN_LINES)
