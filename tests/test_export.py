"""Exporting front points as plain PEFT LoRA adapters (what vLLM serves): each export is checked against the
in-process model it came from, on logits (max abs difference ≤ 1e-5).

* Panacea at λ (B' = B·diag(σ ⊕ s·λ), rank padded) == the Panacea model with λ set in place;
* Rewarded Soups by concatenation == Σ λ_i s_i B_i A_i merged into the weights by hand, and == the soup policy;
* rank padding (plain and rsLoRA) == the unpadded adapter;
* `pareto export` on a real tracked run: the manifest, and greedy answers of the exported adapters (transformers
  backend) == the trained policies' answers.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from pareto.config import TinyModelConfig
from pareto.export import (
    concat_adapters,
    export_panacea,
    export_per_weight,
    export_soup,
    fold_panacea,
    lora_scaling,
    pad_rank,
    read_adapter,
    soup_ingredients,
    vllm_problems,
    write_adapter,
)
from pareto.models.policy import build_tiny_model, load_policy, save_model, train_tokenizer
from pareto.models.svd_lora import (
    VLLM_LORA_RANKS,
    add_panacea_adapter,
    load_panacea,
    panacea_layers,
    panacea_lora_config,
    save_panacea,
    set_preference,
)
from tests.conftest import shared_stage_caches

TOL = 1e-5
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GRID = [[1.0, 0.0], [0.7, 0.3], [0.5, 0.5], [0.0, 1.0]]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama (head_dim 64, like the served models) with its tokenizer."""
    corpus = [f"User: question {i} about topic {i % 7}\nAssistant: answer {i} with detail {i % 5}." for i in range(60)]
    tokenizer = train_tokenizer(corpus, 300)
    cfg = TinyModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=1, num_kv_heads=1,
                          vocab_size=300)
    path = tmp_path_factory.mktemp("base") / "model"
    save_model(build_tiny_model(cfg, tokenizer, seed=0), tokenizer, path)
    return path


@pytest.fixture(scope="module")
def base_model(base_dir: Path):
    return load_policy(base_dir)[0]


@pytest.fixture
def fresh(base_model):
    """An independent copy of the base: PEFT modifies the model it wraps."""
    return lambda: copy.deepcopy(base_model)


@pytest.fixture(scope="module")
def input_ids() -> torch.Tensor:
    return torch.randint(4, 300, (3, 12), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def randomize(model: PeftModel, adapter: str, seed: int, scale: float = 0.3) -> None:
    """Give A and B non-zero values (B starts at zero), as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "lora_A") and adapter in module.lora_A:
                for part in (module.lora_A[adapter], module.lora_B[adapter]):
                    part.weight.copy_(scale * torch.randn(part.weight.shape, generator=gen))


def make_adapter(base, path: Path, r: int, alpha: float, targets: list[str], seed: int,
                 rslora: bool = False) -> Path:
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0,
                                            use_rslora=rslora, task_type="CAUSAL_LM"))
    randomize(model, "default", seed)
    model.save_pretrained(str(path))
    return path


def merged_by_hand(base, parts: list[tuple[Path, float]]):
    """The base with W += Σ λ_i s_i B_i A_i written into its weights: the ground truth of a delta-space soup."""
    model = copy.deepcopy(base)
    with torch.no_grad():
        for path, weight in parts:
            config, tensors = read_adapter(path)
            for key, a in tensors.items():
                if key.endswith(".lora_A.weight"):
                    module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                    b = tensors[key.replace("lora_A", "lora_B")]
                    model.get_submodule(module).weight += weight * lora_scaling(config) * (b @ a)
    return model


def load_plain(base, path: Path):
    return PeftModel.from_pretrained(base, str(path)).eval()


# ---- Panacea at λ ------------------------------------------------------------------------------------------
def test_panacea_export_at_each_lambda_equals_the_panacea_model(base_dir, fresh, input_ids, tmp_path):
    model = add_panacea_adapter(fresh(), panacea_lora_config(2, 4, 8, TARGETS)).eval()  # r = 4 + 2 = 6
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-like σ and s, so λ matters
        for layer in panacea_layers(model):
            layer.lora_sigma["default"].copy_(torch.randn(4, generator=gen))
            layer.lora_pref_scale["default"].copy_(3.0 * torch.randn(1, generator=gen))
    save_panacea(model, tmp_path / "panacea")

    names = [f"panacea-{i}" for i in range(len(GRID))]
    entries = export_panacea(tmp_path / "panacea", base_dir, GRID, tmp_path / "out", names)
    in_process = load_panacea(fresh(), tmp_path / "panacea").eval()
    exported_logits = []
    for name, entry, lam in zip(names, entries, GRID, strict=True):
        assert entry["weights"] == lam and entry["source_rank"] == 6 and entry["rank"] == 8  # padded 6 -> 8
        config, tensors = read_adapter(tmp_path / "out" / name)
        assert vllm_problems(config) == [] and config["r"] in VLLM_LORA_RANKS
        # serving folds λ from the files alone (no model load): the very same adapter
        folded_config, folded = fold_panacea(tmp_path / "panacea", lam)
        assert folded.keys() == tensors.keys() and all(torch.equal(folded[k], tensors[k]) for k in tensors)
        assert (folded_config["r"], folded_config["lora_alpha"]) == (config["r"], config["lora_alpha"])
        set_preference(in_process, lam)
        expected = logits(in_process, input_ids)
        got = logits(load_plain(fresh(), tmp_path / "out" / name), input_ids)
        assert max_diff(got, expected) <= TOL
        exported_logits.append(got)
    # the check has teeth: the λs give different models, all different from the base
    assert max_diff(exported_logits[0], exported_logits[-1]) > 1e-2
    assert max_diff(exported_logits[1], logits(fresh(), input_ids)) > 1e-2


# ---- Rewarded Soups by concatenation -----------------------------------------------------------------------
def test_soup_concatenation_equals_the_weighted_delta_sum(fresh, input_ids, tmp_path):
    # different ranks, scalings (one rsLoRA) and layers: the concatenation must still be exact
    a = make_adapter(fresh(), tmp_path / "a", r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"], seed=1)
    b = make_adapter(fresh(), tmp_path / "b", r=3, alpha=5, targets=["q_proj", "k_proj", "o_proj"], seed=2,
                     rslora=True)
    adapters = [read_adapter(a), read_adapter(b)]
    for lam in ([0.3, 0.7], [0.5, 0.5], [0.9, 0.1]):
        config, tensors = concat_adapters(adapters, lam)
        assert config["r"] == 8 and config["lora_alpha"] == 8  # 4 + 3 = 7, padded to 8; scaling 1
        assert vllm_problems(config) == []
        write_adapter(tmp_path / "soup", (config, tensors))
        expected = logits(merged_by_hand(fresh(), [(a, lam[0]), (b, lam[1])]), input_ids)
        got = logits(load_plain(fresh(), tmp_path / "soup"), input_ids)
        assert max_diff(got, expected) <= TOL
    # and it is not the base: the soup moved the logits
    assert max_diff(got, logits(fresh(), input_ids)) > 1e-2


def test_soup_with_a_zero_weight_is_the_other_adapter(fresh, input_ids, tmp_path):
    a = make_adapter(fresh(), tmp_path / "a", r=4, alpha=8, targets=TARGETS, seed=3)
    b = make_adapter(fresh(), tmp_path / "b", r=4, alpha=8, targets=TARGETS, seed=4)
    config, tensors = concat_adapters([read_adapter(a), read_adapter(b)], [1.0, 0.0])
    assert config["r"] == 8  # the zero-weight adapter is dropped: rank 4, padded to 8 (not 4 + 4)
    write_adapter(tmp_path / "soup", (config, tensors))
    got = logits(load_plain(fresh(), tmp_path / "soup"), input_ids)
    assert max_diff(got, logits(load_plain(fresh(), a), input_ids)) <= TOL


@pytest.mark.parametrize("merge", ["delta", "params"])
def test_soup_export_equals_the_soups_policy(base_dir, fresh, input_ids, tmp_path, merge):
    """The exported soup at λ == the in-process Rewarded Soups policy at λ, for both of its merges."""
    from pareto.models.soups import SoupsPolicy, objective_adapter

    objectives = ("helpful", "concise")
    names = [objective_adapter(o) for o in objectives]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(fresh(), lora, adapter_name=names[0])
    model.add_adapter(names[1], lora)
    for i, name in enumerate(names):
        randomize(model, name, seed=10 + i)
    _, tokenizer = load_policy(base_dir)
    policy = SoupsPolicy(model.eval(), tokenizer, objectives, merge=merge)
    policy.save(tmp_path / "soup")

    ingredients, found_merge = soup_ingredients(tmp_path / "soup", objectives)
    assert found_merge == merge and [p.name for p in ingredients] == names
    entries = export_soup(ingredients, GRID, tmp_path / "out", [f"soups-{i}" for i in range(len(GRID))], merge)
    for i, lam in enumerate(GRID):
        policy.model.set_adapter(policy.merged(lam))
        expected = logits(policy.model, input_ids)
        got = logits(load_plain(fresh(), tmp_path / "out" / f"soups-{i}"), input_ids)
        assert max_diff(got, expected) <= TOL
        assert entries[i]["rank"] == 8 and vllm_problems(read_adapter(tmp_path / "out" / f"soups-{i}")[0]) == []
    if merge == "delta":  # the soup is linear in ΔW: also the hand-merged weights
        lam = GRID[1]
        expected = logits(merged_by_hand(fresh(), [(ingredients[0], lam[0]), (ingredients[1], lam[1])]), input_ids)
        got = logits(load_plain(fresh(), tmp_path / "out" / "soups-1"), input_ids)
        assert max_diff(got, expected) <= TOL


def test_soup_weights_must_match_the_adapters(fresh, tmp_path):
    a = read_adapter(make_adapter(fresh(), tmp_path / "a", r=4, alpha=8, targets=TARGETS, seed=5))
    with pytest.raises(ValueError, match="one weight per adapter"):
        concat_adapters([a, a], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        concat_adapters([a, a], [1.5, -0.5])


# ---- rank padding ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rslora", [False, True])
def test_rank_padding_keeps_the_model(fresh, input_ids, tmp_path, rslora):
    src = make_adapter(fresh(), tmp_path / "r5", r=5, alpha=10, targets=TARGETS, seed=6, rslora=rslora)
    config, tensors = read_adapter(src)
    assert any("rank 5" in p for p in vllm_problems(config))  # vLLM would refuse rank 5
    padded = pad_rank((config, tensors))
    assert padded[0]["r"] == 8 and vllm_problems(padded[0]) == []
    assert padded[1][next(iter(padded[1]))].shape[0] == 8  # lora_A: 8 rows, 3 of them zero
    write_adapter(tmp_path / "r8", padded)
    expected = logits(load_plain(fresh(), src), input_ids)
    assert max_diff(logits(load_plain(fresh(), tmp_path / "r8"), input_ids), expected) <= TOL
    write_adapter(tmp_path / "r32", pad_rank((config, tensors), rank=32))
    assert max_diff(logits(load_plain(fresh(), tmp_path / "r32"), input_ids), expected) <= TOL
    assert max_diff(expected, logits(fresh(), input_ids)) > 1e-2
    with pytest.raises(ValueError, match="cannot pad rank 5 down to 1"):
        pad_rank((config, tensors), rank=1)


def test_per_weight_export_copies_a_servable_adapter_as_it_is(fresh, tmp_path):
    src = make_adapter(fresh(), tmp_path / "r8", r=8, alpha=16, targets=TARGETS, seed=7)
    entry = export_per_weight(src, tmp_path / "out")
    assert entry == {"kind": "adapter", "rank": 8, "source_rank": 8}
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == \
        (src / "adapter_model.safetensors").read_bytes()
    src5 = make_adapter(fresh(), tmp_path / "r5", r=5, alpha=10, targets=TARGETS, seed=8)
    assert export_per_weight(src5, tmp_path / "out5")["rank"] == 8  # padded, since vLLM refuses 5


# ---- the transformers backend on exported adapters ---------------------------------------------------------
def test_hf_generator_mixes_adapters_in_one_batch_and_keeps_an_lru(base_dir, fresh, tmp_path):
    from pareto.generation import Generator
    from pareto.generation.hf import HFGenerator

    paths = {f"a{i}": make_adapter(fresh(), tmp_path / f"a{i}", r=8, alpha=16, targets=TARGETS, seed=20 + i)
             for i in range(3)}
    gen = HFGenerator(base_dir, paths, max_loaded=2)
    assert isinstance(gen, Generator)
    prompts = ["question 1 about topic 1", "question 2 about topic 2", "answer 3"]
    alone = {name: gen.complete(prompts, name, max_new_tokens=6) for name in (None, "a0", "a1", "a2")}
    assert gen.loaded == ["a1", "a2"]  # a0 was evicted, least recently used
    assert len({tuple(c.token_ids) for c in (alone[n][0] for n in alone)}) > 1  # adapters change the answer
    names = ["a2", None, "a0"]
    mixed = gen.complete(prompts, names, max_new_tokens=6)  # one generate call, PEFT routes each row
    assert [c.token_ids for c in mixed] == [alone[n][i].token_ids for i, n in enumerate(names)]
    assert [c.adapter for c in mixed] == names
    assert gen.generate(prompts[:1], "a1", max_new_tokens=6) == [alone["a1"][0].text]
    with pytest.raises(KeyError, match="unknown adapter"):
        gen.generate(prompts, "nope")
    with pytest.raises(ValueError, match="one name"):
        gen.generate(prompts, ["a0"])
    with pytest.raises(ValueError, match="max_loaded=2"):
        gen.generate(prompts, ["a0", "a1", "a2"])


# ---- a real tracked run ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The small pipeline (Panacea, per-weight DPO and Rewarded Soups on 2 objectives), local Ray, SQLite MLflow."""
    from pareto.config import load_config
    from pareto.distributed.pipeline import run_pipeline
    from tests.conftest import ROOT

    state = tmp_path_factory.mktemp("export-run")
    cfg = load_config(ROOT / "tests" / "configs" / "small.yaml", [
        f"state_dir={state}", f"tracking.uri=sqlite:///{state / 'mlflow.db'}", "tracking.registry=false",
        "methods.panacea.max_steps=40", "methods.soups={max_steps: 10, eval_every: 10, val_prompts: 6}",
        "evaluation.n_prompts=4", "evaluation.max_new_tokens=16"])
    with shared_stage_caches(state, tmp_path_factory):
        result = run_pipeline(cfg, progress=False)
    return {"result": result, "uri": result.tracking_uri, "state": state, "cfg": cfg}


@pytest.mark.slow
def test_pareto_export_writes_every_front_point_with_a_manifest(tiny_run, tmp_path):
    from pareto.generation.hf import HFGenerator
    from pareto.models.conditioned import PanaceaPolicy, PerWeightPolicy
    from pareto.models.soups import SoupsPolicy
    from pareto.serving import Choice, ServedRun
    from tests.conftest import _exe

    run_id = tiny_run["result"].run_id
    out = tmp_path / "export"
    proc = subprocess.run([_exe("pareto"), "export", run_id, "--out", str(out), "--tracking-uri", tiny_run["uri"]],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "vllm.entrypoints.openai.api_server" in proc.stdout  # how to serve it
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_id"] == run_id and manifest["objectives"] == ["helpful", "concise"]
    fronts = tiny_run["result"].fronts
    expected = {f"{m}-{i}" for m in ("panacea", "per_weight_dpo", "soups") for i in range(3)}
    assert set(manifest["adapters"]) == expected
    for name, entry in manifest["adapters"].items():
        point = fronts[entry["method"]].points[int(name.rsplit("-", 1)[1])]
        assert entry["weights"] == list(point.weights)
        assert entry["values"]["oracle"] == list(point.values)  # the front's numbers travel with the adapter
        assert entry["rank"] in VLLM_LORA_RANKS
        assert vllm_problems(read_adapter(out / entry["path"])[0]) == []
    assert manifest["max_lora_rank"] == max(a["rank"] for a in manifest["adapters"].values())
    assert manifest["adapters"]["panacea-0"]["rank"] == 16  # 8 singular values + 2 preferences = 10 -> 16
    assert manifest["adapters"]["soups-1"]["rank"] == 16  # two rank-8 adapters concatenated
    assert manifest["adapters"]["soups-0"]["rank"] == 8  # a vertex: one adapter, the other has weight 0

    # greedy answers of the exported adapters (transformers backend) == the trained policies' answers
    served = ServedRun(run_id, tiny_run["uri"], cache_dir=tmp_path / "cache")
    prompts = served.example_prompts(4)
    gen = HFGenerator.from_export(out)
    for method, cls in (("panacea", PanaceaPolicy), ("soups", SoupsPolicy), ("per_weight_dpo", PerWeightPolicy)):
        for i, point in enumerate(fronts[method].points):
            conditioned = method != "per_weight_dpo"
            policy = served.policy(Choice(method, point.weights, point.weights, point.model_uri, conditioned, ""))
            assert isinstance(policy, cls)
            want = policy.generate(prompts, np.asarray(point.weights), max_new_tokens=16)
            assert gen.generate(prompts, f"{method}-{i}", max_new_tokens=16) == want, (method, i)
    # serving.backend=vllm-*: the chosen point is exported on demand; Panacea folded at any λ answers like the
    # Panacea model (checked here with the transformers backend; tests/test_vllm.py asks a real vLLM server)
    from pareto.config import ServingConfig

    via_lora = ServedRun(run_id, tiny_run["uri"], cache_dir=tmp_path / "cache2",
                         serving=ServingConfig(backend="vllm-server", url="http://127.0.0.1:9"))
    for method in ("panacea", "soups", "per_weight_dpo"):
        choice = via_lora.choose(method, (0.35, 0.65))
        assert "answered by vLLM (vllm-server)" in choice.reason
        name, path = via_lora.lora_backend(method).adapter(choice)
        folded = HFGenerator(out / "base", {name: path})
        want = served.policy(choice).generate(prompts, np.asarray(choice.served_weights), max_new_tokens=16)
        assert folded.generate(prompts, name, max_new_tokens=16) == want, method
    assert "vLLM" not in served.choose("panacea", (0.35, 0.65)).reason  # default backend: transformers

    # one batch, three λs of two methods
    names = ["panacea-0", "per_weight_dpo-2", "panacea-2", None]
    mixed = gen.generate(prompts, names, max_new_tokens=16)
    assert mixed == [gen.generate([p], n, max_new_tokens=16)[0] for p, n in zip(prompts, names, strict=True)]


def test_export_refuses_a_non_empty_directory_and_unknown_runs(tmp_path):
    from pareto.export import export_run

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_run("latest", tmp_path / "out", f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(LookupError, match="no pareto pipeline run"):
        export_run("latest", tmp_path / "new", f"sqlite:///{tmp_path / 'm.db'}")
    assert (tmp_path / "out" / "x").read_text() == "keep me"
