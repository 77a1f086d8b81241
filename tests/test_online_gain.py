"""What online RL must do on the tiny task: the trained policy's λ-scalarized oracle reward beats the SFT policy's
at every grid λ by more than two standard errors, for PPO and GRPO (one conditioned policy each), seeds 0 and 1
(by default each method at one of them; all four with PARETO_TEST_ALL_SEEDS=1).

The SFT policy is the pipeline's tiny LM (SFT on the task's replies); both sides answer the same held-out prompts
with sampled answers (the policy RL optimises), so the test is paired per prompt (`compare_to_base`). Rewards
are the task's oracle objectives, so a gain is a real gain, not reward hacking of a learned model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pareto.config import TinyModelConfig, config_from_dict
from pareto.data import load_task
from pareto.distributed.bundle import pack
from pareto.distributed.pipeline import eval_grid
from pareto.distributed.ppo import PPORun
from pareto.models.policy import build_tiny_model, save_model, sft_train, train_tokenizer
from tests.conftest import ALL_SEEDS
from tests.test_ppo import local_ray  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

METHODS = {
    "panacea_ppo": {"samples_per_prompt": 2, "prompts_per_step": 16, "critic": "scalar"},
    "panacea_grpo": {"samples_per_prompt": 4, "prompts_per_step": 8},
}


@pytest.fixture(scope="module")
def sft_base(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The pipeline's tiny LM, SFT-trained on the task's replies as `pareto run` does (about a minute)."""
    task = load_task("tiny-hh", seed=0)
    examples = task.sft_examples()
    tiny = TinyModelConfig()
    tokenizer = train_tokenizer([f"User: {p}\nAssistant: {r}" for p, r in examples], tiny.vocab_size)
    model = build_tiny_model(tiny, tokenizer, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two
    try:
        sft_train(model, tokenizer, examples, tiny.sft_epochs, tiny.sft_lr, tiny.sft_batch_size, tiny.max_length, 0)
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("sft") / "model"
    save_model(model, tokenizer, path)
    return pack(path)


# Both methods and both seeds in CI, each method at one seed; the other two cells with PARETO_TEST_ALL_SEEDS=1.
@pytest.mark.parametrize(("method", "seed"), [("panacea_ppo", 0), ("panacea_grpo", 1),
                                              pytest.param("panacea_ppo", 1, marks=ALL_SEEDS),
                                              pytest.param("panacea_grpo", 0, marks=ALL_SEEDS)])
def test_online_rl_beats_the_sft_policy_at_every_lambda(local_ray, sft_base, tmp_path: Path,  # noqa: F811
                                                        method: str, seed: int) -> None:
    cfg = config_from_dict({
        "name": "online-gain", "seed": seed, "objectives": ["helpful", "concise"],
        "methods": {method: {"max_steps": 60, "vertex_prob": 0.5, "minibatches": 2, "ppo_epochs": 1,
                             "max_new_tokens": 24, "lr": 3e-3, "preferences_per_step": 4, **METHODS[method]}},
        "evaluation": {"grid_points": 3, "n_prompts": 90, "max_new_tokens": 24, "do_sample": True},
        "ppo": {"reward_sources": {"helpful": "oracle", "concise": "oracle"}, "checkpoint_every": 1000,
                "trainer": {"count": 1, "cpus": 0.5}, "rollout": {"count": 1, "cpus": 0.5}},
        "state_dir": str(tmp_path),
    })
    run = PPORun(cfg, method, sft_base, None, eval_grid(cfg), root=tmp_path / "run", progress=False)
    try:
        out = run.run()[method]
    finally:
        run.close()
    assert [c["weights"] for c in out["vs_sft"]] == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    for c in out["vs_sft"]:
        assert c["z_paired"] > 2, (method, seed, c)
