"""PPO on a real dataset config: `configs/recipes/ppo-vllm-hh-rlhf.yaml` end to end through the pipeline.

The recipe runs as on the cluster (HH-RLHF prompts, helpful-base -> helpful and harmless-base -> harmless, both
objectives rewarded by Hugging Face reward models with the `hh` template, MORLHF and Panacea-PPO fronts scored by
the run's reward model), with `--set` overrides only for what cannot run here: a tiny chat LM built here instead of
Qwen, the first rows of the shipped HH-RLHF test files (their `test` split cut into train / val / eval) instead of
the hub, tiny GPT-2 reward models built here instead of the paper's, transformers rollouts and gloo on CPU actors,
and a few steps, prompts and tokens.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import GPT2Config, GPT2ForSequenceClassification

from pareto.config import TinyModelConfig, load_config
from pareto.data.chat import to_messages
from pareto.data.loaders import HH_ASSISTANT
from pareto.distributed import stages
from pareto.distributed.bundle import pack
from pareto.distributed.pipeline import run_pipeline
from pareto.distributed.ppo import common
from pareto.io import package_path
from pareto.models.policy import build_tiny_model, load_tokenizer, prompt_text, save_model, train_tokenizer
from tests.conftest import ROOT
from tests.test_hf_reward import bpe

RECIPE = ROOT / "configs" / "recipes" / "ppo-vllm-hh-rlhf.yaml"
ROWS = 60  # per subset: 6 val, 6 eval and 48 train pairs each
STEPS = 2


def hh_rows(subset: str, n: int) -> list[dict]:
    with gzip.open(package_path("package:pareto/data/hh_rlhf", "test") / subset / "test.jsonl.gz", "rt") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first rows of each shipped HH-RLHF subset, laid out as the hub repository is."""
    root = tmp_path_factory.mktemp("hh")
    for subset in ("helpful-base", "harmless-base"):
        (root / subset).mkdir()
        with gzip.open(root / subset / "test.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(row) + "\n" for row in hh_rows(subset, ROWS))
    return root


@pytest.fixture(scope="module")
def tiny_chat_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny Llama with a chat template and a BPE tokenizer trained on HH dialogues."""
    rows = [r for s in ("helpful-base", "harmless-base") for r in hh_rows(s, 200)]
    corpus = [text for r in rows for text in (r["chosen"], r["rejected"])]
    corpus += [f"User: {m['content']}\nAssistant:" for r in rows[:100] for m in to_messages(r["chosen"])]
    tokenizer = train_tokenizer(corpus, 1024)
    cfg = TinyModelConfig(hidden_size=64, intermediate_size=128, num_heads=1, num_kv_heads=1, vocab_size=1024,
                          max_length=256)
    path = tmp_path_factory.mktemp("tiny-chat-lm") / "model"
    save_model(build_tiny_model(cfg, tokenizer, seed=0), tokenizer, path)
    return path


def reward_model(path: Path, seed: int) -> Path:
    """Like Ray2333/gpt2-large-{helpful,harmless}-reward_model: GPT-2, one output, no pad token."""
    tokenizer = bpe(with_pad=False)
    torch.manual_seed(seed)
    GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=32, n_layer=2,
                                             n_head=2, num_labels=1, pad_token_id=None)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def run(dataset: Path, tiny_chat_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("ppo-dataset")
    helpful, harmless = reward_model(tmp / "rm-helpful", 1), reward_model(tmp / "rm-harmless", 2)
    method = {"max_steps": STEPS, "prompts_per_step": 4, "samples_per_prompt": 2, "ppo_epochs": 1,
              "minibatches": 2, "max_new_tokens": 8}
    overrides = [
        f"model.base={tiny_chat_lm}", "model.max_prompt_tokens=128", "model.max_response_tokens=32",
        "task.dataset.hub_id=null", f"task.dataset.path={dataset}",
        "task.dataset.splits={train: 'test[20%:]', val: 'test[:10%]', eval: 'test[10%:20%]'}",
        f"reward_model.hf=[{{model: {helpful}, objectives: [helpful], template: hh, batch_size: 32}}, "
        f"{{model: {harmless}, objectives: [harmless], template: hh, batch_size: 32}}]",
        "reward_model.epochs=2",
        *[f"methods.{m}.{k}={v}" for m in ("morlhf", "panacea_ppo") for k, v in method.items()],
        "methods.morlhf.weights=[[0.0, 1.0], [1.0, 0.0]]", "methods.panacea_ppo.preferences_per_step=2",
        "ppo.engine=transformers", "ppo.backend=gloo",
        *[f"ppo.{role}={{count: {n}, cpus: 0.25, gpus: 0, threads: 1}}"
          for role, n in (("trainer", 2), ("rollout", 1), ("reward", 1), ("reference", 1))],
        "evaluation.grid_points=3", "evaluation.n_prompts=3", "evaluation.max_new_tokens=8",
        "evaluation.normalizer_prompts=8",
        "resources.cpus_per_task=1", "resources.num_cpus=2",
        "resources.by_value_max_mb=0",  # the base model travels by reference, as a real model does on the cluster
        f"state_dir={tmp / 'state'}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", "tracking.registry=false",
    ]
    cfg = load_config(RECIPE, overrides)
    result = run_pipeline(cfg, progress=False)
    return {"cfg": cfg, "result": result, "state": tmp / "state", "base": tiny_chat_lm}


def test_actors_load_a_model_by_reference_without_copying(tiny_chat_lm: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "UNPACK_ROOT", tmp_path / "unpacked")
    assert common.unpack_tmp(str(tiny_chat_lm), "base") == tiny_chat_lm  # a shared folder: read where it is
    assert common.unpack_tmp("Qwen/Qwen2.5-0.5B-Instruct", "base") == "Qwen/Qwen2.5-0.5B-Instruct"  # a hub id
    assert not (tmp_path / "unpacked").exists()  # nothing copied
    with pytest.raises(FileNotFoundError, match="not readable on this node"):
        common.unpack_tmp(str(tmp_path / "missing"), "base")
    copy = common.unpack_tmp(pack(tiny_chat_lm), "base")  # bytes: unpacked into the actor's own temp dir
    assert copy.parent.parent == tmp_path / "unpacked" and (copy / "config.json").is_file()


def unit_results(state: Path, method: str) -> list[dict]:
    files = sorted((state / "checkpoints").glob(f"{method}-*/unit-*/result/result.json"))
    return [json.loads(f.read_text()) for f in files]


def test_the_recipe_keeps_its_data_shape_and_reward_wiring(run: dict) -> None:
    cfg = run["cfg"]
    assert cfg.task.dataset.format == "hh_rlhf" and cfg.objectives == ["helpful", "harmless"]
    assert cfg.task.dataset.labels == {"helpful": ["helpful-base"], "harmless": ["harmless-base"]}
    assert cfg.reward_sources() == {"helpful": "hf", "harmless": "hf"} and cfg.ppo.reward_sources == {}
    assert [(rm.objectives, rm.template) for rm in cfg.reward_model.hf] == [(["helpful"], "hh"), (["harmless"], "hh")]
    assert set(cfg.methods.enabled()) == {"morlhf", "panacea_ppo"} and cfg.evaluation.scorer == "reward_model"


def test_rollouts_see_the_datasets_prompts_as_chat_turns(run: dict) -> None:
    task = stages.fitted_task(run["cfg"], run["base"])
    assert task.oracle is None and len(task.prompts["train"]) > 8
    # the dialogues of the dataset's rows (a prompt is everything up to the last "Assistant:")
    dialogues = [to_messages(r["chosen"][:r["chosen"].rindex(HH_ASSISTANT) + len(HH_ASSISTANT)])
                 for s in ("helpful-base", "harmless-base") for r in hh_rows(s, ROWS)]
    assert any(sum(m["role"] == "user" for m in to_messages(p)) > 1 for p in task.prompts["train"])  # multi-turn
    tokenizer = load_tokenizer(run["base"])
    for method, units in (("morlhf", 2), ("panacea_ppo", 1)):
        results = unit_results(run["state"], method)
        assert len(results) == units
        for result in results:
            samples = result["rollout_samples"]
            assert len(samples) == 4
            for s in samples:
                # a prompt of the dataset's train split: the last turns of one of its dialogues (fit into the
                # context: leading turns dropped where it is too long) ...
                assert s["prompt"] in task.prompts["train"]
                turns = to_messages(s["prompt"])
                assert any(d[-len(turns):] == turns for d in dialogues)
                # ... fed to the model as its chat template renders the turns, not as the raw transcript
                rendered = prompt_text(tokenizer, s["prompt"])
                assert s["prompt_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
                assert rendered.startswith("User: ") and "Human:" not in rendered and rendered.endswith("Assistant:")
                assert len(s["reward"]) == 2 and all(math.isfinite(v) for v in s["reward"])
            # and nothing else: every eval point answered the dataset's eval prompts (all 3 kept as samples)
            for point in result["points"]:
                assert [x["prompt"] for x in point["samples"]] == task.prompts["eval"][:3]


def test_both_methods_get_reward_model_fronts_with_the_base_point(run: dict) -> None:
    result = run["result"]
    for method, n_points in (("morlhf", 2), ("panacea_ppo", 3)):
        fronts = result.fronts_by_scorer[method]
        assert set(fronts) == {"reward_model"}  # no oracle for a real dataset
        front = fronts["reward_model"]
        assert front.scorer == "reward_model" and front.objectives == ("helpful", "harmless")
        assert len(front.points) == n_points
        assert front.base_point is not None and len(front.base_point.values) == 2
        assert all(math.isfinite(v) for p in front.points for v in (*p.values, *p.stderr))
        assert all(math.isfinite(v) for v in front.base_point.values)
        assert front.reference_point == (-3.0, -3.0)  # the recipe's
        assert {"repetition_rate", "mean_words", "empty_rate"} <= front.points[0].extra.keys()
        assert math.isfinite(front.metrics["hypervolume"])
    # the base point is the pipeline's (scored by the same reward model and normaliser as every front)
    base = result.fronts_by_scorer["morlhf"]["reward_model"].base_point
    assert result.fronts_by_scorer["panacea_ppo"]["reward_model"].base_point == base


def test_fronts_are_scored_like_every_front_by_the_runs_reward_model(run: dict) -> None:
    """The PPO points' "reward_model" values are the run's saved reward model (its normaliser refit on the base
    model's answers, as the base point and the DPO fronts use it) applied to the points' own answers."""
    from pareto.cache import cache_dir
    from pareto.models.scorer import SourcedReward

    reward = SourcedReward.load(cache_dir(run["cfg"], "base_eval") / "reward")
    assert reward.sources == {"helpful": "hf", "harmless": "hf"} and reward.normalizer.count > 0
    for method in ("morlhf", "panacea_ppo"):
        for result in unit_results(run["state"], method):
            for point in result["points"]:
                prompts = [x["prompt"] for x in point["samples"]]
                answers = [x["response"] for x in point["samples"]]
                want = reward(prompts, answers).mean(0)
                torch.testing.assert_close(torch.tensor(point["mean"]["reward_model"]), want, atol=1e-4, rtol=1e-4)


def test_mlflow_has_every_steps_metrics(run: dict) -> None:
    result = run["result"]
    client = MlflowClient(result.tracking_uri)
    mlflow.set_tracking_uri(result.tracking_uri)
    for method, units in (("morlhf", 2), ("panacea_ppo", 1)):
        method_run = mlflow.search_runs(experiment_names=[result.experiment], output_format="list",
                                        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}' "
                                                      f"and attributes.run_name = '{method}'")[0]
        models = mlflow.search_runs(experiment_names=[result.experiment], output_format="list",
                                    filter_string=f"tags.mlflow.parentRunId = '{method_run.info.run_id}'")
        assert len(models) == units
        for model in models:
            for metric in ("reward/helpful", "reward/harmless", "kl", "policy_loss", "timing/generation"):
                history = client.get_metric_history(model.info.run_id, metric)
                assert sorted(m.step for m in history) == list(range(1, STEPS + 1)), metric
                assert all(math.isfinite(m.value) for m in history), metric
            if method == "morlhf":  # a one-point model logs its point's scores
                assert math.isfinite(model.data.metrics["reward_model/helpful"])
