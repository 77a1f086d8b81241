"""`pip install .` (not editable) works: `pareto quickstart` and `pareto ui` find their config and app in the
installed package, not next to a checkout.

The project is built from a copy of the git-tracked files into a fresh venv that sees the system site (torch and
friends are not downloaded again: `--no-deps --no-build-isolation --no-index`), and every command runs outside the
checkout with no PYTHONPATH. The system site may hold an editable install of pareto (a meta-path finder), so the
test proves the imported pareto is the venv's copy. `.ci/run` runs the full `pareto quickstart` the same way."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, shared_stage_caches, stop_group, wait_http

pytestmark = pytest.mark.slow

# A reduced quickstart, still end to end (SFT, reward model, both methods, evaluation, MLflow): ~1-2 min, not ~4.
QUICK = ["model.tiny.sft_epochs=2", "methods.panacea.max_steps=20", "methods.per_weight_dpo.max_steps=5",
         "evaluation.n_prompts=6", "evaluation.max_new_tokens=16"]


def tracked_files(root: Path) -> list[str]:
    proc = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout:
        pytest.skip(f"not a git checkout ({proc.stderr.strip()}): nothing to copy the tracked files from")
    return [name for name in proc.stdout.split("\0") if name]


def copy_tree(root: Path, dest: Path) -> None:
    """The tracked files as they are in the work tree (links kept), so no build output or .pth of the checkout
    comes along."""
    for name in tracked_files(root):
        src = root / name
        if not src.is_symlink() and not src.exists():  # deleted in the work tree, not yet committed
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name, follow_symlinks=False)


def clean_env(home: Path, venv_dir: Path) -> dict[str, str]:
    """The tests' environment (tests/conftest.py: no telemetry, no hub, Ray auth off) minus anything that would
    point at the checkout, another store or another Ray cluster."""
    drop = {"PYTHONPATH", "PYTHONHOME", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "VIRTUAL_ENV", "PARETO_HOME"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PARETO_HOME=str(home), VIRTUAL_ENV=str(venv_dir), PIP_DISABLE_PIP_VERSION_CHECK="1",
               PATH=f"{venv_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return env


def chain_outer_venv(venv_dir: Path) -> None:
    """--system-site-packages sees the base interpreter's site only; when the tests themselves run in a venv, its
    site (with its .pth files) comes after the new venv's own."""
    if sys.prefix == sys.base_prefix:
        return
    own_site = next((venv_dir / "lib").glob("python*/site-packages"))
    (own_site / "_outer_venv.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages()))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A venv with pareto installed from a copy of the tree; -> its paths and environment."""
    base = tmp_path_factory.mktemp("install")
    src, venv_dir, work = base / "src", base / "venv", base / "work"
    copy_tree(ROOT, src)
    work.mkdir()
    # The system site's pip and setuptools serve the venv too: nothing is downloaded.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(venv_dir)
    chain_outer_venv(venv_dir)
    env = clean_env(base / "home", venv_dir)
    python = venv_dir / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--no-cache-dir", str(src)], capture_output=True, text=True, timeout=600, cwd=work,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shutil.rmtree(src)  # nothing may be read from the source copy after the install
    yield {"python": python, "pareto": venv_dir / "bin" / "pareto", "venv": venv_dir, "work": work, "env": env,
           "home": base / "home"}


def run(info: dict, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          cwd=info["work"], env=info["env"])


def test_the_venv_imports_its_own_pareto(installed: dict) -> None:
    code = ("import json, pareto, pareto.cli, pareto.ui\n"
            "print(json.dumps([pareto.__file__, pareto.cli.__file__, pareto.ui.__file__]))")
    proc = run(installed, [installed["python"], "-c", code])
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = (installed["venv"] / "lib").resolve()
    for path in json.loads(proc.stdout.strip().splitlines()[-1]):
        assert Path(path).resolve().is_relative_to(site), f"{path} is not the venv's copy (under {site})"
    assert installed["pareto"].is_file()


def test_pareto_ui_help(installed: dict) -> None:
    proc = run(installed, [installed["pareto"], "ui", "--help"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--tracking-uri" in proc.stdout


def test_quickstart_then_the_ui_on_its_store(installed: dict, tmp_path_factory: pytest.TempPathFactory) -> None:
    args = [installed["pareto"], "quickstart"] + [a for kv in QUICK for a in ("--set", kv)]
    with shared_stage_caches(installed["home"], tmp_path_factory):  # the quickstart's reward model, when built before
        proc = run(installed, args, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== panacea" in proc.stdout and "== per_weight_dpo" in proc.stdout
    assert (installed["home"] / "mlflow.db").is_file()  # the state went to this test's PARETO_HOME

    proc = run(installed, [installed["pareto"], "front", "latest", "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {f["method"] for f in json.loads(proc.stdout)["fronts"]} >= {"panacea", "per_weight_dpo"}
    check_app_renders(installed)
    check_ui_serves(installed)


def check_app_renders(info: dict) -> None:
    """The installed app file renders the quickstart's run, with the UI modules of the venv."""
    code = ("import sys\nfrom importlib.resources import files\nfrom streamlit.testing.v1 import AppTest\n"
            "at = AppTest.from_file(str(files('pareto') / 'ui' / 'app.py'), default_timeout=240)\nat.run()\n"
            "assert not at.exception, at.exception\nassert at.get('plotly_chart'), 'no front chart'\n"
            "print(sys.modules['pareto.ui.explorer'].__file__)\n")
    proc = run(info, [info["python"], "-c", code], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert Path(proc.stdout.strip().splitlines()[-1]).resolve().is_relative_to(info["venv"].resolve())


def check_ui_serves(info: dict) -> None:
    """`pareto ui` starts the Streamlit server on the installed app (it exits 2 at once if it finds no app)."""
    port = free_port()
    log = info["work"] / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(info["pareto"]), "ui", "--port", str(port)], cwd=info["work"], env=info["env"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", timeout=120)
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        stop_group(proc)  # `pareto ui` and the streamlit server it started: our group only
        print(log.read_text()[-2000:])

