"""Honest caches: a stage's entry is keyed by its config sections, its code version, pareto's source and the
library versions; a changed SFT stage version rebuilds the base, an unchanged tree reuses it; `pareto cache list`
says which entries today's code would use and `pareto cache clear --stale` removes the others."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pareto import cache
from pareto.config import load_config
from tests.conftest import ROOT, _exe

SMALL = ROOT / "tests" / "configs" / "small.yaml"


def test_the_key_names_everything_that_makes_the_artefact(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = load_config(SMALL, [f"state_dir={tmp_path}"])
    key = cache.cache_key(cfg, "base")
    assert key["stage"] == "base" and key["code"] == cache.source_digest() and len(key["code"]) == 16
    assert set(key["libraries"]) >= {"torch", "transformers", "peft"}
    base = cache.cache_dir(cfg, "base")
    assert base.parent == tmp_path.resolve() / "cache" and base.name.startswith("base-")
    # a sweep-only setting is not in the base's key; a model setting is
    assert cache.cache_dir(load_config(SMALL, [f"state_dir={tmp_path}", "methods.panacea.lr=0.01"]), "base") == base
    assert cache.cache_dir(load_config(SMALL, [f"state_dir={tmp_path}", "model.tiny.sft_epochs=3"]), "base") != base
    # a new stage version, new pareto source or a library upgrade: a new entry
    monkeypatch.setitem(cache.STAGE_VERSIONS, "base", cache.STAGE_VERSIONS["base"] + 1)
    assert cache.cache_dir(cfg, "base") != base
    monkeypatch.undo()
    monkeypatch.setattr(cache, "source_digest", lambda: "0" * 16)
    assert cache.cache_dir(cfg, "base") != base
    monkeypatch.undo()
    upgraded = {**cache.library_versions(), "torch": "0.0.1"}
    monkeypatch.setattr(cache, "library_versions", lambda: upgraded)
    assert cache.cache_dir(cfg, "base") != base
    monkeypatch.undo()
    assert cache.cache_dir(cfg, "base") == base
    with pytest.raises(ValueError, match="unknown cache stage 'sft'"):
        cache.cache_key(cfg, "sft")


def _stage_models(cfg, uri: str) -> dict[str, str]:
    """Run the recorder's stage_models under a parent run; -> {nested run name: cache tag}."""
    from pareto.distributed import recorder

    recorder.init_ray(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("cache")
    with mlflow.start_run() as parent:
        recorder.stage_models(cfg, progress=False, log_models=False)
    client = MlflowClient(uri)
    runs = client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {r.info.run_name: r.data.tags.get("cache") for r in runs}


def _cli(*args: str, state: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PARETO_HOME"}
    return subprocess.run([_exe("pareto"), "cache", *args, "--state-dir", str(state)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT)


def test_a_new_sft_version_rebuilds_the_base_and_an_unchanged_tree_reuses_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = load_config(SMALL, [f"state_dir={state}"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = _stage_models(cfg, uri)
    assert first == {"sft": "miss", "reward_model": "miss", "base_eval": "miss"}
    base = cache.cache_dir(cfg, "base")
    weights = base / "model.safetensors"
    built = weights.stat().st_mtime_ns
    assert json.loads((base / cache.KEY_FILE).read_text()) == cache.cache_key(cfg, "base")

    # nothing changed: every stage comes from the cache, the base's files untouched
    assert _stage_models(cfg, uri) == {"sft": "hit", "reward_model": "hit", "base_eval": "hit"}
    assert weights.stat().st_mtime_ns == built

    # the SFT stage's code changed (its version bumped): the base is rebuilt in a new entry, the old one kept
    # until cleared, and the stages that read the base (its point) are rebuilt with it
    monkeypatch.setitem(cache.STAGE_VERSIONS, "base", cache.STAGE_VERSIONS["base"] + 1)
    rebuilt = _stage_models(cfg, uri)
    assert rebuilt == {"sft": "miss", "reward_model": "hit", "base_eval": "miss"}
    new_base = cache.cache_dir(cfg, "base")
    assert new_base != base and (new_base / "DONE").is_file() and weights.stat().st_mtime_ns == built
    monkeypatch.undo()

    # the CLI (a fresh process: today's STAGE_VERSIONS) sees the bumped entry as stale, the original as current
    listed = {r["name"]: r["state"] for r in json.loads(_cli("list", "--json", state=state).stdout)}
    assert listed[base.name] == "current" and listed[new_base.name] == "stale"
    out = _cli("clear", "--stale", state=state)
    assert out.returncode == 0 and "removed 1 entries" in out.stdout, out.stdout + out.stderr
    assert not new_base.exists() and (base / "DONE").is_file()
    assert _cli("clear", "--kind", "sft", state=state).returncode != 0


def test_checkpoint_folders_are_listed_and_only_other_code_is_stale(tmp_path: Path) -> None:
    names = {f"panacea-{'0' * 16}-{cache.source_digest()}-0": "current",
             f"per_weight_dpo-{'0' * 16}-{'f' * 16}-1-0.5000_0.5000": "stale",
             f"panacea_ppo-{'0' * 16}": "unknown"}  # PPO's folders do not name the code: never cleared as stale
    for name in names:
        (tmp_path / "checkpoints" / name / "step-000050").mkdir(parents=True)
    rows = {r["name"]: r for r in (e.row() for e in cache.list_entries(tmp_path))}
    assert {n: rows[n]["state"] for n in names} == names and {r["kind"] for r in rows.values()} == {"checkpoint"}
    out = _cli("clear", "--stale", "--kind", "checkpoint", state=tmp_path)
    assert out.returncode == 0 and "removed 1 entries" in out.stdout
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted(n for n, s in names.items()
                                                                                 if s != "stale")
