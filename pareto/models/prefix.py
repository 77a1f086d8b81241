"""The frozen prefix of a partly adapted model: run the layers below the lowest trainable one once per sequence.

With LoRA on the top L of N decoder layers (`lora_layers`), the N − L layers below never change during training,
so what enters the lowest adapted layer is a constant of each training sequence. The reference pass runs every
pair's full forward anyway; it keeps those hidden states, and each training step then runs only the adapted
layers and the head: on SmolLM2-135M with LoRA on the top 10 of 30 layers a DPO step does about half the work.

Where the model's structure is not the usual decoder (a `layers` ModuleList whose parent takes `inputs_embeds`),
where trainable parameters sit below the adapted layers, or where the cached path does not reproduce the full
forward on the first batch (`agrees`), the trainer simply runs the full model.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

PREFIX_BUDGET_BYTES = 2 * 2**30  # cached hidden states kept in host memory at most (2 GiB); above it: full forwards


@dataclass
class PrefixStates:
    """The hidden states entering decoder layer `layer`, one [tokens, hidden] tensor per response row of each pair."""

    layer: int
    rows: list[tuple[torch.Tensor, torch.Tensor]]  # per pair: (prompt + response_0, prompt + response_1)

    def subset(self, index: Sequence[int]) -> PrefixStates:
        return PrefixStates(self.layer, [self.rows[i] for i in index])

    def batch(self, index: Sequence[int], length: int, device: torch.device) -> torch.Tensor:
        """[2B, length, hidden] for pairs `index`, stacked as `pair_logps` stacks them (all response_0 rows, then all
        response_1 rows), zero-padded on the right like the token batch."""
        rows = [self.rows[i][0] for i in index] + [self.rows[i][1] for i in index]
        out = rows[0].new_zeros((len(rows), length, rows[0].shape[-1]))
        for r, h in enumerate(rows):
            out[r, :h.shape[0]] = h
        return out.to(device)


class FrozenPrefix:
    """A decoder whose layers below `first` hold no trainable parameter."""

    def __init__(self, decoder: nn.Module, first: int) -> None:
        self.decoder, self.first = decoder, first

    @classmethod
    def of(cls, model: nn.Module) -> FrozenPrefix | None:
        """The model's frozen prefix, or None (no decoder found, nothing to skip, or trainable weights below)."""
        decoder = next((m for m in model.modules() if isinstance(getattr(m, "layers", None), nn.ModuleList)
                        and "inputs_embeds" in inspect.signature(m.forward).parameters), None)
        if decoder is None:
            return None
        layer_of = {id(p): i for i, layer in enumerate(decoder.layers) for p in layer.parameters()}
        inside = {id(p) for p in decoder.parameters()}
        head = {id(p) for name, m in decoder.named_children() if name == "norm" for p in m.parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        embedding = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
        first = min((layer_of[id(p)] for p in trainable if id(p) in layer_of), default=0)
        for p in trainable:
            if id(p) in embedding or (id(p) in inside and id(p) not in layer_of and id(p) not in head):
                return None  # something below the layers trains: every step must run it
        return cls(decoder, first) if first > 0 else None

    @contextmanager
    def capturing(self) -> Iterator[list[torch.Tensor]]:
        """Collect what enters layer `first` in every forward inside the block (detached, padded as the batch)."""
        seen: list[torch.Tensor] = []

        def keep(module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen.append((args[0] if args else kwargs["hidden_states"]).detach().cpu())

        handle = self.decoder.layers[self.first].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            yield seen
        finally:
            handle.remove()

    @contextmanager
    def top_only(self) -> Iterator[None]:
        """Inside the block the decoder holds only its layers from `first` on: a forward from `inputs_embeds` = the
        cached hidden states runs exactly the adapted layers, the final norm and the head."""
        full = self.decoder.layers
        self.decoder.layers = nn.ModuleList(list(full)[self.first:])
        try:
            yield
        finally:
            self.decoder.layers = full
