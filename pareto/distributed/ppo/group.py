"""The actors of one PPO run, created together and killed together.

Trainer ranks sit in a placement group (one bundle per rank); rollout engines, reward and reference workers
are plain actors with their configured (possibly fractional) CPU/GPU shares. Each call fans a batch out over
the actors of a role and gathers the parts fail-fast: the first dead actor raises at once instead of leaving
the driver waiting on a peer stuck in a collective.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import numpy as np
import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pareto.config import ActorShare, ExperimentConfig
from pareto.distributed.ppo.rollout import engine_class
from pareto.distributed.ppo.trainer import TrainerRank
from pareto.distributed.ppo.workers import ReferenceWorker, RewardWorker
from pareto.distributed.stages import load_options

NAMESPACE = "pareto"  # named actors, so an operator (or a fault test) can find them: ray.get_actor(name, NAMESPACE)
PLACEMENT_TIMEOUT_S = 900


def get_all(refs: Sequence[ray.ObjectRef], timeout: float | None = None) -> list:
    """ray.get of several refs that raises as soon as any of them fails."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=timeout)
        if not done:
            raise TimeoutError(f"{len(pending)} actor call(s) did not finish within {timeout} s")
        ray.get(done[0])
    return ray.get(list(refs))


def split(n: int, parts: int) -> list[slice]:
    """Contiguous, near-equal slices of range(n)."""
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _resources(share: ActorShare) -> dict:
    return {"num_cpus": share.cpus, "num_gpus": share.gpus}


def _device(share: ActorShare) -> str:
    """The device an actor of this share computes on (checked inside the actor: `common.actor_device`)."""
    return "cuda:0" if share.gpus > 0 else "cpu"


def training_sources(cfg: ExperimentConfig) -> dict[str, str]:
    """objective -> what scores it in PPO's reward vector: the run's reward model's source
    (`ExperimentConfig.reward_sources()`: hf, a rule, else learned), overridden by `ppo.reward_sources`."""
    return {**cfg.reward_sources(), **cfg.ppo.reward_sources}


def task_oracle(cfg: ExperimentConfig):
    """The synthetic task's oracle (for the oracle reward source and the oracle front); None for a dataset."""
    if cfg.task.dataset is not None:
        return None
    from pareto.data.task import build_task

    return build_task(cfg).oracle


def check_cluster(cfg: ExperimentConfig) -> None:
    """The PPO actors must fit the cluster, or nothing would ever be scheduled: say so before starting any."""
    ppo = cfg.ppo
    roles = {"trainer": ppo.trainer, "rollout": ppo.rollout, "reward": ppo.reward, "reference": ppo.reference}
    need_cpu = sum(s.count * s.cpus for s in roles.values())
    need_gpu = sum(s.count * s.gpus for s in roles.values())
    have = ray.cluster_resources()
    if need_cpu > have.get("CPU", 0) + 1e-9:
        raise RuntimeError(f"PPO actors ask for {need_cpu:g} CPUs (Σ ppo.<role>.count × cpus) but the Ray cluster has "
                           f"{have.get('CPU', 0):g}; lower ppo.trainer/rollout/reward/reference.cpus")
    if need_gpu > have.get("GPU", 0) + 1e-9:
        raise RuntimeError(f"PPO actors ask for {need_gpu:g} GPUs but the Ray cluster has {have.get('GPU', 0):g}; "
                           "set ppo.<role>.gpus to 0 on a CPU cluster")


class ActorGroup:
    def __init__(self, cfg: ExperimentConfig, method: str, base_ref: ray.ObjectRef, reward_ref: ray.ObjectRef | None,
                 tag: str, generation: int, seed: int, n_heads: int, oracle_ref: ray.ObjectRef | None = None) -> None:
        """`base_ref` / `reward_ref`: the base policy and the run's saved reward model (bytes, or a path / hub id by
        reference); `oracle_ref`: the task's oracle (default: built from the config; None for a dataset)."""
        ppo, mcfg = cfg.ppo, getattr(cfg.methods, method)
        objectives = tuple(cfg.objectives)
        self.tag = f"ppo-{tag}-{uuid.uuid4().hex[:6]}-g{generation}"  # unique: a killed actor's name frees lazily
        self.cfg = cfg
        self.actors: list = []
        self.pg = None
        if oracle_ref is None and cfg.task.dataset is None:
            oracle_ref = ray.put(task_oracle(cfg))

        loads = {"load_options": load_options(cfg)}  # the base loads as in every stage: model.dtype, remote code

        def make(cls, share: ActorShare, role: str, i: int, *args, init: dict | None = None, **options):
            actor = ray.remote(cls).options(name=f"{self.tag}-{role}-{i}", namespace=NAMESPACE, max_restarts=0,
                                            **_resources(share), **options).remote(*args, **(init or {}))
            self.actors.append(actor)
            return actor

        try:
            bundle = {k: v for k, v in (("CPU", ppo.trainer.cpus), ("GPU", ppo.trainer.gpus)) if v > 0}
            self.pg = placement_group([bundle] * ppo.trainer.count, strategy=ppo.placement_strategy,
                                      name=f"{self.tag}-trainers")
            if not self.pg.wait(timeout_seconds=PLACEMENT_TIMEOUT_S):
                raise RuntimeError(f"could not place {ppo.trainer.count} trainer ranks of {bundle} within "
                                   f"{PLACEMENT_TIMEOUT_S} s (ppo.trainer.count / cpus / gpus, ppo.placement_strategy)")
            self.trainers = [
                make(TrainerRank, ppo.trainer, "trainer", i, i, ppo.trainer.count, base_ref, method, mcfg, objectives,
                     n_heads, ppo.trainer.threads, _device(ppo.trainer), init=loads,
                     scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i))
                for i in range(ppo.trainer.count)]
            engine_args = (ppo.vllm,) if ppo.engine == "vllm" else ()
            self.engines = [make(engine_class(ppo.engine), ppo.rollout, "rollout", i, base_ref, method, mcfg,
                                 objectives, seed, ppo.rollout.threads, _device(ppo.rollout), *engine_args,
                                 init=loads)
                            for i in range(ppo.rollout.count)]
            self.rewards = [make(RewardWorker, ppo.reward, "reward", i, reward_ref, objectives, training_sources(cfg),
                                 oracle_ref, cfg.seed, ppo.reward.threads, cfg.reward_model.hf, _device(ppo.reward))
                            for i in range(ppo.reward.count)]
            self.references = [make(ReferenceWorker, ppo.reference, "reference", i, base_ref, seed,
                                    ppo.reference.threads, _device(ppo.reference), init=loads)
                               for i in range(ppo.reference.count)]
            host, port = ray.get(self.trainers[0].address.remote())
            get_all([t.init_group.remote(host, port, ppo.backend) for t in self.trainers])
            self.info = ray.get(self.engines[0].info.remote())
        except BaseException:
            self.shutdown()
            raise

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def cpu_seconds(self) -> float:
        """CPU seconds (every thread) the group's actor processes have used so far: differences between two calls
        are what the steps between them cost, comparable with the DPO stages' CPU-seconds."""
        return float(sum(get_all([a.__ray_call__.remote(_process_cpu_seconds) for a in self.actors])))

    def shutdown(self) -> None:
        # engines first, politely: a vLLM engine stops the server it started (a killed one's server dies with it)
        try:
            get_all([e.close.remote() for e in getattr(self, "engines", [])], timeout=60)
        except Exception:  # dead or stuck engines: killed below all the same
            pass
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # already dead: that is what we wanted
                pass
        self.actors = []
        if self.pg is not None:
            try:
                remove_placement_group(self.pg)
            except Exception:
                pass
            self.pg = None

    def all_alive(self, timeout: float = 30.0) -> bool:
        try:
            get_all([a.ping.remote() for a in self.actors], timeout=timeout)
            return True
        except Exception:
            return False

    # ---- fan-out calls -------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], weights: np.ndarray | None, **kwargs) -> dict:
        parts = split(len(prompts), len(self.engines))
        seed = kwargs.pop("seed", None)
        refs = [e.generate.remote(list(prompts[s]), None if weights is None else weights[s], **kwargs,
                                  seed=None if seed is None else seed + i)
                for i, (e, s) in enumerate(zip(self.engines, parts, strict=False))]
        outs = get_all(refs)
        merged = {k: [x for o in outs for x in o[k]] for k in ("prompt_ids", "response_ids", "texts", "logprobs",
                                                                "finished")}
        versions = {o["version"] for o in outs}
        if len(versions) != 1:
            raise RuntimeError(f"rollout engines disagree on the weight version: {sorted(versions)}")
        return {**merged, "version": versions.pop(), "seconds": max(o["seconds"] for o in outs)}

    def score_refs(self, prompts: Sequence[str], texts: Sequence[str]) -> list:
        parts = split(len(prompts), len(self.rewards))
        return [w.score.remote(list(prompts[s]), list(texts[s])) for w, s in zip(self.rewards, parts, strict=False)]

    def reference_refs(self, batch: dict, temperature: float) -> list:
        parts = split(batch["input_ids"].shape[0], len(self.references))
        return [w.logprobs.remote(batch["input_ids"][s], batch["attention_mask"][s], temperature)
                for w, s in zip(self.references, parts, strict=False)]

    def experience_refs(self, batch: dict) -> list:
        parts = split(batch["input_ids"].shape[0], len(self.trainers))
        return [t.experience.remote({k: v[s] for k, v in batch.items()}) for t, s in zip(self.trainers, parts,
                                                                                          strict=True)]

    def scorer_names(self) -> list[str]:
        return ray.get(self.rewards[0].scorer_names.remote())

    def evaluate_scores(self, prompts: Sequence[str], texts: Sequence[str]) -> dict[str, torch.Tensor]:
        parts = split(len(prompts), len(self.rewards))
        outs = get_all([w.evaluate.remote(list(prompts[s]), list(texts[s]))
                        for w, s in zip(self.rewards, parts, strict=False)])
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    def train(self, batch: dict, step: int) -> dict:
        parts = split(batch["input_ids"].shape[0], len(self.trainers))
        outs = get_all([t.train.remote({k: v[s] for k, v in batch.items()}, step)
                        for t, s in zip(self.trainers, parts, strict=True)])
        return {k: float(np.mean([o[k] for o in outs])) for k in outs[0]}

    def setup(self, seed: int) -> None:
        get_all([t.setup.remote(seed) for t in self.trainers])

    def state(self) -> dict:
        return ray.get(self.trainers[0].state.remote())  # ranks are identical after every DDP step

    def load_state(self, tensors: dict, meta: dict) -> None:
        ref_t, ref_m = ray.put(tensors), ray.put(meta)
        get_all([t.load_state.remote(ref_t, ref_m) for t in self.trainers])

    def sync(self, version: int) -> int:
        """Explicit, versioned weight sync: rank 0's trainable tensors to every rollout engine."""
        tensors = ray.get(self.trainers[0].weights.remote())
        ref = ray.put(tensors)
        versions = get_all([e.load_weights.remote(version, ref) for e in self.engines])
        assert set(versions) == {version}
        return version

    def save_policy(self, weights: Sequence[float] | None) -> dict:
        return ray.get(self.engines[0].save_policy.remote(weights))


def _process_cpu_seconds(_actor: object) -> float:
    """Runs inside an actor (`__ray_call__`): its process's CPU time."""
    return time.process_time()
