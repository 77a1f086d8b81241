"""Shared fixtures: real services (a Ray head started with `ray start`, an `mlflow server`), isolated state."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Every process the tests start inherits these: loopback only, no telemetry, no hub.
os.environ.update({
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
})
ROOT = Path(__file__).resolve().parent.parent
# Cells that repeat a check at more seeds than CI needs to catch a regression: opt-in.
ALL_SEEDS = pytest.mark.skipif(os.environ.get("PARETO_TEST_ALL_SEEDS") != "1",
                               reason="set PARETO_TEST_ALL_SEEDS=1 to run every seed")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def _exe(name: str) -> str:
    found = BIN / name
    return str(found) if found.exists() else (shutil.which(name) or name)


@pytest.fixture(autouse=True, scope="module")
def _disconnect_ray_after_module() -> Iterator[None]:
    """A module that ran a pipeline in-process leaves its local Ray connected; the next module's own `ray.init`
    would then fail ("called ray.init twice"), so every module ends disconnected."""
    yield
    ray = sys.modules.get("ray")  # only if the module used Ray at all
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend, proxied artifacts) on 127.0.0.1."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [_exe("mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=open(root / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=90)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_job_agent(dashboard: str, timeout: float) -> None:
    """The Jobs API answers before the head's job agent has registered ("No available agent to submit job"): submit
    a no-op job until one is accepted and finishes, so the tests' real submissions never race the agent."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard)
    deadline = time.time() + timeout
    while True:
        try:
            job = client.submit_job(entrypoint="true")
            break
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.time() > deadline:
                raise
            time.sleep(1.0)
    while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.time() > deadline:
            raise TimeoutError(f"the no-op probe job {job} did not finish within {timeout:.0f} s")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real Ray cluster head (`ray start --head`) on 127.0.0.1 with the Jobs API.

    Started with `--block` in its own process group and stopped by signalling that group: `ray stop` would kill
    every Ray cluster on the machine, including other test sessions' and a developer's own."""
    gcs, dash = free_port(), free_port()
    # Not under pytest's basetemp: with xdist's popen-gwN level the session's socket paths pass AF_UNIX's 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="pareto-ray-"))
    # Every port ours: the job agent's default 52365 (and the client server's 10001) may belong to another Ray on
    # the machine, and then the agent dies and no job can be submitted ("No available agent to submit job").
    proc = subprocess.Popen(
        [_exe("ray"), "start", "--head", "--block", f"--port={gcs}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={free_port()}",
         f"--ray-client-server-port={free_port()}", "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=open(tmp_path_factory.mktemp("ray") / "head.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    info = {"address": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}"}
    try:
        wait_http(f"{info['dashboard']}/api/version", timeout=120)
        wait_job_agent(info["dashboard"], timeout=180)
        yield info
    finally:
        stop_group(proc)
        shutil.rmtree(temp, ignore_errors=True)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left of it (Ray's agents may outlive the first signal)."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the leader may exit before its children
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The python of the separate vLLM venv (built by scripts/vllm_env.sh if missing), or skip with the reason."""
    from pareto.generation.vllm_server import VLLMError, ensure_vllm_env

    try:
        return ensure_vllm_env(timeout=float(os.environ.get("PARETO_VLLM_BUILD_TIMEOUT", "1800")))
    except VLLMError as err:
        pytest.skip(f"the vLLM environment could not be built: {err}")


def checkpoint_steps(folder: Path) -> list[int]:
    """The steps of the finished trainer checkpoints under `folder` (any depth), read while a trainer may write."""
    try:
        return sorted(int(p.name.split("-")[1]) for p in folder.rglob("step-*") if (p / "state.json").is_file())
    except FileNotFoundError:  # the scan met a `.step-*.tmp` folder just as the trainer renamed it into place
        return []


def session_temp(factory: pytest.TempPathFactory) -> Path:
    """The whole session's base temp: under pytest-xdist each worker's basetemp is a `popen-gwN` folder of it."""
    root = factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@contextmanager
def session_lock(factory: pytest.TempPathFactory, name: str) -> Iterator[None]:
    """An exclusive lock for the whole session (every xdist worker): one builds a shared artefact, others wait."""
    with open(session_temp(factory) / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def shared_stage_caches(state: Path, factory: pytest.TempPathFactory, take: bool = True) -> Iterator[None]:
    """Let a test's pipeline run take its base model, reward model and base point from the session's earlier runs.

    The entries are pareto's own stage caches, each named by the digest of what makes it (the config sections, the
    stage version, pareto's source: pareto/cache.py), so a run picks up only the entries its own config and code
    would build. Copied into `state`/cache before the run; the finished entries it built are shared afterwards.
    For the tests whose subject is not building those stages: the ones about building or caching them keep their
    own (test_cache, test_resume's killed pipeline, and test_ui's small store with `take=False`, which
    test_pipeline's reproducibility check compares with).

    $PARETO_TEST_STAGE_CACHES names a folder of such entries made before the session (.ci/run keeps those of the
    `pareto quickstart` it runs): they are offered too, on the same terms. `take=False`: the run builds its own and
    only shares them (a run whose stages must be built from scratch)."""
    from pareto.cache import STAGE_SECTIONS
    from pareto.io import atomic_dir

    stages = tuple(f"{stage}-" for stage in STAGE_SECTIONS)  # base, reward, base_eval: the config-keyed stages
    shared, cache = session_temp(factory) / "shared-stage-caches", state / "cache"  # one folder for every worker
    shared.mkdir(exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    offered = [shared] if take else []
    earlier = os.environ.get("PARETO_TEST_STAGE_CACHES")
    if take and earlier and Path(earlier).is_dir():
        offered.append(Path(earlier))
    for folder in offered:
        for entry in folder.iterdir():
            if not entry.name.startswith(stages) or not (entry / "DONE").is_file() or (cache / entry.name).exists():
                continue
            try:
                shutil.copytree(entry, cache / entry.name)
            except (OSError, shutil.Error):  # the other worker replaced it meanwhile: the run builds its own
                shutil.rmtree(cache / entry.name, ignore_errors=True)
    yield
    for entry in cache.iterdir():
        if entry.name.startswith(stages) and (entry / "DONE").is_file() and not (shared / entry.name).exists():
            with atomic_dir(shared / entry.name) as tmp:
                shutil.copytree(entry, tmp, dirs_exist_ok=True)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seconds-scale tiny-hh policy (BPE tokenizer + 1-layer Llama, one short SFT pass) saved with save_pretrained."""
    from pareto.config import TinyModelConfig
    from pareto.data import load_task
    from pareto.models.policy import build_tiny_model, save_model, sft_train, train_tokenizer

    task = load_task("tiny-hh", seed=0)
    examples = task.sft_examples()
    tokenizer = train_tokenizer([f"User: {p}\nAssistant: {r}" for p, r in examples], 300)
    cfg = TinyModelConfig(hidden_size=64, intermediate_size=128, num_layers=1, num_heads=1, vocab_size=300,
                          max_length=256)  # a 300-token vocabulary spells long answers in many tokens
    model = build_tiny_model(cfg, tokenizer, seed=0)
    sft_train(model, tokenizer, examples[:480], epochs=1, lr=3e-3, batch_size=16, max_length=256, seed=0)
    path = tmp_path_factory.mktemp("tiny-lm") / "base"
    save_model(model, tokenizer, path)
    return path


@pytest.fixture
def tiny_fit_context(tiny_lm: Path):
    """FitContext factory on `tiny_lm`: the first training pairs of tiny-hh, the task's oracle as the vector reward
    (a real VectorReward that needs no MiniLM), short greedy generations."""
    from pareto.data import load_task
    from pareto.data.task import TaskOracle
    from pareto.methods import FitContext
    from pareto.methods.dpo import PairSet

    task = load_task("tiny-hh", seed=0)

    def make(n_pairs: int = 48, n_val: int = 2, objectives: tuple[str, ...] = ("helpful", "harmless", "concise"),
             max_new_tokens: int = 8, seed: int = 0):
        idx = [task.objectives.index(o) for o in objectives]
        pairs = PairSet.from_pairs(task.preference_pairs("train", 4, 0.1, seed=0)[:n_pairs], idx)
        return FitContext(base_dir=tiny_lm, pairs=pairs, val_prompts=[p.text for p in task.prompts("val")][:n_val],
                          reward=TaskOracle(task, tuple(objectives)), objectives=tuple(objectives), max_length=256,
                          seed=seed, gen={"max_new_tokens": max_new_tokens, "do_sample": False, "temperature": 1.0},
                          task=task)

    return make


def per_weight_margins(make_context, held_out, weights: list[float], init_seed: int, **options):
    """Implicit rewards of response_1 over response_0 ([N], log π/π_ref) on `held_out` pairs after a short per-weight
    DPO run on the tiny LM at `weights` (`options`: PerWeightConfig fields). The LoRA init draws from torch's global
    generator: seeded here, so the result does not depend on the tests that ran before."""
    import torch

    from pareto.config import PerWeightConfig
    from pareto.methods import per_weight
    from pareto.methods.dpo import pair_logps

    torch.manual_seed(init_seed)
    cfg = PerWeightConfig(lr=1e-2, max_steps=40, batch_size=8, eval_every=1000, nll_weight=0.0, keep="last", **options)
    policy, _ = per_weight.fit(make_context(n_pairs=160, seed=0), cfg, weights=weights)
    model, tok = policy.model, policy.tokenizer
    with torch.no_grad():
        logp, _, _ = pair_logps(model, tok, held_out.prompts, held_out.responses, 256)
        with model.disable_adapter():
            ref, _, _ = pair_logps(model, tok, held_out.prompts, held_out.responses, 256)
    return (logp[:, 1] - ref[:, 1]) - (logp[:, 0] - ref[:, 0])
