"""`InferenceState`: everything a model needs to continue a sequence in recurrent (RNN) mode.

One dict of tensors per layer, every tensor batch-first, plus `seqlen` (b,) = tokens already consumed
per row. A Mamba layer holds {"conv": (b, d_inner, d_conv) conv window, "ssm": (b, d_inner, N) float32};
an attention layer holds its KV cache. `prefill` returns a state, `step` advances it in place, and it can
be cloned, moved, split and joined along the batch (the basis of prefix caching and batched decoding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# State tensors whose arithmetic must stay in float32 (float64 when the whole state is float64).
FP32_KEYS = frozenset({"ssm"})


@dataclass
class InferenceState:
    layers: list[dict[str, torch.Tensor]]
    seqlen: torch.Tensor  # (b,) int64

    @property
    def batch_size(self) -> int:
        return int(self.seqlen.shape[0])

    @property
    def device(self) -> torch.device:
        return self.seqlen.device

    def clone(self) -> InferenceState:
        return InferenceState([{k: v.clone() for k, v in layer.items()} for layer in self.layers], self.seqlen.clone())

    def to(self, device=None, dtype=None) -> InferenceState:
        """Move to `device`; cast floating tensors to `dtype` (FP32_KEYS stay float32 unless dtype is float64)."""

        def convert(key, t):
            if dtype is not None and t.is_floating_point():
                target = dtype if key not in FP32_KEYS or dtype == torch.float64 else torch.float32
                t = t.to(dtype=target)
            return t.to(device) if device is not None else t

        layers = [{k: convert(k, v) for k, v in layer.items()} for layer in self.layers]
        return InferenceState(layers, self.seqlen.to(device) if device is not None else self.seqlen)

    def select(self, rows) -> InferenceState:
        """The state of a subset of batch rows (`rows`: list, slice or index tensor)."""
        if isinstance(rows, list):
            rows = torch.tensor(rows, dtype=torch.long, device=self.device)
        return InferenceState([{k: v[rows] for k, v in layer.items()} for layer in self.layers], self.seqlen[rows])

    @classmethod
    def concat(cls, states: list[InferenceState]) -> InferenceState:
        """Join states along the batch. Tensors that differ in a non-batch size (e.g. KV caches of
        different capacity) are zero-padded at the end of that dimension to the largest."""
        if not states:
            raise ValueError("InferenceState.concat needs at least one state")
        n_layers = {len(s.layers) for s in states}
        if len(n_layers) != 1:
            raise ValueError(f"InferenceState.concat: states have different numbers of layers {sorted(n_layers)}")
        layers = []
        for i in range(len(states[0].layers)):
            keys = set(states[0].layers[i])
            if any(set(s.layers[i]) != keys for s in states):
                raise ValueError(f"InferenceState.concat: layer {i} holds different tensors across states")
            layers.append({k: _cat_padded([s.layers[i][k] for s in states]) for k in states[0].layers[i]})
        return cls(layers, torch.cat([s.seqlen for s in states]))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.values())


def _cat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for t in tensors:
        pad = []
        for d in reversed(range(1, t.dim())):
            pad += [0, shape[d - 1] - t.shape[d]]
        padded.append(F.pad(t, pad) if any(pad) else t)
    return torch.cat(padded)
