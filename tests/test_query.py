"""`pareto query`: the model choice on a hand-made front (hand-computed scalarizations), and the answer coming from
the chosen model (real tiny LM + real LoRA adapters, served out of a real MLflow server and its registry)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from pareto import query, registry
from pareto.config import TinyModelConfig
from pareto.front.types import Front, FrontPoint
from pareto.models.conditioned import PerWeightPolicy
from pareto.models.policy import build_tiny_model, save_model, sft_train, train_tokenizer
from tests.conftest import _exe

OBJ = ("helpful", "concise")
# λ it was trained at -> its evaluated values. (0.3, 0.7) is dominated by (0.5, 0.5) and must never be chosen.
POINTS = {(1.0, 0.0): (0.9, 0.1), (0.5, 0.5): (0.6, 0.6), (0.0, 1.0): (0.1, 0.9), (0.3, 0.7): (0.2, 0.5)}
PROMPT = "how do i learn guitar?"
DECODING = {"max_new_tokens": 12, "repetition_penalty": 2.0}  # the run's logged `evaluation` decoding


def _tiny_base(path: Path) -> None:
    """A tiny LM briefly SFT-trained on a few lines, so generations are plain text (random weights emit invalid
    UTF-8 bytes, which all decode to the same replacement characters)."""
    examples = [("how do i learn guitar?", "practice chords every day."),
                ("how do i bake bread?", "mix flour, water, yeast and salt."),
                ("how do i learn guitar?", "take lessons with a teacher."),
                ("how do i learn guitar?", "i can not help with that.")]
    tok = train_tokenizer([f"User: {p}\nAssistant: {r}" for p, r in examples] * 10, 300)
    model = build_tiny_model(TinyModelConfig(hidden_size=64, intermediate_size=64, num_heads=1, vocab_size=300),
                             tok, seed=0)
    sft_train(model, tok, examples * 8, 12, 1e-2, 8, 64, 0)
    save_model(model, tok, path)


def _adapter(base: Path, out: Path, seed: int) -> None:
    """A LoRA adapter with random (non-zero) weights, saved the way per-weight models are (adapter `w0`)."""
    from pareto.models.policy import load_policy

    model, tok = load_policy(base)
    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    PerWeightPolicy(get_peft_model(model, lora, adapter_name="w0"), tok, OBJ, {"w0": np.zeros(2)}).save(out)


@pytest.fixture(scope="module")
def served(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A pipeline-shaped run: base model + front at the parent, one adapter per nested run; registered."""
    tmp = tmp_path_factory.mktemp("query")
    _tiny_base(tmp / "base")
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("query-test")
    adapters, points = {}, []
    with mlflow.start_run(run_name="parent") as parent:
        mlflow.log_params({f"evaluation.{k}": v for k, v in DECODING.items()})
        mlflow.log_artifacts(str(tmp / "base"), "base_model")
        for i, (w, v) in enumerate(POINTS.items()):
            with mlflow.start_run(run_name=f"λ={w}", nested=True) as child:
                _adapter(tmp / "base", tmp / f"adapter-{i}", seed=i)
                mlflow.log_artifacts(str(tmp / f"adapter-{i}"), "adapter")
            adapters[w] = tmp / f"adapter-{i}" / "w0"
            points.append(FrontPoint(weights=w, values=v, stderr=(0.0, 0.0),
                                     model_uri=f"runs:/{child.info.run_id}/adapter"))
        front = Front(method="per_weight_dpo", objectives=OBJ, points=tuple(points), reference_point=(0.0, 0.0),
                      meta={"conditioned": False})
        mlflow.log_text(front.to_json(), "fronts/per_weight_dpo.json")
    versions = registry.register_front(front, experiment="query-test", source_run_id=parent.info.run_id,
                                       tracking_uri=mlflow_server)
    return {"uri": mlflow_server, "base": tmp / "base", "adapters": adapters,
            "version": {r.weights: r.version for r in versions}}


@pytest.mark.parametrize(("weights", "scalarization", "expected"), [
    ((1.0, 0.0), "linear", (1.0, 0.0)),        # a vertex: that vertex's model
    ((0.0, 1.0), "linear", (0.0, 1.0)),
    ((0.5, 0.5), "linear", (0.5, 0.5)),        # 0.5, 0.6, 0.5 -> the middle model
    ((0.7, 0.3), "linear", (1.0, 0.0)),        # 0.66, 0.60, 0.34
    # Tchebycheff around the utopia (0.9, 0.9): -max(0.7·0, 0.3·0.8)=-0.24, -max(0.7·0.3, 0.3·0.3)=-0.21,
    # -max(0.7·0.8, 0.3·0)=-0.56 -> the middle model, where the linear choice was the vertex.
    ((0.7, 0.3), "tchebycheff", (0.5, 0.5)),
    ((0.3, 0.7), "linear", (0.0, 1.0)),        # the dominated model trained at exactly this λ is never chosen
])
def test_choice_on_a_hand_made_front(served: dict, weights, scalarization, expected) -> None:
    choice = query.choose("query-test", weights, served["uri"], scalarization=scalarization)
    assert choice.model.weights == expected
    assert choice.model.version == served["version"][expected]
    assert choice.served_weights == expected and choice.expected == POINTS[expected]
    assert choice.candidates == 3  # the registry holds only the non-dominated models
    assert f"trained at λ=({expected[0]:.3f}, {expected[1]:.3f})" in choice.reason and scalarization in choice.reason


def test_bad_weights_are_rejected_before_loading(served: dict) -> None:
    with pytest.raises(ValueError, match="weights: wrong length"):
        query.choose("query-test", (0.2, 0.3, 0.5), served["uri"])
    with pytest.raises(ValueError, match="scalarization 'max'"):
        query.choose("query-test", (0.5, 0.5), served["uri"], scalarization="max")


def test_answer_comes_from_the_chosen_model(served: dict) -> None:
    direct = {w: PerWeightPolicy.load(served["base"], {"w0": (w, path)}, OBJ).generate([PROMPT], np.asarray(w),
                                                                                      **DECODING)[0]
              for w, path in served["adapters"].items() if w != (0.3, 0.7)}
    assert len(set(direct.values())) == 3  # the adapters answer differently, so the check below can fail
    for w in direct:
        out = query.answer("query-test", w, PROMPT, served["uri"], max_new_tokens=12)
        assert out.choice.model.weights == w
        assert out.text == direct[w]


def test_answers_decode_as_the_run_was_evaluated(served: dict) -> None:
    """Without --max-new-tokens, a served answer is decoded as the run's fronts were (length and repetition
    penalty from its logged `evaluation` section), so a user reads the kind of answer each point was scored on."""
    w = (1.0, 0.0)
    policy = PerWeightPolicy.load(served["base"], {"w0": (w, served["adapters"][w])}, OBJ)
    want = policy.generate([PROMPT], np.asarray(w), **DECODING)[0]
    assert want != policy.generate([PROMPT], np.asarray(w), max_new_tokens=12)[0]  # the penalty changes it
    assert query.answer("query-test", w, PROMPT, served["uri"]).text == want
    longer = query.answer("query-test", w, PROMPT, served["uri"], max_new_tokens=20).text
    assert longer == policy.generate([PROMPT], np.asarray(w), max_new_tokens=20, repetition_penalty=2.0)[0]


def test_cli_names_the_version_it_used(served: dict) -> None:
    proc = subprocess.run([_exe("pareto"), "query", "--experiment", "query-test", "--weights", "0,1", "--prompt",
                           PROMPT, "--max-new-tokens", "12", "--tracking-uri", served["uri"], "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data["version"] == served["version"][(0.0, 1.0)] and data["registered_model"] == "pareto-query-test"
    direct = PerWeightPolicy.load(served["base"], {"w0": ((0.0, 1.0), served["adapters"][(0.0, 1.0)])}, OBJ)
    assert data["answer"] == direct.generate([PROMPT], np.asarray((0.0, 1.0)), **DECODING)[0]
    from typer.testing import CliRunner

    from pareto.cli import app

    bad = CliRunner().invoke(app, ["query", "--experiment", "query-test", "--weights", "0.5,0.6", "--prompt", PROMPT,
                                   "--tracking-uri", served["uri"]])
    assert bad.exit_code == 2 and "must sum to 1" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_conditioned_model_competes_at_its_evaluated_values(mlflow_server: str, tmp_path: Path) -> None:
    """A conditioned model is set to λ and offers its evaluated value at the nearest grid λ."""
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("query-mixed")
    with mlflow.start_run(run_name="parent") as parent:
        uris = []
        for name in ("cond", "pw-a", "pw-b"):
            with mlflow.start_run(run_name=name, nested=True) as child:
                mlflow.log_text("{}", "adapter/adapter_config.json")
                uris.append(f"runs:/{child.info.run_id}/adapter")
        grid = {(0.0, 1.0): (0.2, 0.8), (0.5, 0.5): (0.7, 0.7), (1.0, 0.0): (0.8, 0.2)}
        cond = Front(method="panacea", objectives=OBJ, reference_point=(0.0, 0.0), meta={"conditioned": True},
                     points=tuple(FrontPoint(weights=w, values=v, stderr=(0.0, 0.0), model_uri=uris[0])
                                  for w, v in grid.items()))
        pw = Front(method="per_weight_dpo", objectives=OBJ, reference_point=(0.0, 0.0), meta={"conditioned": False},
                   points=(FrontPoint(weights=(1.0, 0.0), values=(0.9, 0.1), stderr=(0.0, 0.0), model_uri=uris[1]),
                           FrontPoint(weights=(0.0, 1.0), values=(0.1, 0.9), stderr=(0.0, 0.0), model_uri=uris[2])))
        mlflow.log_text(cond.to_json(), "fronts/panacea.json")
    kw = {"experiment": "query-mixed", "source_run_id": parent.info.run_id, "tracking_uri": mlflow_server}
    registry.register_fronts([cond, pw], **kw)
    mid = query.choose("query-mixed", (0.45, 0.55), mlflow_server)  # nearest grid λ (0.5, 0.5): 0.7 beats 0.5
    assert mid.model.conditioned and mid.served_weights == (0.45, 0.55) and mid.expected == (0.7, 0.7)
    assert "evaluated at λ=(0.500, 0.500)" in mid.reason
    vertex = query.choose("query-mixed", (1.0, 0.0), mlflow_server)  # 0.9 (per-weight) beats 0.8 (conditioned)
    assert not vertex.model.conditioned and vertex.model.weights == (1.0, 0.0)
    only = query.choose("query-mixed", (1.0, 0.0), mlflow_server, method="panacea")
    assert only.model.conditioned and only.expected == (0.8, 0.2)
