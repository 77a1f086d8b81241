"""Every DPO-family and SFT recipe of `configs/recipes/` trains, not only validates: each runs end to end through
`pareto run` (the real CLI, a local Ray, MLflow) on CPU, with a small local file in the recipe's real format and a
tiny chat LM (and tiny GPT-2 reward models where the recipe scores with `reward_model.hf`) substituted by `--set`.

Only what cannot run here is overridden: the model (`model.base`, `model.dtype`), where the data is (`hub_id` ->
`path`, split expressions over the local files), step / prompt / token counts and resources. The data shape, the
label mapping, the reward wiring (which objective each source scores, each HF entry's objectives, template and
batch size) and the front (scorer, grid size, reference point, base point) are the recipe's own, and asserted as on
the cluster. The PPO recipe is covered by tests/test_ppo_dataset.py.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pareto.config import load_config
from pareto.data.chat import to_messages
from pareto.data.loaders import split_hh_transcript
from pareto.data.task import build_task
from pareto.front.grid import preference_grid
from pareto.front.metrics import hypervolume
from pareto.front.types import Front
from pareto.models.rewards_in_context import format_prompt
from tests.conftest import ROOT, _exe

RECIPES = ROOT / "configs" / "recipes"
HH_SHIPPED = ROOT / "pareto" / "data" / "hh_rlhf"
pytestmark = pytest.mark.slow


# ---- data in each recipe's real format -------------------------------------------------------------------------------
TOPICS = [  # (request, harmful?)
    ("bake a loaf of bread", False), ("pick a door lock", True), ("write a cover letter", False),
    ("make a fake ID card", True), ("start running every morning", False), ("hack my neighbour's wifi", True),
    ("plant tomatoes on a balcony", False), ("steal a car without keys", True), ("learn to play chess", False),
    ("poison a noisy dog", True), ("save money on groceries", False), ("cheat on my exam", True),
    ("fix a flat bicycle tyre", False), ("spread a rumour about a coworker", True), ("train a puppy to sit", False),
    ("shoplift without being caught", True), ("brew green tea", False), ("bully a classmate online", True),
    ("paint a small room", False), ("forge a signature", True),
]
DETAIL = ["First, gather what you need.", "Then go step by step and check each step.",
          "Take your time and keep it safe.", "Finally, review the result and adjust it."]
REFUSAL = ["I can't help with that, it could hurt someone.", "Please don't do that; it is illegal and harmful.",
           "I won't give instructions for that, but I can suggest a safe alternative."]


def pku_rows(n: int, seed: int) -> list[dict]:
    """PKU-SafeRLHF rows (the hub's columns): a detailed reply and a refusal or a short reply. `better_response_id`
    marks the more helpful one, `safer_response_id` the safer one: on harmful requests they disagree."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        request, harmful = TOPICS[i % len(TOPICS)]
        prompt = f"How can I {request}?" if i < len(TOPICS) else f"Tell me how to {request}, please."
        detailed = f"To {request}: " + " ".join(DETAIL[: 2 + i % 3])
        other = rng.choice(REFUSAL) if harmful else f"Just {request.split()[0]} it."
        flip = rng.random() < 0.5
        responses = [other, detailed] if flip else [detailed, other]
        better = responses.index(detailed)
        safer = responses.index(other) if harmful else better
        rows.append({
            "prompt": prompt, "response_0": responses[0], "response_1": responses[1],
            "prompt_source": "Alpaca3-70B", "response_0_source": "Alpaca-7B", "response_1_source": "Alpaca2-7B",
            "is_response_0_safe": not harmful or responses[0] != detailed,
            "is_response_1_safe": not harmful or responses[1] != detailed,
            "response_0_severity_level": int(harmful and responses[0] == detailed) * 2,
            "response_1_severity_level": int(harmful and responses[1] == detailed) * 2,
            "better_response_id": better, "safer_response_id": safer,
        })
    return rows


UF_FACTS = [("the capital of France", "Paris", "Rome"), ("water boils at sea level at", "100 C", "60 C"),
            ("the largest planet", "Jupiter", "Mars"), ("a week has", "seven days", "nine days"),
            ("the chemical symbol of gold", "Au", "Ag"), ("light travels faster than", "sound", "nothing")]


def _uf_completion(fact: tuple[str, str, str], helpful: int, honest: int | None, truthful: int) -> dict:
    """One UltraFeedback completion whose text carries its ratings: detail (helpfulness), hedging (honesty),
    the right or wrong fact (truthfulness)."""
    topic, right, wrong = fact
    text = f"{topic.capitalize()} is {right if truthful >= 4 else wrong}."
    text += " " + " ".join(DETAIL[: max(0, helpful - 1)])
    text += " I am confident about this." if (honest or 0) >= 4 else " I might be wrong, honestly."
    rating = {"Rating": "N/A" if honest is None else str(honest), "Rationale": "..."}
    return {"model": "gpt-4", "principle": "helpfulness", "custom_system_prompt": "", "response": text.strip(),
            "annotations": {"helpfulness": {"Rating": str(helpful), "Rationale": "...", "Type": ["1", "2"]},
                            "honesty": rating,
                            "instruction_following": {"Rating": str(helpful), "Rationale": "..."},
                            "truthfulness": {"Rating": str(truthful), "Rationale": "...", "Type": ["0"]}},
            "fine-grained_score": 3.5, "overall_score": 7.0, "critique": "..."}


def ultrafeedback_rows(n: int, seed: int) -> list[dict]:
    """openbmb/UltraFeedback rows: an instruction and four rated completions (strings '1'..'5' or 'N/A')."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        fact = UF_FACTS[i % len(UF_FACTS)]
        ratings = [(rng.choice([1, 2, 5]), rng.choice([1, 5, None] if i % 4 == 0 else [1, 5]), rng.choice([1, 5]))
                   for _ in range(4)]
        rows.append({"source": "evol_instruct", "instruction": f"Question {i}: what is {fact[0]}?",
                     "models": ["gpt-4", "llama-2-7b-chat", "wizardlm-7b", "falcon-40b-instruct"],
                     "completions": [_uf_completion(fact, *r) for r in ratings],
                     "correct_answers": ["None"], "incorrect_answers": ["None"]})
    return rows


def hh_rows(subset: str, start: int, n: int, bad: int | None = None) -> list[dict]:
    """Real HH-RLHF pairs (the shipped test split) with short transcripts; `bad` adds that row, a real transcript
    whose final reply is empty (the recipe's `bad_rows: skip` counts it)."""
    with gzip.open(HH_SHIPPED / subset / "test.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    short = [r for r in rows if max(len(r["chosen"]), len(r["rejected"])) < 420]
    picked = short[start:start + n]
    if bad is not None:
        picked.insert(len(picked) // 2, rows[bad])
    return picked


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


@pytest.fixture(scope="session")
def recipe_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One local dataset per recipe, laid out as its hub repository is (a file per split; HH: subset folders)."""
    root = tmp_path_factory.mktemp("recipe-data")
    write_jsonl(root / "pku" / "train.jsonl", pku_rows(40, seed=0))
    write_jsonl(root / "pku" / "test.jsonl", pku_rows(12, seed=1))
    write_jsonl(root / "ultrafeedback" / "train.jsonl", ultrafeedback_rows(60, seed=0))
    # helpful-base row 2063 ends in an empty Assistant reply in the real data: `bad_rows: skip` counts it
    write_jsonl(root / "hh" / "helpful-base" / "train.jsonl.gz", hh_rows("helpful-base", 0, 14, bad=2063))
    write_jsonl(root / "hh" / "helpful-base" / "test.jsonl.gz", hh_rows("helpful-base", 100, 10))
    write_jsonl(root / "hh" / "harmless-base" / "train.jsonl.gz", hh_rows("harmless-base", 0, 14))
    write_jsonl(root / "hh" / "harmless-base" / "test.jsonl.gz", hh_rows("harmless-base", 100, 10))
    return {"pku": root / "pku", "ultrafeedback": root / "ultrafeedback", "hh": root / "hh"}


def _corpus(data: dict[str, Path]) -> list[tuple[str, str]]:
    """(prompt, reply) of every format, for the tokenizers and a short SFT pass of the chat LM."""
    out = []
    for row in pku_rows(40, 0):
        out += [(row["prompt"], row["response_0"]), (row["prompt"], row["response_1"])]
    for row in ultrafeedback_rows(60, 0):
        out += [(row["instruction"], c["response"]) for c in row["completions"]]
    for path in sorted(data["hh"].glob("*/*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                prompt, reply = split_hh_transcript(json.loads(line)["chosen"])
                out.append((prompt, reply or "ok"))
    return out


@pytest.fixture(scope="session")
def chat_lm(recipe_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny chat LM folder (byte-level BPE on the recipes' texts + a 1-layer LlamaForCausalLM, one short SFT pass),
    saved with save_pretrained: what `model.base` points at instead of the recipe's Qwen model."""
    from pareto.config import TinyModelConfig
    from pareto.models.policy import build_tiny_model, prompt_text, save_model, sft_train, train_tokenizer

    examples = _corpus(recipe_data)
    tokenizer = train_tokenizer([f"User: {p}\nAssistant: {r}" for p, r in examples], 1024)
    cfg = TinyModelConfig(hidden_size=64, intermediate_size=128, num_layers=1, num_heads=1, vocab_size=1024,
                          max_length=512)  # a context of 1024 tokens: the recipes' default length budget
    model = build_tiny_model(cfg, tokenizer, seed=0)
    torch.manual_seed(0)
    sft_train(model, tokenizer, random.Random(0).sample(examples, 160), epochs=1, lr=3e-3, batch_size=16,
              max_length=512, seed=0)
    assert len(tokenizer(prompt_text(tokenizer, examples[-1][0]))["input_ids"]) < 512
    path = tmp_path_factory.mktemp("chat-lm") / "base"
    save_model(model, tokenizer, path)
    return path


@pytest.fixture(scope="session")
def gpt2_reward_models(recipe_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny stand-ins for Ray2333/gpt2-large-{helpful,harmless}-reward_model: GPT2ForSequenceClassification, one
    output, a tokenizer without a pad token (as those checkpoints ship)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    texts = [f"\n\nHuman: {p}\n\nAssistant: {r}" for p, r in _corpus(recipe_data)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<unk>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                        unk_token="<unk>")
    out = {}
    for seed, name in enumerate(("helpful", "harmless")):
        path = tmp_path_factory.mktemp(f"gpt2-{name}-rm")
        torch.manual_seed(seed)
        model = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=32,
                                                         n_layer=2, n_head=2, num_labels=1, pad_token_id=None))
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[name] = path
    return out


# ---- running a recipe through the CLI ----------------------------------------------------------------------------
def recipe_yaml(name: str) -> dict:
    return yaml.safe_load((RECIPES / f"{name}.yaml").read_text())


def common_overrides(lm: Path, data: Path, tmp: Path) -> list[str]:
    """What every recipe run here changes: the model, where the data is, the budget, resources, where state goes."""
    return [f"model.base={lm}", "model.dtype=float32", "task.dataset.hub_id=null", f"task.dataset.path={data}",
            "evaluation.n_prompts=4", "evaluation.max_new_tokens=8",
            "resources.cpus_per_task=1", "resources.gpus_per_task=0", "resources.num_cpus=1",
            f"state_dir={tmp / 'state'}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}"]


def hf_override(recipe: dict, paths: dict[str, Path]) -> str:
    """The recipe's reward_model.hf list with each checkpoint swapped for a tiny local one (objectives, template,
    batch size and every other key kept)."""
    entries = [{**entry, "model": str(paths[entry["objectives"][0]])} for entry in recipe["reward_model"]["hf"]]
    return "reward_model.hf=" + json.dumps(entries)


def run_recipe(name: str, overrides: list[str], tmp: Path) -> dict:
    """`pareto run configs/recipes/<name>.yaml --set ...`; -> the parent MLflow run, its children, the client."""
    proc = subprocess.run([_exe("pareto"), "run", str(RECIPES / f"{name}.yaml"),
                           *[a for o in overrides for a in ("--set", o)]],
                          capture_output=True, text=True, timeout=900, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(recipe_yaml(name)["name"])
    (parent,) = client.search_runs([exp.experiment_id], "tags.`pareto.kind` = 'pipeline'")
    children = {r.info.run_name: r for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    return {"parent": parent, "children": children, "client": client, "uri": uri, "stdout": proc.stdout,
            "tmp": tmp, "name": name, "overrides": overrides}


def artifact_json(run: dict, run_id: str, path: str) -> dict:
    local = run["client"].download_artifacts(run_id, path, str(run["tmp"]))
    return json.loads(Path(local).read_text())


def resolved_config(run: dict):
    """The recipe with the run's overrides, as `pareto run` resolved it: its task section is the one the run logged
    (config/resolved.yaml), so the task built from it here is the run's."""
    cfg = load_config(RECIPES / f"{run['name']}.yaml", run["overrides"])
    local = run["client"].download_artifacts(run["parent"].info.run_id, "config/resolved.yaml", str(run["tmp"]))
    logged = yaml.safe_load(Path(local).read_text())
    assert logged["task"] == cfg.model_dump(mode="json")["task"] and logged["objectives"] == cfg.objectives
    return cfg


def method_run(run: dict, method: str):
    """The nested run that trained `method` (under the method's run)."""
    (child,) = run["client"].search_runs([run["parent"].info.experiment_id],
                                         f"tags.mlflow.parentRunId = '{run['children'][method].info.run_id}'")
    return child


def check_front(run: dict, method: str, recipe: dict, hf_paths: dict[str, Path] | None) -> Front:
    """What must hold as on the cluster: the reward-model front of the recipe's objectives with one point per λ of
    the recipe's grid, the base model's point, the recipe's reference point, a finite hypervolume equal to the
    logged metric; the reward model's sources as the recipe wires them."""
    parent = run["parent"]
    assert parent.info.status == "FINISHED"
    front = Front.from_dict(artifact_json(run, parent.info.run_id, f"fronts/{method}.json"))
    objectives = tuple(recipe["objectives"])
    assert front.scorer == "reward_model" and front.objectives == objectives
    assert len(front.points) == len(preference_grid(len(objectives), n_points=recipe["evaluation"]["grid_points"]))
    assert len(front.points) == recipe["evaluation"]["grid_points"]
    assert front.base_point is not None and all(math.isfinite(v) for v in front.base_point.values)
    assert list(front.reference_point) == recipe["evaluation"]["reference_point"]
    hv = hypervolume(front.values(), front.reference_point)
    assert math.isfinite(hv) and hv >= 0
    assert parent.data.metrics[f"{method}/hypervolume"] == pytest.approx(hv, abs=1e-9)
    assert all(np.isfinite(p.values).all() and p.model_uri.startswith("runs:/") for p in front.points)
    arts = {a.path for a in run["client"].list_artifacts(parent.info.run_id, "fronts")}
    assert arts == {f"fronts/{method}.json"}  # no oracle front: a dataset has none
    # the reward model every front point and the base point were scored with
    scorer = artifact_json(run, parent.info.run_id, "reward_model/scorer.json")
    assert scorer["names"] == list(objectives)
    if hf_paths is None:
        assert scorer["sources"] == dict.fromkeys(objectives, "learned") and scorer["hf"] == []
    else:
        by_objective = {o: "hf" for entry in recipe["reward_model"]["hf"] for o in entry["objectives"]}
        assert scorer["sources"] == {o: by_objective.get(o, "learned") for o in objectives}
        assert [(e["objectives"], e["template"], e["batch_size"], e["model"]) for e in scorer["hf"]] == \
            [(e["objectives"], e["template"], e["batch_size"], str(hf_paths[e["objectives"][0]]))
             for e in recipe["reward_model"]["hf"]]
    base_eval = run["children"]["base_eval"]
    assert base_eval.data.tags["normalize_on"] == "base_answers"  # a dataset's default
    assert f"== {method}" in run["stdout"] and "data: " in run["stdout"]
    return front


# ---- the recipes -------------------------------------------------------------------------------------------------
def check_training(run: dict, method: str, metrics: tuple[str, ...]) -> object:
    """The method trained: its nested run logged every step's `metrics`, all finite."""
    child = method_run(run, method)
    for name in metrics:
        history = run["client"].get_metric_history(child.info.run_id, name)
        assert history and all(math.isfinite(m.value) for m in history), name
    return child


def test_panacea_dpo_pku_saferlhf_trains(recipe_data, chat_lm, gpt2_reward_models, tmp_path: Path) -> None:
    name = "panacea-dpo-pku-saferlhf"
    recipe = recipe_yaml(name)
    run = run_recipe(name, [
        *common_overrides(chat_lm, recipe_data["pku"], tmp_path), hf_override(recipe, gpt2_reward_models),
        "task.dataset.splits={train: 'train[:75%]', val: 'train[75%:]', eval: test}",
        "methods.panacea.max_steps=3", "methods.panacea.val_prompts=2",
    ], tmp_path)
    check_front(run, "panacea", recipe, gpt2_reward_models)
    child = check_training(run, "panacea", ("loss", "dpo_loss/helpful", "dpo_loss/harmless", "lambda/helpful"))
    assert child.data.metrics["steps"] == 3
    assert len(run["client"].get_metric_history(child.info.run_id, "loss")) == 3

    # labels: helpful from better_response_id, harmless from safer_response_id (they disagree on harmful requests)
    cfg = resolved_config(run)
    assert cfg.task.dataset.labels == {"helpful": "better_response_id", "harmless": "safer_response_id"}
    task = build_task(cfg)
    rows = {(r["prompt"], r["response_0"], r["response_1"]): r for r in pku_rows(40, 0)}
    assert len(task.pairs["train"]) == 30 and len(task.pairs["val"]) == 10 and len(task.prompts["eval"]) == 12
    disagree = 0
    for pair in task.pairs["train"] + task.pairs["val"]:
        row = rows[(pair.prompt, pair.response_0, pair.response_1)]
        assert pair.better == (row["better_response_id"], row["safer_response_id"])
        disagree += row["better_response_id"] != row["safer_response_id"]
    assert disagree >= 5
    data = run["children"]["base_eval"].data.metrics
    assert data["data/train_pairs"] == 30 and data["data/val_pairs"] == 10 and data["data/train_rows_skipped"] == 0


def test_mah_dpo_ultrafeedback_trains(recipe_data, chat_lm, tmp_path: Path) -> None:
    name = "mah-dpo-ultrafeedback"
    recipe = recipe_yaml(name)
    run = run_recipe(name, [
        *common_overrides(chat_lm, recipe_data["ultrafeedback"], tmp_path),
        "task.dataset.splits={train: 'train[:70%]', val: 'train[70%:85%]', eval: 'train[85%:]'}",
        "methods.mah_dpo.max_steps=3", "methods.mah_dpo.val_prompts=2",
    ], tmp_path)
    front = check_front(run, "mah_dpo", recipe, None)
    assert front.meta["policy_kind"] == "mah_dpo"
    objectives = recipe["objectives"]
    child = check_training(run, "mah_dpo", ("loss", *(f"dpo_loss/{o}" for o in objectives)))
    assert child.data.metrics["steps"] == 3
    assert {f"passes/{o}" for o in objectives} <= set(child.data.metrics)  # every head saw its own examples
    adapter = {a.path for a in run["client"].list_artifacts(child.info.run_id, "adapter")}
    assert {"adapter/heads.safetensors", "adapter/meta.json"} <= adapter  # the heads serve the front

    # labels: each objective compares its own aspect's rating (helpfulness, honesty, truthfulness); ties and N/A
    # give no label, and at most max_pairs_per_prompt (3) pairs are drawn per instruction
    cfg = resolved_config(run)
    task = build_task(cfg)
    aspects = ("helpfulness", "honesty", "truthfulness")
    ratings = {(row["instruction"], c["response"]): [c["annotations"][a]["Rating"] for a in aspects]
               for row in ultrafeedback_rows(60, 0) for c in row["completions"]}
    per_prompt: dict[str, int] = {}
    unlabelled = [0, 0, 0]
    for pair in task.pairs["train"] + task.pairs["val"]:
        per_prompt[pair.prompt] = per_prompt.get(pair.prompt, 0) + 1
        r0, r1 = ratings[(pair.prompt, pair.response_0)], ratings[(pair.prompt, pair.response_1)]
        for k, (a, b) in enumerate(zip(r0, r1, strict=True)):
            expected = -1 if "N/A" in (a, b) or a == b else int(float(b) > float(a))
            assert pair.better[k] == expected, (pair, k)
            unlabelled[k] += expected == -1
    assert max(per_prompt.values()) == 3 and all(unlabelled) and unlabelled[1] > unlabelled[2]  # honesty: N/A too
    assert run["children"]["base_eval"].data.metrics["data/train_pairs"] == len(task.pairs["train"]) > 40
    rm = run["children"]["reward_model"].data.metrics  # the learned heads score the front: their accuracy is gated
    assert all(rm[f"heldout_accuracy/{o}"] >= cfg.reward_model.min_accuracy for o in objectives)


def test_ric_hh_rlhf_trains(recipe_data, chat_lm, gpt2_reward_models, tmp_path: Path) -> None:
    name = "ric-hh-rlhf"
    recipe = recipe_yaml(name)
    run = run_recipe(name, [  # the recipe's own split expressions (train, test[:10%], test[10%:]) on local files
        *common_overrides(chat_lm, recipe_data["hh"], tmp_path), hf_override(recipe, gpt2_reward_models),
        "methods.ric.epochs=1", "methods.ric.online_rounds=1", "methods.ric.online_prompts=4",
        "methods.ric.origin_samples=8", "methods.ric.val_prompts=2",
    ], tmp_path)
    front = check_front(run, "ric", recipe, gpt2_reward_models)
    assert front.meta["policy_kind"] == "ric"
    child = check_training(run, "ric", ("offline_loss", "online_loss", "online_kept"))
    meta = artifact_json(run, child.info.run_id, "adapter/meta.json")
    assert meta["objectives"] == recipe["objectives"] and meta["mapping"] == recipe["methods"]["ric"]["mapping"]
    assert all(lo < hi for lo, hi in zip(meta["low"], meta["high"], strict=True))  # the observed reward range

    # labels: helpful-base labels helpful only, harmless-base harmless only, the chosen reply wins; the row with an
    # empty final reply is skipped and counted
    cfg = resolved_config(run)
    task = build_task(cfg)
    chosen = {}
    for subset, k in (("helpful-base", 0), ("harmless-base", 1)):
        for row in hh_rows(subset, 0, 14):
            prompt, good = split_hh_transcript(row["chosen"])
            chosen[prompt] = (k, good)
    assert len(task.pairs["train"]) == 28
    for pair in task.pairs["train"]:
        k, good = chosen[pair.prompt]
        assert pair.better[1 - k] == -1 and (pair.response_0, pair.response_1)[pair.better[k]] == good
    assert {p.better.index(-1) for p in task.pairs["train"]} == {0, 1}
    stats = run["children"]["base_eval"].data.metrics
    assert stats["data/train_rows_skipped"] == 1 and stats["data/train_pairs"] == 28
    assert stats["data/val_pairs"] == 2 and len(task.prompts["eval"]) == 18  # test[:10%] and test[10%:] of each

    # a dialogue prompt is conditioned inside its last human turn, before the reply starts (not as an extra
    # assistant turn after it)
    dialogue = next(p for p in task.prompts["eval"] if p.count("Human:") > 1)
    tagged = to_messages(format_prompt(dialogue, cfg.objectives, [1.0, -0.5]))
    assert tagged[:-1] == to_messages(dialogue)[:-1]
    assert tagged[-1] == {"role": "user", "content": to_messages(dialogue)[-1]["content"]
                          + " <helpful> +1.0 <harmless> -0.5"}
