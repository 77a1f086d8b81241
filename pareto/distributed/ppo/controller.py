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
import shutil
import time
from pathlib import Path

import numpy as np
import ray
import torch
from ray.exceptions import ActorUnavailableError, RayActorError
from tqdm.auto import tqdm

from pareto.config import ExperimentConfig
from pareto.distributed import recorder
from pareto.distributed.bundle import ModelRef
from pareto.distributed.ppo.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_result,
    save_checkpoint,
    save_result,
)
from pareto.distributed.ppo.common import collate
from pareto.distributed.ppo.group import ActorGroup, check_cluster, get_all
from pareto.distributed.ppo.numerics import (  # noqa: F401  (re-exported: tests and benchmarks import them from here)
    ROLLOUT_SAMPLES,
    compare_to_base,
    grpo_advantages,
    ppo_advantages,
    rollout_logprob_diff,
    rollout_samples,
    vs_sft_table,
)

# units, the prompt stream and the task live in units.py; these names stay importable from here
from pareto.distributed.ppo.units import (  # noqa: F401
    WEIGHT_SUFFIXES,
    PromptStream,
    Unit,
    UnitProgress,
    checkpoint_root,
    task_of,
)
from pareto.evaluation import PointEval, evaluate_grid
from pareto.methods import load_method
from pareto.objectives import RunningZScore
from pareto.objectives.rl import (
    AdaptiveKLController,
    whiten_rewards,
)

RECOVERABLE = (RayActorError, ActorUnavailableError)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


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
                                  repetition_penalty=ev.repetition_penalty,
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

        def evaluate_base() -> dict:
            assert ray.get(self.group.engines[0].info.remote())["version"] == 0
            points, rows = self._evaluate(np.concatenate([u.grid for u in self.units()]))
            return {"points": [p.to_dict() for p in points], "oracle_rows": rows}

        return recorder.cached_json(self.root / "base_eval.json", evaluate_base)

    # ---- one unit ---------------------------------------------------------------------------------------------
    def _train_unit(self, unit: Unit, until_step: int | None) -> dict | None:
        """Train one unit from its latest checkpoint (or from scratch) and evaluate it; None when stopped at
        until_step."""
        self.rollout_samples: list[dict] = []
        self.group.setup(unit.seed)
        p = self._restore(unit)
        self.group.sync(p.version)  # the engines always start from the trainer's (fresh or restored) weights
        if not self._train_steps(unit, p, until_step):
            return None
        start = time.perf_counter()
        points, oracle_rows = self._evaluate(unit.grid)
        eval_seconds = time.perf_counter() - start
        p.history[-1] = {**p.history[-1], "restarts": float(self.restarts), "resumed_from_step": float(p.resumed_from)}
        return {"method": self.name, "weights": unit.weights, "adapter": self.group.save_policy(unit.weights),
                "history": p.history, "best_step": p.step, "steps": p.step,
                "train_seconds": p.cpu_seconds, "train_wall_seconds": p.seconds,  # CPU-s, as the DPO stages report
                "tokens_per_second": p.tokens / max(p.seconds, 1e-9), "eval_seconds": eval_seconds,
                "points": [pt.to_dict() for pt in points], "oracle_rows": oracle_rows,
                "lambda_schedule": p.schedule, "restarts": self.restarts,
                "rollout_samples": self.rollout_samples,  # of the last step this process ran
                "resumed_from_step": p.resumed_from, "final_version": p.version, "models_trained": 1,
                "policy_kind": "panacea" if self.conditioned else None}  # serving loads Panacea-PPO as Panacea

    def _restore(self, unit: Unit) -> UnitProgress:
        """A unit's progress: fresh, or its latest checkpoint's (`ppo.resume: auto`, whose trainer state is loaded
        into the actors)."""
        mcfg = self.mcfg
        progress = UnitProgress(PromptStream(self.train_prompts, unit.seed),
                                RunningZScore(names=tuple(self.cfg.objectives)),
                                AdaptiveKLController(mcfg.kl_coef, mcfg.kl_target, mcfg.kl_horizon))
        ckpt = latest_checkpoint(unit.dir) if self.cfg.ppo.resume == "auto" else None
        if ckpt is None:
            return progress
        tensors, state = load_checkpoint(ckpt)
        self.group.load_state(tensors, state["trainer"])
        return UnitProgress(PromptStream(self.train_prompts, unit.seed, **state["data"]),
                            RunningZScore.from_state_dict(state["reward_stats"]),
                            AdaptiveKLController.from_state_dict(state["kl"]), state["history"],
                            state["lambda_schedule"], step=state["step"], version=state["version"],
                            seconds=state["seconds"], cpu_seconds=state.get("cpu_seconds", 0.0),
                            tokens=state["tokens"], resumed_from=state["step"])

    def _train_steps(self, unit: Unit, p: UnitProgress, until_step: int | None) -> bool:
        """Step the unit to `max_steps` (-> True) or to until_step (-> False), checkpointing every
        `ppo.checkpoint_every` steps, at the last step and where it stops."""
        mcfg = self.mcfg
        label = "" if unit.weights is None else f" λ={np.round(unit.weights, 2).tolist()}"
        bar = tqdm(total=mcfg.max_steps, initial=p.step, desc=f"{self.name}{label}", unit="step",
                   disable=not self.progress, mininterval=1.0)
        cpu = self.group.cpu_seconds()
        try:
            while p.step < mcfg.max_steps:
                if until_step is not None and p.step >= until_step:
                    return False
                p.step += 1
                row, lam_step = self._step(unit, p.step, p.stream, p.stats, p.kl_ctl, p.version)
                p.version = row["version"] + 1
                p.seconds += row["timing/step"]
                now = self.group.cpu_seconds()
                p.cpu_seconds += now - cpu
                cpu = now
                p.tokens += int(row["response_tokens"] * mcfg.rows_per_step)
                p.history.append(row)
                p.schedule.append(lam_step)
                bar.update(1)
                bar.set_postfix(score=f"{row['score']:.2f}", kl=f"{row['kl']:.2f}", v=p.version, refresh=False)
                stopping = until_step is not None and p.step >= until_step
                if p.step % self.cfg.ppo.checkpoint_every == 0 or p.step == mcfg.max_steps or stopping:
                    state = self.group.state()
                    save_checkpoint(unit.dir, p.step, state["tensors"], {
                        **p.checkpoint_state(), "trainer": state["meta"], "unit": unit.index,
                        "weights": unit.weights, "method": self.name,
                    }, keep=self.cfg.ppo.keep_checkpoints)
        finally:
            bar.close()
        return True

    def _step(self, unit: Unit, step: int, stream: PromptStream, stats: RunningZScore,
              kl_ctl: AdaptiveKLController, version: int) -> tuple[dict, list[list[float]]]:
        """One PPO step, every phase timed; -> (its history row, the distinct λ it trained at)."""
        mcfg, group = self.mcfg, self.group
        t0 = time.perf_counter()
        rows, lam_prompts, gen, batch = self._generate(unit, step, stream, version)
        t_gen = time.perf_counter() - t0
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
        lam = batch["weights"]
        beta = kl_ctl.coef
        whitened = whiten_rewards(raw, stats)  # running stats updated for PPO and GRPO alike (resumed exactly)
        if mcfg.critic == "none":  # GRPO: the group is the baseline; the KL is a loss term on the trainers
            score, advantages = grpo_advantages(mcfg, raw, whitened, lam, mask)
            extra = {"ref_logp": ref_logp, "kl_coef": torch.full((mask.shape[0],), float(beta))}
            returns = torch.zeros_like(values)
        else:
            score, advantages, returns = ppo_advantages(mcfg, whitened, lam, kl_tok, values, mask, beta)
            extra = {}

        # the update, then the versioned weight sync
        t2 = time.perf_counter()
        train = group.train({**batch, "old_logp": old_logp, "old_values": values, "advantages": advantages,
                             "returns": returns, **extra}, step)
        t_train = time.perf_counter() - t2
        t3 = time.perf_counter()
        group.sync(version + 1)
        t_sync = time.perf_counter() - t3
        kl_ctl.update(float(seq_kl.mean()), mcfg.rows_per_step)

        # trainer vs rollout-engine log-probs of the same tokens at the same version: ~0 iff the sync worked
        logprob_diff = rollout_logprob_diff(gen, old_logp, mask)
        n_tok = float(mask.sum())
        t_step = time.perf_counter() - t0
        self.rollout_samples = rollout_samples(rows, gen, raw)
        row = {"step": step, "version": float(gen["version"]), "score": float(score.mean()),
               "kl": float(seq_kl.mean()), "kl_coef": beta, "response_tokens": n_tok / mask.shape[0],
               "finished_rate": float(np.mean(gen["finished"])),
               "rollout_logprob_diff": logprob_diff,
               **{f"reward/{o}": float(v) for o, v in zip(self.cfg.objectives, raw.mean(0).tolist(), strict=True)},
               **{f"reward_std/{o}": float(v) for o, v in zip(self.cfg.objectives, raw.std(0).tolist(), strict=True)},
               **{f"lambda/{o}": float(v) for o, v in zip(self.cfg.objectives, lam.mean(0).tolist(), strict=True)},
               **{k: v for k, v in train.items() if k != "seconds"},
               "timing/generation": t_gen, "timing/reward": max(o["seconds"] for o in rewards_out),
               "timing/reference": max(o["seconds"] for o in ref_out),
               "timing/experience": max(o["seconds"] for o in exp_out), "timing/scoring_wall": t_score,
               "timing/training": t_train, "timing/sync": t_sync, "timing/step": t_step,
               "generation_tokens_per_second": n_tok / max(t_gen, 1e-9),
               "step_tokens_per_second": n_tok / max(t_step, 1e-9)}
        return row, np.unique(lam_prompts, axis=0).tolist()

    def _generate(self, unit: Unit, step: int, stream: PromptStream,
                  version: int) -> tuple[list[str], np.ndarray, dict, dict]:
        """The step's rollouts: the engines sample at the current weight version, λ per row injected with the batch;
        -> (the rows' prompts, the λ of each prompt, the engines' output, the collated batch with its λ)."""
        mcfg = self.mcfg
        prompts = stream.take(mcfg.prompts_per_step)
        lam_prompts = self.method.step_preferences(mcfg, self.k, unit.seed, step, len(prompts), unit.weights)
        rows = [p for p in prompts for _ in range(mcfg.samples_per_prompt)]
        lam_rows = np.repeat(lam_prompts, mcfg.samples_per_prompt, axis=0)
        gen = self.group.generate(rows, lam_rows if self.conditioned else None, max_new_tokens=mcfg.max_new_tokens,
                                  temperature=mcfg.temperature, do_sample=True, seed=_seed(unit.seed, step, 0x6E4))
        if gen["version"] != version:
            raise RuntimeError(f"rollouts used weight version {gen['version']}, expected {version}")
        batch = collate(gen["prompt_ids"], gen["response_ids"], self.group.info["pad_id"])
        batch["weights"] = torch.tensor(lam_rows, dtype=torch.float32)
        return rows, lam_prompts, gen, batch



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
