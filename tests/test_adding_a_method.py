"""A method added the way docs/adding-a-method.md says (a config class and a row in the method table, one file in
pareto/methods/ with its policy class) trains, is logged and is served through the same paths as the others:
`fixed_dpo`, linear-scalarized DPO at one fixed λ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pareto.config import METHODS, load_config
from pareto.methods import load_method
from tests.conftest import shared_stage_caches

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "tests" / "configs" / "small.yaml"


def test_the_table_row_is_the_only_wiring() -> None:
    """Every list of methods comes from the table: the config section, the module, the policy kind, the plan title."""
    from pareto.models.conditioned import POLICY_KINDS
    from pareto.plan import resolve_plan

    spec = METHODS["fixed_dpo"]
    cfg = load_config(SMALL, ["methods.panacea=null", "methods.per_weight_dpo=null", "methods.fixed_dpo.lr=0.003"])
    assert list(cfg.methods.enabled()) == ["fixed_dpo"] and isinstance(cfg.methods.fixed_dpo, spec.config)
    assert cfg.methods.fixed_dpo.per_weight is False  # from the row: one model for every λ
    assert load_method("fixed_dpo").__name__ == spec.module
    assert POLICY_KINDS["fixed_dpo"] == spec.policy
    assert [m.title for m in resolve_plan(cfg).methods] == [spec.title]


def test_fixed_dpo_trains_beats_its_base_serves_one_answer_for_every_lambda_and_exports(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from pareto.distributed.pipeline import run_pipeline
    from pareto.serving import ServedRun

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = load_config(SMALL, [f"state_dir={tmp_path}", f"tracking.uri={uri}", "methods.panacea=null",
                              "methods.per_weight_dpo=null", "methods.fixed_dpo.weights=[0.0, 1.0]",
                              "methods.fixed_dpo.lr=0.003", "methods.fixed_dpo.max_steps=100",
                              "methods.fixed_dpo.eval_every=100", "methods.fixed_dpo.val_prompts=6"])
    with shared_stage_caches(tmp_path, tmp_path_factory):
        result = run_pipeline(cfg, progress=False)
    front = result.fronts["fixed_dpo"]
    values = front.values()
    assert len(values) == 3 and front.meta["conditioned"] and front.meta["policy_kind"] == "fixed_dpo"
    # One model that ignores λ: greedy answers, hence scores, are the same at every λ of the grid.
    np.testing.assert_array_equal(values, np.repeat(values[:1], len(values), axis=0))
    # Trained on concise labels only (λ = (0, 1)): more concise than the model it started from.
    assert front.base_point is not None and values[0, 1] > front.base_point.values[1]

    served = ServedRun(result.run_id, uri, cache_dir=tmp_path / "serve")
    prompt = "How do I keep basil alive on a windowsill?"
    text_a, choice = served.answer("fixed_dpo", prompt, (1.0, 0.0))
    text_b, _ = served.answer("fixed_dpo", prompt, (0.0, 1.0))
    assert choice.conditioned and text_a == text_b and text_a.strip()

    # Exported for vLLM as the table says (`adapter`): the one LoRA model, once per λ of the front.
    from pareto.export import export_run

    manifest = export_run(result.run_id, tmp_path / "front", uri)
    assert {a["kind"] for a in manifest["adapters"].values()} == {"adapter"}
    assert len(manifest["adapters"]) == len(values) and not manifest["not_exported"]
