"""Security rules, one test per rule a test can show.

Source rules are checked on the syntax tree of every module of the package, the UI and the Ray job scripts (a call
to the builtin `eval`, not a method named `eval` such as `model.eval()`).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
import yaml

from pareto.config import ConfigError, config_from_dict, load_config, mask_secrets

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("pareto", "ray_jobs") for p in (ROOT / d).rglob("*.py"))


def _calls(path: Path) -> list[tuple[str, ast.Call]]:
    """(dotted callee name, node) for every call in a file: `eval`, `pickle.load`, `yaml.load`, `torch.load`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                out.append((f.id, node))
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                out.append((f"{f.value.id}.{f.attr}", node))
    return out


def _offenders(rule) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{node.lineno} {name}" for p in SOURCES for name, node in _calls(p)
            if rule(name, node)]


def test_sources_were_found() -> None:
    assert len(SOURCES) > 30 and any(p.parts[-2:] == ("config", "loading.py") for p in SOURCES)


def test_no_eval_or_exec() -> None:
    assert _offenders(lambda name, _: name in ("eval", "exec", "compile", "__import__")) == []


def test_no_pickle_or_marshal_loading() -> None:
    banned = {"pickle.load", "pickle.loads", "cPickle.load", "marshal.load", "marshal.loads", "dill.load",
              "joblib.load", "cloudpickle.load", "cloudpickle.loads", "np.load", "numpy.load"}

    def rule(name: str, node: ast.Call) -> bool:
        if name in ("np.load", "numpy.load"):  # numpy is safe unless allow_pickle=True
            return any(k.arg == "allow_pickle" and getattr(k.value, "value", False) is True for k in node.keywords)
        return name in banned

    assert _offenders(rule) == []


def test_torch_load_only_with_weights_only() -> None:
    def rule(name: str, node: ast.Call) -> bool:
        return name == "torch.load" and not any(
            k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)

    assert _offenders(rule) == []


def test_yaml_safe_load_only() -> None:
    def rule(name: str, node: ast.Call) -> bool:
        if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            return True
        if name in ("yaml.load", "yaml.load_all"):
            loader = [k.value for k in node.keywords if k.arg == "Loader"] + node.args[1:]
            return not (loader and "Safe" in ast.unparse(loader[0]))
        return False

    assert _offenders(rule) == []


def test_no_shell_true_subprocess() -> None:
    def rule(name: str, node: ast.Call) -> bool:
        return name.startswith("subprocess.") and any(
            k.arg == "shell" and getattr(k.value, "value", False) is True for k in node.keywords)

    assert _offenders(rule) == []


def test_python_yaml_tags_are_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: x\nseed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="safe_load"):
        load_config(path)
    assert not marker.exists()


def test_weights_are_safetensors_and_pickles_are_refused(tmp_path: Path) -> None:
    """The loader refuses a pickle before unpickling it: a payload that would run code does not run."""
    import pickle

    from pareto.io import CheckpointError, read_safetensors

    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    file = tmp_path / "model.safetensors"
    file.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="pickle"):
        read_safetensors(file)
    assert not marker.exists()


def test_reward_sources_are_names_not_code() -> None:
    """Rewards come from a closed set of named sources (or an HF model id), never from a code string."""
    with pytest.raises(ConfigError, match="ppo.reward_sources.helpful"):
        config_from_dict({"ppo": {"reward_sources": {"helpful": "lambda r: len(r)"}}})


def test_hf_models_do_not_trust_remote_code_by_default() -> None:
    from pareto.config import HFRewardModelConfig

    assert HFRewardModelConfig(model="x/y", objectives=["helpful"]).trust_remote_code is False


# ---- servers bind 127.0.0.1 unless configured ---------------------------------------------------------------------
def test_ui_binds_loopback_by_default() -> None:
    from pareto import cli

    assert inspect.signature(cli.ui).parameters["host"].default == "127.0.0.1"


def test_printed_mlflow_and_vllm_commands_bind_loopback() -> None:
    from types import SimpleNamespace

    from pareto import cli
    from pareto.config import ExperimentConfig

    result = SimpleNamespace(seconds=1.0, reward_accuracy={}, fronts={}, run_id="r", experiment="e",
                             tracking_uri="sqlite:///x.db")
    text = cli.summary(result, ExperimentConfig())
    assert "mlflow ui --backend-store-uri sqlite:///x.db --host 127.0.0.1" in text
    assert "--host 127.0.0.1" in inspect.getsource(cli.export)


def test_local_ray_has_no_dashboard_and_local_scripts_bind_loopback() -> None:
    from pareto.distributed import pipeline

    src = inspect.getsource(pipeline.init_ray)
    assert re.search(r'ray\.init\(address="local".*include_dashboard=False', src, re.S)
    runbook = (ROOT / "infra" / "local" / "runbook-local.sh").read_text()
    assert "--dashboard-host=127.0.0.1" in runbook and "--host 127.0.0.1" in runbook
    assert "0.0.0.0" not in runbook
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert "0.0.0.0" not in conftest


# ---- no secrets in logged params -----------------------------------------------------------------------------------
def test_mask_secrets_rules() -> None:
    masked = mask_secrets({
        "hub.hf_token": "hf_abcdefghijklmnopqrstuvwxyz", "x.api_key": "abc", "x.apiKey": "abc", "db.password": "p",
        "aws.secret_access_key": "s", "tracking.uri": "http://bob:s3cr3t@mlflow.internal:5000",
        "notes": "sk-abcdefghijklmnop1234", "evaluation.max_new_tokens": 48, "model.tokenizer": "gpt2",
        "x.auth_token": None, "serving.url": "http://127.0.0.1:8000",
    })
    assert masked == {
        "hub.hf_token": "***", "x.api_key": "***", "x.apiKey": "***", "db.password": "***",
        "aws.secret_access_key": "***", "tracking.uri": "http://bob:***@mlflow.internal:5000",
        "notes": "***", "evaluation.max_new_tokens": 48, "model.tokenizer": "gpt2",
        "x.auth_token": None, "serving.url": "http://127.0.0.1:8000",
    }


def test_logged_params_have_no_secrets(tmp_path: Path) -> None:
    """The pipeline logs `cfg.flat()`; a tracking URI with a password reaches MLflow masked."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pareto.distributed import pipeline

    assert "mlflow.log_params(cfg.flat())" in inspect.getsource(pipeline.run_pipeline)
    cfg = config_from_dict({"tracking": {"uri": "https://alice:hunter2@mlflow.example.com"},
                            "serving": {"url": "http://tok:sk-live-0123456789@127.0.0.1:8000"}})
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    mlflow.set_tracking_uri(uri)
    # an explicit experiment: an earlier test may leave another store's experiment active in this process
    with mlflow.start_run(experiment_id=MlflowClient(uri).create_experiment("security")) as run:
        mlflow.log_params(cfg.flat())
    params = MlflowClient(uri).get_run(run.info.run_id).data.params
    assert params["tracking.uri"] == "https://alice:***@mlflow.example.com"
    assert params["serving.url"] == "http://tok:***@127.0.0.1:8000"
    assert not any("hunter2" in v or "sk-live" in v for v in params.values())
    assert yaml.safe_load(params["evaluation.max_new_tokens"]) == 48  # ordinary params are untouched
