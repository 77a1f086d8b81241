"""The PPO controller (driver side): rollouts, the reward vector, KL, advantages, updates, weight sync, checkpoints.

One step, with every phase timed:

    generation  rollout engines sample responses at weight version v, λ injected per row with the batch
    reward      the reward worker scores the reward *vector* [B, K]       ┐
    reference   the reference worker gives π_ref log-probs (KL)           ├ concurrently
    experience  trainer ranks give old log-probs and values of their shard┘
    advantages  on the driver: per-objective whitening, λ-scalarization, GAE (pareto.objectives.rl)
    training    trainer ranks: clipped policy loss + value loss, DDP
    sync        rank 0's weights -> every rollout engine as version v+1

A run trains one or more *units* (MORLHF: one policy per λ; Panacea-PPO: one conditioned policy). Each unit
checkpoints atomically every `ppo.checkpoint_every` steps; a restarted run resumes from the latest checkpoint
with the same step, data position, λ schedule, KL coefficient, reward statistics and optimizer state. A dead
actor mid-run (trainer, rollout, worker) makes the controller recreate every actor and resume the same way.
"""

from __future__ import annotations

import functools
import itertools
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
from ray.exceptions import ActorUnavailableError, RayActorError
from tqdm.auto import tqdm

from pareto.config import ExperimentConfig
from pareto.data.task import Task
from pareto.distributed.bundle import ModelRef, unpack
from pareto.distributed.ppo.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_result,
    save_checkpoint,
    save_result,
)
from pareto.distributed.ppo.common import collate
from pareto.distributed.ppo.group import ActorGroup, check_cluster, get_all
from pareto.distributed.stages import fitted_task
from pareto.evaluation import PointEval, evaluate_grid
from pareto.io import atomic_write_text
from pareto.methods import load_method
from pareto.objectives import RunningZScore
from pareto.objectives.rl import (
    AdaptiveKLController,
    combine_objectives,
    gae,
    masked_whiten,
    token_rewards,
    whiten_rewards,
)

RECOVERABLE = (RayActorError, ActorUnavailableError)
ROLLOUT_SAMPLES = 4  # rollout rows kept per unit, with the tokens the model saw
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class PromptStream:
    """Training prompts in a fresh seeded permutation per epoch; its position is two integers (resumable)."""

    def __init__(self, prompts: list[str], seed: int, epoch: int = 0, index: int = 0) -> None:
        self.prompts, self.seed, self.epoch, self.index = prompts, seed, epoch, index

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.prompts))

    def take(self, n: int) -> list[str]:
        out, order = [], self._order()
        while len(out) < n:
            if self.index == len(self.prompts):
                self.epoch, self.index = self.epoch + 1, 0
                order = self._order()
            out.append(self.prompts[order[self.index]])
            self.index += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}


@dataclass
class Unit:
    """One model to train: MORLHF has one per λ, Panacea-PPO one for all λ."""

    index: int
    weights: list[float] | None  # the fixed λ of a per-weight unit
    grid: np.ndarray             # the λ it is evaluated at
    dir: Path
    seed: int


def checkpoint_root(cfg: ExperimentConfig, method: str) -> Path:
    """Keyed by everything that determines the result, not by actor shares: a job may resume on another cluster."""
    digest = cfg.digest("seed", "task", "objectives", "model", "reward_model", f"methods.{method}",
                        "ppo.reward_sources", "evaluation")
    return cfg.state_path() / "checkpoints" / f"{method}-{digest}"


class PPORun:
    """Train every unit of one PPO method on one set of actors (reused across units, recreated on failure)."""

    def __init__(self, cfg: ExperimentConfig, method: str, base: ModelRef, reward: ModelRef | None, grid: np.ndarray,
                 root: Path | None = None, progress: bool = True) -> None:
        """`base`: the base policy (bytes, or a folder / hub id by reference); `reward`: the run's saved reward model
        (`SourcedReward`; bytes or a folder), None when every objective has a rule or oracle source."""
        self.cfg, self.name, self.progress = cfg, method, progress
        self.mcfg = getattr(cfg.methods, method)
        if self.mcfg is None:
            raise ValueError(f"methods.{method} is not configured")
        self.method = load_method(method)
        self.k = cfg.k
        self.conditioned = not self.mcfg.per_weight
        self.n_heads = self.k + 1 if self.mcfg.critic == "per_objective" else 1  # + the KL-penalty head
        self.root = root or checkpoint_root(cfg, method)
        if cfg.ppo.resume == "never" and self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_ref, self.reward_ref = ray.put(base), (ray.put(reward) if reward is not None else None)
        self.grid = np.atleast_2d(np.asarray(grid, dtype=np.float64))
        task = task_of(cfg, base)  # tiny-hh or a dataset, its prompts fit into the base model's context
        self.oracle_ref = ray.put(task.oracle) if task.oracle is not None else None
        self.train_prompts = task.prompts["train"]
        self.eval_prompts = task.prompts["eval"][: cfg.evaluation.n_prompts or None]
        if not self.train_prompts or not self.eval_prompts:
            raise ValueError(f"{method}: task {cfg.task.name!r} has {len(self.train_prompts)} train and "
                             f"{len(self.eval_prompts)} eval prompts that fit the base model's context; PPO needs both")
        self.group: ActorGroup | None = None
        self.generation = 0
        self.restarts = 0

    # ---- units ---------------------------------------------------------------------------------------------
    def units(self) -> list[Unit]:
        if not self.conditioned:
            weights = np.asarray(getattr(self.mcfg, "weights", None) or self.grid, dtype=np.float64)
            return [Unit(i, w.tolist(), w[None, :], self.root / f"unit-{i}", self.cfg.seed + i)
                    for i, w in enumerate(weights)]
        return [Unit(0, None, self.grid, self.root / "unit-0", self.cfg.seed)]

    def output_key(self, unit: Unit) -> str:
        return f"{self.name}/{unit.index}" if not self.conditioned else self.name

    # ---- actors ----------------------------------------------------------------------------------------------
    def _new_group(self) -> ActorGroup:
        if self.group is not None:
            self.group.shutdown()
        self.group = None
        check_cluster(self.cfg)
        self.group = ActorGroup(self.cfg, self.name, self.base_ref, self.reward_ref, self.root.name,
                                self.generation, self.cfg.seed, self.n_heads, oracle_ref=self.oracle_ref)
        self.generation += 1
        return self.group

    def close(self) -> None:
        if self.group is not None:
            self.group.shutdown()
            self.group = None

    # ---- the run ----------------------------------------------------------------------------------------------
    def run(self, until_step: int | None = None) -> dict[str, dict]:
        """Train (or resume) every unit; returns {output key: stage result} for the units that finished.

        until_step stops each unfinished unit after that step (checkpointed), as a preempted job would.
        """
        outputs: dict[str, dict] = {}
        base_points = None
        for unit in self.units():
            done = load_result(unit.dir)
            if done is not None:
                outputs[self.output_key(unit)] = done
                continue
            while True:
                try:
                    if self.group is None:
                        self._new_group()
                    if base_points is None:
                        base_points = self._base_points()
                    result = self._train_unit(unit, until_step)
                    break
                except Exception as err:
                    if not self._recoverable(err):
                        raise
                    self.restarts += 1
                    if self.restarts > self.cfg.ppo.max_restarts:
                        raise RuntimeError(f"{self.name}: actors failed {self.restarts} times (ppo.max_restarts="
                                           f"{self.cfg.ppo.max_restarts}); last error: {err}") from err
                    tqdm.write(f"{self.name}: actor failure ({type(err).__name__}); restart {self.restarts}/"
                               f"{self.cfg.ppo.max_restarts}: new actors, resuming from the latest checkpoint")
                    self.close()
            if result is None:  # stopped at until_step
                continue
            result["base_points"] = base_points["points"]
            rows = result.pop("oracle_rows")
            if rows is not None and base_points["oracle_rows"] is not None:
                result["vs_sft"] = compare_to_base(result["points"], rows, base_points)
                result["history"][-1].update({f"vs_sft/{k}_{i}": float(c[k]) for i, c in enumerate(result["vs_sft"])
                                              for k in ("gain", "z")})
                tqdm.write(vs_sft_table(self.output_key(unit), result["vs_sft"], self.cfg.objectives))
            save_result(unit.dir, result, result["adapter"])
            outputs[self.output_key(unit)] = result
        return outputs

    def _recoverable(self, err: BaseException) -> bool:
        if getattr(err, "actor_init_failed", False):
            return False  # an actor that cannot even start will not start next time either
        if isinstance(err, RECOVERABLE):
            return True
        # a rank that lost its peer fails inside a collective: recoverable when some actor is in fact dead
        return self.group is not None and not self.group.all_alive()

    # ---- evaluation -----------------------------------------------------------------------------------------
    def _evaluate(self, grid: np.ndarray) -> tuple[list[PointEval], list[list] | None]:
        """Points of the λ grid, plus each point's per-prompt oracle vectors (for the paired test against SFT)."""
        ev, group = self.cfg.evaluation, self.group
        calls = itertools.count()
        memo: dict = {}

        def generate(prompts: list[str], weights: np.ndarray) -> list[str]:
            return group.generate(prompts, weights if self.conditioned else None, max_new_tokens=ev.max_new_tokens,
                                  temperature=ev.temperature, do_sample=ev.do_sample,
                                  seed=_seed(self.cfg.seed, 0xE7A1, next(calls)))["texts"]

        def score(name: str, prompts: list[str], responses: list[str]) -> torch.Tensor:
            if memo.get("key") is not responses:  # one remote call serves every scorer of the batch
                memo.update(key=responses, value=group.evaluate_scores(prompts, responses))
            return memo["value"][name]

        names = group.scorer_names()
        points = evaluate_grid(generate, self.eval_prompts, grid, {n: functools.partial(score, n) for n in names})
        if "oracle" not in names:
            return points, None
        rows = memo["value"]["oracle"].reshape(len(points), len(self.eval_prompts), -1)
        return points, rows.tolist()

    def _base_points(self) -> dict:
        """The SFT base on the method's λ grid (engines are at version 0 = base until their first sync), for the
        paired oracle comparison per λ. A task without an oracle skips it: its fronts carry the pipeline's base point
        (`recorder.log_method`), scored by the same reward model."""
        if self.oracle_ref is None:
            return {"points": [], "oracle_rows": None}
        path = self.root / "base_eval.json"
        if not path.is_file():
            assert ray.get(self.group.engines[0].info.remote())["version"] == 0
            points, rows = self._evaluate(np.concatenate([u.grid for u in self.units()]))
            # atomic: a run killed mid-write must not leave a truncated file that every resume then fails to parse
            atomic_write_text(path, json.dumps({"points": [p.to_dict() for p in points], "oracle_rows": rows}))
        return json.loads(path.read_text())

    # ---- one unit ---------------------------------------------------------------------------------------------
    def _train_unit(self, unit: Unit, until_step: int | None) -> dict | None:
        cfg, mcfg, group = self.cfg, self.mcfg, self.group
        self.rollout_samples: list[dict] = []
        group.setup(unit.seed)
        stream = PromptStream(self.train_prompts, unit.seed)
        stats = RunningZScore(names=tuple(cfg.objectives))
        kl_ctl = AdaptiveKLController(mcfg.kl_coef, mcfg.kl_target, mcfg.kl_horizon)
        history: list[dict] = []
        schedule: list[list[list[float]]] = []  # the distinct λ of every step: the λ schedule
        step, version, seconds, tokens, resumed_from = 0, 0, 0.0, 0, 0
        ckpt = latest_checkpoint(unit.dir) if cfg.ppo.resume == "auto" else None
        if ckpt is not None:
            tensors, state = load_checkpoint(ckpt)
            group.load_state(tensors, state["trainer"])
            step = resumed_from = state["step"]
            version, seconds, tokens = state["version"], state["seconds"], state["tokens"]
            stream = PromptStream(self.train_prompts, unit.seed, **state["data"])
            stats = RunningZScore.from_state_dict(state["reward_stats"])
            kl_ctl = AdaptiveKLController.from_state_dict(state["kl"])
            history, schedule = state["history"], state["lambda_schedule"]
        group.sync(version)  # the engines always start from the trainer's (fresh or restored) weights

        label = "" if unit.weights is None else f" λ={np.round(unit.weights, 2).tolist()}"
        bar = tqdm(total=mcfg.max_steps, initial=step, desc=f"{self.name}{label}", unit="step",
                   disable=not self.progress, mininterval=1.0)
        try:
            while step < mcfg.max_steps:
                if until_step is not None and step >= until_step:
                    return None
                step += 1
                row, lam_step = self._step(unit, step, stream, stats, kl_ctl, version)
                version = row["version"] + 1
                seconds += row["timing/step"]
                tokens += int(row["response_tokens"] * mcfg.rows_per_step)
                history.append(row)
                schedule.append(lam_step)
                bar.update(1)
                bar.set_postfix(score=f"{row['score']:.2f}", kl=f"{row['kl']:.2f}", v=version, refresh=False)
                stopping = until_step is not None and step >= until_step
                if step % cfg.ppo.checkpoint_every == 0 or step == mcfg.max_steps or stopping:
                    state = group.state()
                    save_checkpoint(unit.dir, step, state["tensors"], {
                        "version": version, "seconds": seconds, "tokens": tokens, "data": stream.state(),
                        "reward_stats": stats.state_dict(), "kl": kl_ctl.state_dict(), "history": history,
                        "lambda_schedule": schedule, "trainer": state["meta"], "unit": unit.index,
                        "weights": unit.weights, "method": self.name,
                    }, keep=cfg.ppo.keep_checkpoints)
        finally:
            bar.close()

        start = time.perf_counter()
        points, oracle_rows = self._evaluate(unit.grid)
        eval_seconds = time.perf_counter() - start
        history[-1] = {**history[-1], "restarts": float(self.restarts), "resumed_from_step": float(resumed_from)}
        return {"method": self.name, "weights": unit.weights, "adapter": group.save_policy(unit.weights),
                "history": history, "best_step": step, "steps": step, "train_seconds": seconds,
                "tokens_per_second": tokens / max(seconds, 1e-9), "eval_seconds": eval_seconds,
                "points": [p.to_dict() for p in points], "oracle_rows": oracle_rows,
                "lambda_schedule": schedule, "restarts": self.restarts,
                "rollout_samples": self.rollout_samples,  # of the last step this process ran
                "resumed_from_step": resumed_from, "final_version": version, "models_trained": 1,
                "policy_kind": "panacea" if self.conditioned else None}  # serving loads Panacea-PPO as Panacea

    def _step(self, unit: Unit, step: int, stream: PromptStream, stats: RunningZScore,
              kl_ctl: AdaptiveKLController, version: int) -> tuple[dict, list[list[float]]]:
        mcfg, group = self.mcfg, self.group
        t0 = time.perf_counter()
        prompts = stream.take(mcfg.prompts_per_step)
        lam_prompts = self.method.step_preferences(mcfg, self.k, unit.seed, step, len(prompts), unit.weights)
        rows = [p for p in prompts for _ in range(mcfg.samples_per_prompt)]
        lam_rows = np.repeat(lam_prompts, mcfg.samples_per_prompt, axis=0)

        # generation: the engines sample at the current weight version, λ per row injected with the batch
        gen = group.generate(rows, lam_rows if self.conditioned else None, max_new_tokens=mcfg.max_new_tokens,
                             temperature=mcfg.temperature, do_sample=True, seed=_seed(unit.seed, step, 0x6E4))
        t_gen = time.perf_counter() - t0
        if gen["version"] != version:
            raise RuntimeError(f"rollouts used weight version {gen['version']}, expected {version}")
        batch = collate(gen["prompt_ids"], gen["response_ids"], group.info["pad_id"])
        batch["weights"] = torch.tensor(lam_rows, dtype=torch.float32)
        mask = batch["mask"]

        # reward vector, reference log-probs and the trainers' old log-probs/values, concurrently
        t1 = time.perf_counter()
        reward_refs = group.score_refs(rows, gen["texts"])
        ref_refs = group.reference_refs(batch, mcfg.temperature)
        exp_refs = group.experience_refs(batch)
        rewards_out, ref_out, exp_out = (get_all(r) for r in (reward_refs, ref_refs, exp_refs))
        t_score = time.perf_counter() - t1
        raw = torch.cat([o["reward"] for o in rewards_out])                 # [B, K]
        ref_logp = torch.cat([o["logp"] for o in ref_out])                   # [B, T-1]
        old_logp = torch.cat([o["logp"] for o in exp_out])
        values = torch.cat([o["values"] for o in exp_out])                   # [B, T-1, H]

        # advantages: the reward stays a vector until λ scalarizes it here
        kl_tok = (old_logp - ref_logp) * mask
        seq_kl = kl_tok.sum(1)
        whitened = whiten_rewards(raw, stats)
        lam = batch["weights"]
        beta = kl_ctl.coef
        if mcfg.critic == "per_objective":
            # K objective heads + one for the KL penalty (already scaled by β, so its mixing weight is 1)
            heads = torch.cat([token_rewards(whitened, mask), -beta * kl_tok.unsqueeze(-1)], dim=-1)
            adv_heads, returns = gae(heads, values, mask, mcfg.gamma, mcfg.gae_lambda)
            mix = torch.cat([lam, torch.ones(lam.shape[0], 1)], dim=1)
            advantages = (adv_heads * mix[:, None, :]).sum(-1)
            score = (whitened * lam).sum(-1)
        else:
            score = combine_objectives(whitened, lam, mcfg.scalarizer, mcfg.ideal)
            advantages, returns = gae(token_rewards(score, mask) - beta * kl_tok, values[..., 0], mask, mcfg.gamma,
                                      mcfg.gae_lambda)
            returns = returns.unsqueeze(-1)
        if mcfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        # the update, then the versioned weight sync
        t2 = time.perf_counter()
        train = group.train({**batch, "old_logp": old_logp, "old_values": values, "advantages": advantages,
                             "returns": returns}, step)
        t_train = time.perf_counter() - t2
        t3 = time.perf_counter()
        group.sync(version + 1)
        t_sync = time.perf_counter() - t3
        kl_ctl.update(float(seq_kl.mean()), mcfg.rows_per_step)

        rollout_logp = torch.zeros_like(old_logp)
        for i, (p, lp) in enumerate(zip(gen["prompt_ids"], gen["logprobs"], strict=True)):
            rollout_logp[i, len(p) - 1: len(p) - 1 + len(lp)] = torch.tensor(lp)
        n_tok = float(mask.sum())
        t_step = time.perf_counter() - t0
        # what the policy saw and answered (the first rows of the step): the task's prompt, the token ids the engine
        # fed the model (the prompt rendered by the model's chat template), the answer and its reward vector
        self.rollout_samples = [{"prompt": rows[i], "prompt_ids": list(gen["prompt_ids"][i]),
                                 "response": gen["texts"][i], "reward": raw[i].tolist()}
                                for i in range(min(ROLLOUT_SAMPLES, len(rows)))]
        row = {"step": step, "version": float(gen["version"]), "score": float(score.mean()),
               "kl": float(seq_kl.mean()), "kl_coef": beta, "response_tokens": n_tok / mask.shape[0],
               "finished_rate": float(np.mean(gen["finished"])),
               # trainer vs rollout-engine log-probs of the same tokens at the same version: ~0 iff the sync worked
               "rollout_logprob_diff": float(((rollout_logp - old_logp).abs() * mask).max()),
               **{f"reward/{o}": float(v) for o, v in zip(self.cfg.objectives, raw.mean(0).tolist(), strict=True)},
               **{f"lambda/{o}": float(v) for o, v in zip(self.cfg.objectives, lam.mean(0).tolist(), strict=True)},
               **{k: v for k, v in train.items() if k != "seconds"},
               "timing/generation": t_gen, "timing/reward": max(o["seconds"] for o in rewards_out),
               "timing/reference": max(o["seconds"] for o in ref_out),
               "timing/experience": max(o["seconds"] for o in exp_out), "timing/scoring_wall": t_score,
               "timing/training": t_train, "timing/sync": t_sync, "timing/step": t_step,
               "generation_tokens_per_second": n_tok / max(t_gen, 1e-9),
               "step_tokens_per_second": n_tok / max(t_step, 1e-9)}
        return row, np.unique(lam_prompts, axis=0).tolist()


def compare_to_base(points: list[dict], rows: list, base: dict) -> list[dict]:
    """λ-scalarized oracle reward of the trained policy vs the SFT base, per grid λ, on the same eval prompts.

    z_paired uses per-prompt differences (the same prompts answered by both); z uses independent standard errors.
    """
    base_rows = {tuple(p["weights"]): np.asarray(r) for p, r in zip(base["points"], base["oracle_rows"], strict=True)}
    out = []
    for point, r in zip(points, rows, strict=True):
        w = np.asarray(point["weights"])
        ours, theirs = np.asarray(r) @ w, base_rows[tuple(point["weights"])] @ w
        n, diff = len(ours), ours - theirs
        se_paired = max(float(diff.std(ddof=1)) / n**0.5, 1e-9)
        se = max(float(np.sqrt(ours.var(ddof=1) / n + theirs.var(ddof=1) / n)), 1e-9)
        out.append({"weights": list(point["weights"]), "policy": float(ours.mean()), "base": float(theirs.mean()),
                    "gain": float(diff.mean()), "se": se, "z": float(diff.mean()) / se, "se_paired": se_paired,
                    "z_paired": float(diff.mean()) / se_paired})
    return out


def vs_sft_table(name: str, rows: list[dict], objectives: list[str]) -> str:
    lines = [f"{name}: λ-scalarized oracle reward vs the SFT base (λ over {', '.join(objectives)})"]
    for c in rows:
        lam = ", ".join(f"{w:.2f}" for w in c["weights"])
        lines.append(f"  λ=({lam})  policy {c['policy']:.3f}  base {c['base']:.3f}  gain {c['gain']:+.3f}  "
                     f"z={c['z']:.1f} (paired {c['z_paired']:.1f})")
    return "\n".join(lines)


def task_of(cfg: ExperimentConfig, base: ModelRef) -> Task:
    """The run's task (`pareto.data.task`), a dataset's prompts fit into the base model's context: its tokenizer and
    config are read from `base` (bytes: only those files are written out, not the weights; a folder or hub id: read
    where it is)."""
    if cfg.task.dataset is None:
        return fitted_task(cfg)
    if isinstance(base, str):
        return fitted_task(cfg, base)
    with tempfile.TemporaryDirectory() as tmp:
        light = {k: v for k, v in base.items() if not k.endswith(WEIGHT_SUFFIXES)}
        return fitted_task(cfg, unpack(light, Path(tmp) / "base"))


def run_ppo_method(cfg: ExperimentConfig, method: str, base: ModelRef, reward: ModelRef | None, grid: np.ndarray,
                   progress: bool = True) -> dict[str, dict]:
    """Train and evaluate one PPO method; results keyed like the pipeline's method stages ("morlhf/0", ...).

    `base` is the pipeline's base model (`StageModels.base`: bytes, or a folder / hub id by reference) and `reward`
    its reward model (`StageModels.reward`: the saved `SourcedReward`, normaliser included), so the fronts are scored
    like the DPO methods' and sit next to the same base point."""
    run = PPORun(cfg, method, base, reward, grid, progress=progress)
    try:
        return run.run()
    finally:
        run.close()
