"""Trainer ranks: the policy (base + adapter) and the critic (none for GRPO), data-parallel with torch DDP (gloo on
CPU, NCCL on GPU).

Every rank holds a full copy and a shard of each rollout batch; DDP averages gradients. Losses divide by the
*global* token count of the minibatch (× world size, since DDP averages), so N ranks compute exactly the
update one rank would on the whole batch.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from transformers import AutoModel

from pareto.distributed.bundle import ModelRef
from pareto.distributed.ppo.checkpoint import flatten_optimizer, unflatten_optimizer
from pareto.distributed.ppo.common import actor_device, entropy, sequence_logprobs, setup_worker, unpack_tmp
from pareto.methods import load_method
from pareto.models.policy import load_policy
from pareto.objectives.rl import clipped_policy_loss, clipped_value_loss, kl_penalty, masked_mean


class ValueModel(nn.Module):
    """A critic: the base LM's transformer with a linear value head per objective (λ is an input of the head,
    since values depend on the preference the policy is conditioned on)."""

    def __init__(self, backbone: nn.Module, n_heads: int, n_objectives: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size + n_objectives, n_heads)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        lam = weights[:, None, :].to(hidden.dtype).expand(-1, hidden.shape[1], -1)
        return self.head(torch.cat([hidden, lam], dim=-1))  # [B, T, H]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class TrainerRank:
    """One data-parallel rank. `setup` builds fresh models and optimizers (one call per trained unit)."""

    def __init__(self, rank: int, world_size: int, base: ModelRef, method: str, mcfg, objectives: Sequence[str],
                 n_heads: int, threads: int, device: str = "cpu", load_options: dict | None = None) -> None:
        """`load_options`: `load_policy`'s dtype / trust_remote_code (the model section, `stages.load_options`)."""
        setup_worker(threads, rank)
        self.load_options = dict(load_options or {})
        self.rank, self.world_size, self.device = rank, world_size, actor_device(device, "trainer")
        self.base_dir = unpack_tmp(base, "base")  # bytes unpacked; a folder or hub id by reference, never copied
        self.method_name, self.method, self.mcfg = method, load_method(method), mcfg
        self.objectives, self.n_heads = tuple(objectives), n_heads

    def ping(self) -> bool:
        return True

    # ---- process group -----------------------------------------------------------------------------------
    def address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def init_group(self, host: str, port: int, backend: str) -> int:
        if backend == "auto":
            backend = "nccl" if self.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=self.rank,
                                world_size=self.world_size, timeout=timedelta(minutes=10))
        return dist.get_world_size()

    # ---- models ------------------------------------------------------------------------------------------
    def setup(self, seed: int) -> None:
        """Fresh policy adapter, critic and optimizers, identical on every rank (same seed; DDP also broadcasts).
        GRPO (`critic: none`) builds no critic: the rank holds the policy only."""
        torch.manual_seed(seed)
        cfg = self.mcfg
        base, _ = load_policy(self.base_dir, **self.load_options, device=self.device)
        self.policy = self.method.build_policy(base, len(self.objectives), cfg).to(self.device)
        self.policy.train()
        # λ is a per-rank buffer of the SVD-LoRA layers: DDP must not broadcast rank 0's over ours at each forward.
        self.ddp_policy = DDP(self.policy, forward_sync_buffers=False)
        self.policy_params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optim = torch.optim.AdamW(self.policy_params, lr=cfg.lr, weight_decay=0.0)
        warm = {"start_factor": 0.1 if cfg.warmup_steps else 1.0, "total_iters": cfg.warmup_steps}
        self.sched = torch.optim.lr_scheduler.LinearLR(self.optim, **warm)
        self.critic = self.ddp_critic = self.critic_optim = self.critic_sched = None
        if cfg.critic != "none":
            # the critic trains every weight: float32 whatever the (frozen) policy base loads in
            backbone = AutoModel.from_pretrained(str(self.base_dir), dtype=torch.float32,
                                                 trust_remote_code=self.load_options.get("trust_remote_code", False))
            backbone.to(self.device)
            self.critic = ValueModel(backbone, self.n_heads, len(self.objectives)).to(self.device)
            self.ddp_critic = DDP(self.critic, forward_sync_buffers=False)
            self.critic_optim = torch.optim.AdamW(self.critic.parameters(), lr=cfg.critic_lr, weight_decay=0.0)
            self.critic_sched = torch.optim.lr_scheduler.LinearLR(self.critic_optim, **warm)

    def weights(self) -> dict[str, torch.Tensor]:
        """The policy's trainable tensors: what a weight sync sends to the rollout engines."""
        return {n: p.detach().cpu().clone() for n, p in self.policy.named_parameters() if p.requires_grad}

    # ---- experience: old log-probs and values of a shard -------------------------------------------------
    @torch.no_grad()
    def experience(self, batch: dict) -> dict:
        start = time.perf_counter()
        b = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        self.method.apply_preferences(self.policy, b["weights"].cpu().numpy().copy())
        self.policy.eval()
        logits = self.policy(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        if self.critic is not None:
            values = self.critic(b["input_ids"], b["attention_mask"], b["weights"])[:, :-1]
        else:  # GRPO: no critic, no values
            values = logits.new_zeros(logits.shape[0], logits.shape[1] - 1, self.n_heads)
        self.policy.train()
        return {"logp": sequence_logprobs(logits, b["input_ids"], self.mcfg.temperature).cpu(),
                "values": values.float().cpu(), "seconds": time.perf_counter() - start}

    # ---- the PPO update on a shard ---------------------------------------------------------------------------
    def train(self, batch: dict, step: int) -> dict:
        """Clipped surrogate + value loss (PPO), or clipped surrogate + β·KL(π_θ ‖ π_ref) with the batch's
        `ref_logp` and per-row β `kl_coef` (GRPO: the KL is a loss term, not a reward penalty)."""
        cfg, start = self.mcfg, time.perf_counter()
        b = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        n = b["input_ids"].shape[0]
        sums: dict[str, float] = {}
        updates = 0
        for epoch in range(cfg.ppo_epochs):
            # the shuffle depends only on (step, epoch, rank): a resumed run replays it exactly
            seed = int(np.random.SeedSequence([step, epoch, self.rank]).generate_state(1)[0])
            g = torch.Generator().manual_seed(seed)
            for idx in torch.randperm(n, generator=g).chunk(cfg.minibatches):
                mb = {k: v[idx.to(v.device)] for k, v in b.items() if isinstance(v, torch.Tensor)}
                mask = mb["mask"]
                tokens = mask.sum().detach().clone()
                if self.world_size > 1:
                    dist.all_reduce(tokens)
                denom = tokens / self.world_size
                self.method.apply_preferences(self.policy, mb["weights"].cpu().numpy().copy())
                logits = self.ddp_policy(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
                logp = sequence_logprobs(logits, mb["input_ids"], cfg.temperature)
                pg_loss, stats = clipped_policy_loss(logp, mb["old_logp"], mb["advantages"], mask, cfg.clip_range,
                                                     denom)
                if self.critic is not None:
                    values = self.ddp_critic(mb["input_ids"], mb["attention_mask"], mb["weights"])[:, :-1]
                    v_loss = clipped_value_loss(values, mb["old_values"], mb["returns"], mask, cfg.value_clip, denom)
                    self.critic_optim.zero_grad(set_to_none=True)
                else:
                    v_loss = torch.zeros((), device=logp.device)
                kl_loss = (kl_penalty(logp, mb["ref_logp"], mask, mb["kl_coef"], denom) if "ref_logp" in mb
                           else torch.zeros((), device=logp.device))
                self.optim.zero_grad(set_to_none=True)
                (pg_loss + v_loss + kl_loss).backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy_params, cfg.max_grad_norm)
                self.optim.step()
                self.sched.step()
                if self.critic is not None:
                    torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                    self.critic_optim.step()
                    self.critic_sched.step()
                with torch.no_grad():
                    ent = masked_mean(entropy(logits.detach(), cfg.temperature), mask)
                for key, value in (("policy_loss", pg_loss), ("value_loss", v_loss), ("kl_loss", kl_loss),
                                   ("clipfrac", stats["clipfrac"]), ("approx_kl", stats["approx_kl"]),
                                   ("entropy", ent), ("grad_norm", grad_norm)):
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                updates += 1
        out = {k: v / updates for k, v in sums.items()}
        out["lr"] = self.sched.get_last_lr()[0]
        out["seconds"] = time.perf_counter() - start
        return out

    # ---- checkpoint state ----------------------------------------------------------------------------------
    def state(self) -> dict:
        """Tensors (for safetensors) and JSON-able meta of everything an exact resume needs."""
        optim_t, optim_meta = flatten_optimizer(self.optim.state_dict(), "policy")
        critic_t, critic_meta, critic_sched, critic = {}, None, None, {}  # GRPO: no critic
        if self.critic is not None:
            critic_t, critic_meta = flatten_optimizer(self.critic_optim.state_dict(), "critic")
            critic_sched = self.critic_sched.state_dict()
            critic = {k: v.detach().cpu().clone() for k, v in self.critic.state_dict().items()}
        return {
            "tensors": {"policy": self.weights(), "critic": critic, "optimizer": {**optim_t, **critic_t},
                        "rng": {"torch": torch.get_rng_state()}},
            "meta": {"optimizer": {"policy": optim_meta, "critic": critic_meta},
                     "scheduler": {"policy": self.sched.state_dict(), "critic": critic_sched}},
        }

    def load_state(self, tensors: dict[str, dict[str, torch.Tensor]], meta: dict) -> None:
        params = {n: p for n, p in self.policy.named_parameters() if p.requires_grad}
        if set(params) != set(tensors["policy"]):
            raise ValueError("checkpoint policy tensors do not match this policy's trainable parameters")
        with torch.no_grad():
            for name, value in tensors["policy"].items():
                params[name].copy_(value)
        self.optim.load_state_dict(unflatten_optimizer(tensors["optimizer"], meta["optimizer"]["policy"]))
        self.sched.load_state_dict(meta["scheduler"]["policy"])
        if self.critic is not None:
            self.critic.load_state_dict(tensors["critic"], strict=True)
            self.critic_optim.load_state_dict(unflatten_optimizer(tensors["optimizer"], meta["optimizer"]["critic"]))
            self.critic_sched.load_state_dict(meta["scheduler"]["critic"])
        torch.set_rng_state(tensors["rng"]["torch"])
