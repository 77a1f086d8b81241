"""The bad-input catalogue: every row is one bad input and the one-line error it must give.

Config and CLI rows run the real `pareto` CLI in a subprocess with an empty state folder, and check: exit code 2,
one `error:` line naming the field and the fix, no traceback, and nothing written to the state folder (no
MLflow store, run, cache or checkpoint). Dataset and checkpoint rows call the loaders and check the one-line error
and that the loader wrote nothing.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PARETO = [sys.executable, "-m", "pareto.cli"]
QUICK = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())


def _with(path: str, value, base: dict | None = None) -> dict:
    """A copy of the quickstart config with one dotted key set (`value` None-able via the DELETE marker)."""
    cfg = json.loads(json.dumps(base or QUICK))
    node = cfg
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return cfg


DELETE = object()


def run_cli(args: list[str], state: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PARETO_HOME"] = str(state)
    return subprocess.run([*PARETO, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---- configs: (id, config (dict) or raw YAML text (str) or bytes, extra CLI args, words the error must contain) --
CONFIG_ROWS = [
    ("unknown-top-level-key", _with("epochs", 3), [], ["epochs", "unknown key", "remove it"]),
    ("unknown-nested-key", _with("methods.panacea.learning_rate", 1e-3), [],
     ["methods.panacea.learning_rate", "unknown key"]),
    ("wrong-type-int", _with("seed", "abc"), [], ["seed", "integer"]),
    ("wrong-type-float", _with("methods.panacea.lr", "fast"), [], ["methods.panacea.lr", "number"]),
    ("no-checks-to-keep-the-best-by", _with("methods.per_weight_dpo.val_prompts", 0), [],
     ["methods.per_weight_dpo", "val_prompts: 0", "keep: last"]),
    ("wrong-type-list", _with("objectives", "helpful"), [], ["objectives", "list"]),
    ("missing-objective", _with("objectives", ["helpful"]), [], ["objectives", "at least 2"]),
    ("objective-not-in-task", _with("objectives", ["helpful", "funny"]), [],
     ["objectives", "'funny'", "use some of"]),
    ("duplicate-objective", _with("objectives", ["helpful", "helpful"]), [], ["objectives", "unique"]),
    ("lambda-negative", _with("methods.per_weight_dpo.weights", [[-0.5, 1.0, 0.5]]), [],
     ["methods.per_weight_dpo.weights.0", "non-negative"]),
    ("lambda-nan", "methods:\n  per_weight_dpo:\n    weights: [[.nan, 0.5, 0.5]]\n", [],
     ["methods.per_weight_dpo.weights.0", "finite"]),
    ("lambda-off-simplex", _with("methods.per_weight_dpo.weights", [[0.5, 0.3, 0.1]]), [],
     ["methods.per_weight_dpo.weights.0", "sum to 0.9", "normalise"]),
    ("lambda-wrong-length", _with("methods.per_weight_dpo.weights", [[0.5, 0.5]]), [],
     ["methods.per_weight_dpo.weights.0", "2 weights", "3 objectives"]),
    ("lambda-not-numbers", _with("methods.per_weight_dpo.weights", [["a", "b", "c"]]), [],
     ["methods.per_weight_dpo.weights.0"]),
    ("reference-point-wrong-k", _with("evaluation.reference_point", [0.0, 0.0]), [],
     ["evaluation.reference_point", "2 values", "3 objectives"]),
    ("reference-point-inf", "evaluation:\n  reference_point: [0.0, .inf, 0.0]\n", [],
     ["evaluation.reference_point", "finite"]),
    ("unknown-method", _with("methods.dpo_magic", {"beta": 0.1}), [], ["methods.dpo_magic", "unknown key"]),
    ("no-method", _with("methods", {}), [], ["methods", "enable at least one method"]),
    ("impossible-resources", _with("resources", {"num_cpus": 1, "cpus_per_task": 4}), [],
     ["resources.cpus_per_task", "asks 4", "lower it"]),
    ("negative-gpus", _with("resources.gpus_per_task", -1), [], ["resources.gpus_per_task", "greater than or equal"]),
    ("unknown-task", _with("task.name", "imdb"), [], ["task.name", "'imdb'", "task.dataset"]),
    ("python-object-tag", "name: x\nseed: !!python/object/apply:os.system ['touch PWNED']\n", [],
     ["safe_load", "plain mappings"]),
    ("yaml-syntax", "name: x\nobjectives: [helpful, harmless\n", [], ["line", "not valid YAML"]),
    ("top-level-list", "- a\n- b\n", [], ["top level must be a mapping"]),
    ("empty-file", "", [], ["bad.yaml", "empty", "configs/quickstart.yaml"]),
    ("comments-only", "# name: x\n\n# objectives: [a, b]\n", [], ["bad.yaml", "empty", "only comments"]),
    ("non-utf8-config", b"name: caf\xe9\n", [], ["not UTF-8", "save the config as UTF-8"]),
    ("bad-override", QUICK, ["--set", "methods.panacea.lr"], ["--set", "KEY=VALUE"]),
    ("override-wrong-type", QUICK, ["--set", "evaluation.grid_points=many"], ["evaluation.grid_points", "integer"]),
]


@pytest.mark.parametrize(("config", "extra", "needles"), [r[1:] for r in CONFIG_ROWS],
                         ids=[r[0] for r in CONFIG_ROWS])
def test_bad_config_fails_before_compute(tmp_path: Path, config, extra: list[str], needles: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    if isinstance(config, bytes):
        path.write_bytes(config)
    else:
        path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    state = tmp_path / "state"
    proc = run_cli(["run", str(path), *extra], state, tmp_path)
    assert_one_line_error(proc, *needles)
    assert files_under(state) == []  # no MLflow store, run, cache or checkpoint
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "mlruns").exists()


def test_missing_config_file(tmp_path: Path) -> None:
    proc = run_cli(["validate", str(tmp_path / "nope.yaml")], tmp_path / "state", tmp_path)
    assert_one_line_error(proc, "nope.yaml", "not found", "pass a YAML file")
    assert files_under(tmp_path / "state") == []


# ---- CLI values --------------------------------------------------------------------------------------------------
def _no_runs(state: Path) -> None:
    """The store may exist (reading it creates the SQLite file) but holds no run."""
    from mlflow.tracking import MlflowClient

    if (state / "mlflow.db").exists():
        client = MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
        exps = [e.experiment_id for e in client.search_experiments()]
        assert not exps or client.search_runs(exps) == []
    assert not (state / "mlartifacts").exists() and not (state / "cache").exists()


CLI_ROWS = [
    ("unknown-run-id", ["front", "0123456789abcdef0123456789abcdef"], ["no MLflow run", "0123456789abcdef",
                                                                          "'latest'"]),
    ("no-runs-yet", ["front", "latest"], ["no pareto pipeline run", "pareto quickstart"]),
    ("unknown-experiment", ["front", "latest", "--experiment", "nope"], ["no MLflow experiment 'nope'"]),
    ("query-unknown-experiment", ["query", "--experiment", "nope", "--weights", "0.5,0.5", "--prompt", "hi"],
     ["'pareto-nope'", "no registered model", "pareto run"]),
    ("export-bad-grid", ["export", "latest", "--out", "out", "--grid-points", "1"], ["--grid-points", ">= 2"]),
]


@pytest.mark.parametrize(("args", "needles"), [r[1:] for r in CLI_ROWS], ids=[r[0] for r in CLI_ROWS])
def test_bad_cli_value(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    state = tmp_path / "state"
    proc = run_cli(args, state, tmp_path)
    assert_one_line_error(proc, *needles)
    _no_runs(state)
    assert not (tmp_path / "out").exists()


def test_state_folder_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    proc = run_cli(["front", "latest"], tmp_path / "file" / "state", tmp_path)
    assert_one_line_error(proc, "state folder", "not writable", "PARETO_HOME")


# Weights strings as the UI and `pareto query` parse them (pareto.front.grid.parse_weights).
WEIGHT_ROWS = [
    ("not-a-number", "0.5,abc,0.5", 3, ["'abc'", "as a number"]),
    ("empty", "", 3, ["empty", "comma-separated"]),
    ("wrong-count", "0.5,0.5", 3, ["3"]),
    ("negative", "-0.2,0.6,0.6", 3, ["negative"]),
    ("nan", "nan,0.5,0.5", 3, ["finite"]),
]


@pytest.mark.parametrize(("text", "k", "needles"), [r[1:] for r in WEIGHT_ROWS], ids=[r[0] for r in WEIGHT_ROWS])
def test_bad_weights_string(text: str, k: int, needles: list[str]) -> None:
    from pareto.front.grid import parse_weights

    with pytest.raises(ValueError) as err:
        parse_weights(text, k)
    message = str(err.value)
    assert "\n" not in message and message.startswith("weights")
    for needle in needles:
        assert needle in message, (needle, message)


# ---- datasets ----------------------------------------------------------------------------------------------------
GOOD_ROW = {"prompt": "p", "response_0": "a", "response_1": "b", "h": 1}
DATASET_ROWS = [
    ("missing-column", [GOOD_ROW, {"prompt": "q", "response_0": "a", "h": 0}], ["row 2", "response_1", "missing"]),
    ("empty-file", b"", ["empty file", "at least one row"]),
    ("label-out-of-range", [GOOD_ROW, {**GOOD_ROW, "h": 7}], ["row 2", "'h'", "out of range"]),
    ("non-utf8", json.dumps(GOOD_ROW).encode() + b"\n" + json.dumps(GOOD_ROW).replace("a", "\udcff").encode(
        "utf-8", "surrogateescape") + b"\n", ["row 2", "UTF-8"]),
    ("not-json", json.dumps(GOOD_ROW).encode() + b"\n{prompt: oops\n", ["row 2", "JSON"]),
]


@pytest.mark.parametrize(("content", "needles"), [r[1:] for r in DATASET_ROWS], ids=[r[0] for r in DATASET_ROWS])
def test_bad_dataset(tmp_path: Path, content, needles: list[str]) -> None:
    from pareto.config import DatasetConfig
    from pareto.data.loaders import DatasetError, load_split

    file = tmp_path / "train.jsonl"
    if isinstance(content, bytes):
        file.write_bytes(content)
    else:
        file.write_text("".join(json.dumps(r) + "\n" for r in content))
    before = files_under(tmp_path)
    spec = DatasetConfig(format="jsonl", path=str(file), labels={"helpful": "h"}, splits={"train": "train"})
    with pytest.raises(DatasetError) as err:
        load_split(spec, ["helpful", "harmless"], "train")
    message = str(err.value)
    assert "\n" not in message and "train.jsonl" in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert files_under(tmp_path) == before


# A response longer than the model's context: `encode_pair` would truncate it (training on half a response, or on
# none of it), so the rows are checked against the context when they are loaded, before any compute.
def test_row_longer_than_context_is_an_error() -> None:
    from pareto.data.loaders import DatasetError
    from pareto.models.policy import check_fits_context, encode_pair, train_tokenizer

    corpus = [f"User: tell me about item {i}\nAssistant: item {i} is fine" for i in range(50)]
    tok = train_tokenizer(corpus, 300)
    rows = [("train split, pair 0 response_0", "tell me about item 3", "item 3 is fine"),
            ("train split, pair 1 response_1", "tell me about item 7, please", "item seven " * 30)]
    lengths = [len(encode_pair(tok, p, r, 10**6)[0]) for _, p, r in rows]  # the untruncated encodings
    assert lengths[0] < lengths[1]
    check_fits_context(tok, rows, lengths[1])  # exactly at the limit: fits
    check_fits_context(tok, rows[:1], lengths[0])
    with pytest.raises(DatasetError) as err:
        check_fits_context(tok, rows, lengths[1] - 1, field="model.tiny.max_length")
    message = str(err.value)
    assert "\n" not in message
    for needle in ["train split, pair 1 response_1", "'tell me about item 7, please'", f"is {lengths[1]} tokens",
                   f"model.tiny.max_length={lengths[1] - 1}", "(1 of 2 rows", f"at least {lengths[1]}",
                   "shorten or drop"]:
        assert needle in message, (needle, message)
    with pytest.raises(DatasetError, match=r"pair 1 response_1 .* \(2 of 2 rows"):  # the longest row is named
        check_fits_context(tok, rows, lengths[0] - 1)


def test_task_rows_are_checked_against_the_configured_context() -> None:
    """The pipeline's check: the task's SFT examples and training pairs under the base model's tokenizer."""
    from pareto.config import config_from_dict
    from pareto.data.loaders import DatasetError
    from pareto.distributed.stages import check_context

    check_context(config_from_dict(QUICK))  # the quickstart fits its 128-token context
    with pytest.raises(DatasetError) as err:
        check_context(config_from_dict(_with("model.tiny.max_length", 40)))
    message = str(err.value)
    assert "task tiny-hh train split, SFT example" in message and "model.tiny.max_length=40" in message
    # without SFT (an HF-style base is not SFT-trained) the training pairs are still checked
    with pytest.raises(DatasetError, match=r"train split, pair \d+ response_[01] .* model.tiny.max_length=40"):
        check_context(config_from_dict(_with("model.sft", "never", _with("model.tiny.max_length", 40))))


def test_run_with_rows_longer_than_context_fails_before_compute(tmp_path: Path) -> None:
    state, db = tmp_path / "state", tmp_path / "mlflow.db"
    proc = run_cli(["run", str(ROOT / "configs" / "quickstart.yaml"), "--set", "model.tiny.max_length=32",
                    "--set", f"state_dir={state}", "--set", f"tracking.uri=sqlite:///{db}"], state, tmp_path)
    assert_one_line_error(proc, "SFT example", "tokens, longer than model.tiny.max_length=32",
                          "raise model.tiny.max_length to at least", "shorten or drop")
    assert files_under(state) == [] and not db.exists()  # no MLflow store, run, cache or checkpoint
    assert "Ray" not in proc.stderr  # stopped before Ray started


# ---- checkpoints -------------------------------------------------------------------------------------------------
def _saved_reward(path: Path, hidden: int = 16) -> Path:
    """A reward checkpoint as LearnedVectorReward.save writes it: meta.json + heads.safetensors."""
    import torch
    from safetensors.torch import save_file

    from pareto.models.reward import MultiHeadRewardModel

    torch.manual_seed(0)
    model = MultiHeadRewardModel(2, embed_dim=8, hidden=(hidden,))
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "heads.safetensors"))
    (path / "meta.json").write_text(json.dumps({
        "format_version": 1, "names": ["helpful", "harmless"], "encoder": "sentence-transformers/all-MiniLM-L6-v2",
        "encoder_max_length": 128, "model": model.config(), "normalizer": None}))
    return path


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _pickle(file: Path) -> None:
    import torch

    torch.save({"w": torch.zeros(2)}, file)  # what a .bin/.pt checkpoint is: a pickle inside a zip


def _plain_pickle(file: Path) -> None:
    file.write_bytes(pickle.dumps({"w": [0.0, 1.0]}))


def _wrong_shapes(file: Path) -> None:
    _saved_reward(file.parent.parent / "other", hidden=32)
    file.write_bytes((file.parent.parent / "other" / "heads.safetensors").read_bytes())


REWARD_ROWS = [
    ("truncated-safetensors", _truncate, ["heads.safetensors", "truncated or corrupt", "re-save"]),
    ("torch-save-pickle", _pickle, ["heads.safetensors", "pickle", "never loaded", "save_file"]),
    ("plain-pickle", _plain_pickle, ["heads.safetensors", "pickle"]),
    ("wrong-shapes", _wrong_shapes, ["has shape", "expected"]),
]


@pytest.mark.parametrize(("damage", "needles"), [r[1:] for r in REWARD_ROWS], ids=[r[0] for r in REWARD_ROWS])
def test_bad_reward_checkpoint(tmp_path: Path, damage, needles: list[str]) -> None:
    from pareto.models.reward import LearnedVectorReward

    path = _saved_reward(tmp_path / "rm")
    damage(path / "heads.safetensors")
    before = files_under(path)
    with pytest.raises(ValueError) as err:
        LearnedVectorReward.load(path)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert files_under(path) == before


@pytest.mark.parametrize("damage", [_truncate, _pickle], ids=["truncated", "pickle"])
def test_bad_panacea_adapter(tmp_path: Path, damage) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pareto.io import CheckpointError
    from pareto.models.svd_lora import add_panacea_adapter, load_panacea, panacea_lora_config, save_panacea

    def base() -> LlamaForCausalLM:
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                            max_position_embeddings=32))

    model = add_panacea_adapter(base(), panacea_lora_config(2, 2, 4, ["q_proj", "v_proj"]))
    save_panacea(model, tmp_path / "adapter")
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    damage(weights)
    with pytest.raises(CheckpointError) as err:
        load_panacea(base(), tmp_path / "adapter")
    assert "\n" not in str(err.value) and "adapter_model.safetensors" in str(err.value)


def test_a_hub_dataset_offline_is_one_line_before_compute(tmp_path: Path) -> None:
    """A real-dataset recipe whose hub dataset this (offline) machine cannot reach stops in one line naming the
    dataset and the fix, before any compute: nothing written (no MLflow store, no Ray, no cache)."""
    state = tmp_path / "state"
    proc = subprocess.run([*PARETO, "run", str(ROOT / "configs/recipes/panacea-dpo-pku-saferlhf.yaml"),
                           "--set", f"state_dir={state}", "--set", f"tracking.uri=sqlite:///{state / 'm.db'}"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: task.dataset.hub_id=PKU-Alignment/PKU-SafeRLHF: could not load split")
    assert "task.dataset.path" in lines[0] and "network" in lines[0]
    assert not state.exists() or not any(state.iterdir())


# ---- real-data files through `pareto run`: one line naming file, row and field; what was written stays intact ----
def _hh_row(prompt: str, good: str, bad: str) -> dict:
    return {"chosen": f"\n\nHuman: {prompt}\n\nAssistant: {good}",
            "rejected": f"\n\nHuman: {prompt}\n\nAssistant: {bad}"}


def _gzip_lines(rows: list[dict]) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode(), mtime=0)


HH_GOOD = [_hh_row(f"question {i}?", f"a kind answer {i}", f"a rude answer {i}") for i in range(300)]
JSONL_GOOD = [{"prompt": f"q{i}", "response_0": "a", "response_1": "b", "h": 1, "s": 0} for i in range(40)]
# (id, format, {file name: bytes}, words the one-line error must contain)
REAL_DATA_ROWS = [
    ("gzip-truncated", "hh_rlhf", {"helpful-base/train.jsonl.gz": _gzip_lines(HH_GOOD)[:2000]},
     ["helpful-base/train.jsonl.gz", "damaged gzip after line", "copy the file again"]),
    ("gzip-corrupt", "hh_rlhf", {"helpful-base/train.jsonl.gz": _gzip_lines(HH_GOOD)[:30] + b"\xff" * 64
                                 + _gzip_lines(HH_GOOD)[94:]},
     ["helpful-base/train.jsonl.gz", "damaged gzip"]),
    ("hh-not-json", "hh_rlhf", {"helpful-base/train.jsonl.gz": gzip.compress(
        json.dumps(HH_GOOD[0]).encode() + b'\n{"chosen": "x", oops\n', mtime=0)},
     ["helpful-base/train.jsonl.gz", "row 2", "not valid JSON"]),
    ("hh-missing-rejected", "hh_rlhf", {"helpful-base/train.jsonl.gz": _gzip_lines(
        [*HH_GOOD[:5], {"chosen": HH_GOOD[5]["chosen"]}])}, ["helpful-base/train.jsonl.gz", "row 6", "rejected"]),
    ("hh-no-assistant", "hh_rlhf", {"helpful-base/train.jsonl.gz": _gzip_lines(
        [*HH_GOOD[:2], {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"}])},
     ["row 3", "chosen", "no '\\n\\nAssistant:' turn"]),
    ("jsonl-not-utf8", "jsonl", {"train.jsonl": json.dumps(JSONL_GOOD[0]).encode() + b"\n"
                                 + json.dumps(JSONL_GOOD[1]).replace("q1", "caf\udce9").encode(
                                     "utf-8", "surrogateescape") + b"\n"}, ["train.jsonl", "row 2", "UTF-8"]),
    ("jsonl-label-out-of-range", "jsonl", {"train.jsonl": "".join(
        json.dumps(r) + "\n" for r in [*JSONL_GOOD[:3], {**JSONL_GOOD[3], "h": 5}]).encode()},
     ["train.jsonl", "row 4", "'h'", "out of range"]),
    ("jsonl-zero-usable", "jsonl", {"train.jsonl": "".join(json.dumps({**r, "h": -1, "s": -1}) + "\n"
                                                           for r in JSONL_GOOD).encode()},
     ["0 usable training pairs of", "task.dataset.labels"]),
]


def _real_data_config(root: Path, fmt: str) -> dict:
    if fmt == "hh_rlhf":
        dataset = {"format": "hh_rlhf", "path": str(root),
                   "labels": {"helpful": "helpful-base", "harmless": "harmless-base"}, "splits": {"train": "train"}}
    else:
        dataset = {"format": "jsonl", "path": str(root / "train.jsonl"), "labels": {"helpful": "h", "harmless": "s"},
                   "splits": {"train": "train"}}
    cfg = _with("methods.panacea.tied_gaps", DELETE, _with("objectives", ["helpful", "harmless"]))  # a dataset's -1
    return {**cfg, "task": {"name": "my-data", "dataset": dataset},  # is a missing label, not a tie: refused there
            "evaluation": {**QUICK.get("evaluation", {}), "reference_point": [-1.0, -1.0], "scorer": "reward_model"}}


@pytest.mark.parametrize(("fmt", "files", "needles"), [r[1:] for r in REAL_DATA_ROWS],
                         ids=[r[0] for r in REAL_DATA_ROWS])
def test_bad_real_data_file_stops_a_run_and_keeps_what_was_written(tmp_path: Path, fmt: str, files: dict,
                                                                   needles: list[str]) -> None:
    data = tmp_path / "data"
    if fmt == "hh_rlhf":  # the other subset is fine
        files = {"harmless-base/train.jsonl.gz": _gzip_lines(HH_GOOD), **files}
    for name, content in files.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(content)
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(_real_data_config(data, fmt)))
    # a state folder that already holds a finished cache entry, a checkpoint and an MLflow store: all untouched
    state = tmp_path / "state"
    for name, content in {"cache/reward-0123/DONE": b"ok", "cache/reward-0123/model.safetensors": os.urandom(256),
                          "checkpoints/panacea-x/step-000050/state.json": b'{"step": 50}',
                          "mlflow.db": os.urandom(4096)}.items():
        (state / name).parent.mkdir(parents=True, exist_ok=True)
        (state / name).write_bytes(content)
    before = {p: (state / p).read_bytes() for p in files_under(state) if (state / p).is_file()}
    proc = run_cli(["run", str(config)], state, tmp_path)
    assert_one_line_error(proc, *needles)
    assert {p for p in files_under(state) if (state / p).is_file()} == set(before)  # nothing new, nothing lost
    assert {p: (state / p).read_bytes() for p in before} == before
