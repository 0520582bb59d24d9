"""The design document's multi-head self-attention over PARE's part heatmaps.

Every pixel of the (J, H, W) part-logit maps is a token whose features are its J part scores.
Queries and keys are learned maps J -> D_k (split over the heads); the values are the heatmaps
themselves (optionally a learned per-head projection), so each head returns corrected heatmaps
``A @ H_f``. The heads are averaged, and a per-part gate g blends ``H + g * (A H_f - H)``:
g = 0 is vanilla PARE exactly, g = 1 the document's corrected maps (section 2.3,
``H~ = A H``). The gate starts at ``gate_init`` (0 by default) and is learned unless
``learn_gate`` is false.

Attention goes through ``scaled_dot_product_attention`` so the (HW x HW) matrix is never stored
(at 56 x 56 it is 9.8 M entries per head and image). PyTorch's CPU flash kernel needs the value
width to equal the query width; the narrower of the two is zero-padded (zeros add nothing to
``q . k`` and are sliced off the output) and the scale is set from the true key width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with the full (N, N) matrix stored: the reference."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, h, N, N)
    return scores.softmax(-1) @ v


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same through SDPA's memory-efficient kernels, for any value width."""
    head_dim, value_dim = q.shape[-1], v.shape[-1]
    width = max(head_dim, value_dim)
    # Contiguous last dimensions too: a strided one (an expanded or transposed view) also sends
    # SDPA to its math path, which stores the (N, N) matrix.
    q = F.pad(q, (0, width - head_dim)).contiguous()
    k = F.pad(k, (0, width - head_dim)).contiguous()
    v = F.pad(v, (0, width - value_dim)).contiguous()
    out = F.scaled_dot_product_attention(q, k, v, scale=head_dim**-0.5)
    return out[..., :value_dim]


class PartSelfAttention(nn.Module):
    """(B, J, H, W) part logits -> (B, J, H, W) corrected part logits.

    ``resolution`` r is the side of the grid attention runs on (0: the maps' own H x W). The
    maps are average-pooled to r x r and the correction is upsampled bilinearly back, so r must
    not exceed H (pooling up would only repeat tokens) and should divide it: then each token
    is an equal square of pixels centred where the bilinear upsampling puts it.
    (pare.config checks both against the crop size.)
    """

    def __init__(
        self,
        num_parts: int = 24,
        dim: int = 64,
        heads: int = 4,
        resolution: int = 28,
        value_proj: bool = False,
        gate_init: float = 0.0,
        learn_gate: bool = True,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must split evenly over heads={heads}")
        self.heads, self.resolution = heads, resolution
        self.query = nn.Linear(num_parts, dim, bias=False)  # W_q
        self.key = nn.Linear(num_parts, dim, bias=False)  # W_k
        self.value = nn.Linear(num_parts, heads * num_parts, bias=False) if value_proj else None
        # A parameter either way, so the weight files have the same keys.
        self.gate = nn.Parameter(torch.full((num_parts,), float(gate_init)), learn_gate)
        self.attend = fused_attention

    def mix(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, J) tokens -> (B, N, J) attention output, heads averaged. Has no notion of
        position: permuting the N tokens permutes the output the same way."""
        b, n, j = tokens.shape
        q = self.query(tokens).view(b, n, self.heads, -1).transpose(1, 2)  # (B, h, N, D_k/h)
        k = self.key(tokens).view(b, n, self.heads, -1).transpose(1, 2)  # (B, h, N, D_k/h)
        if self.value is None:
            v = tokens[:, None].expand(b, self.heads, n, j)  # (B, h, N, J), the heatmaps
        else:
            v = self.value(tokens).view(b, n, self.heads, j).transpose(1, 2)  # (B, h, N, J)
        return self.attend(q, k, v).mean(1)  # (B, N, J)

    def grid(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """(B, J, H, W) maps -> (B, J, r, r) on the attention grid (the maps themselves at 0)."""
        if self.resolution and self.resolution != heatmaps.shape[-2]:
            return F.adaptive_avg_pool2d(heatmaps, self.resolution)
        return heatmaps

    def forward(self, heatmaps: torch.Tensor) -> torch.Tensor:
        _, j, h, w = heatmaps.shape
        grid = self.grid(heatmaps)  # (B, J, r, r)
        tokens = grid.flatten(2).transpose(1, 2)  # (B, r*r, J)
        delta = (self.mix(tokens) - tokens).transpose(1, 2).reshape(grid.shape)  # (B, J, r, r)
        if delta.shape[-2:] != (h, w):
            delta = F.interpolate(delta, size=(h, w), mode="bilinear", align_corners=False)
        # Back in the maps' dtype: under autocast the fp32 gate would otherwise promote them.
        return (heatmaps + self.gate.view(1, j, 1, 1) * delta).to(heatmaps.dtype)  # (B, J, H, W)


@torch.no_grad()
def attention_statistics(
    module: PartSelfAttention, heatmaps: torch.Tensor, max_queries: int = 256
) -> dict[str, torch.Tensor]:
    """What the part self-attention does to a batch, for logging: ``gate_abs_mean`` (mean |g|),
    ``gate`` (J,) per part, ``entropy`` (nats, mean over heads, images and up to
    ``max_queries`` evenly spaced query tokens; log N for uniform attention over N tokens),
    ``entropy_max`` (log N), and ``relative_change`` ||H~ - H|| / ||H|| over the batch.
    ``heatmaps`` are the part logits before the attention (B, J, H, W)."""
    tokens = module.grid(heatmaps.float()).flatten(2).transpose(1, 2)  # (B, N, J)
    b, n, _ = tokens.shape
    queries = tokens[:, torch.linspace(0, n - 1, min(n, max_queries)).long()]  # (B, n_q, J)
    q = module.query(queries).view(b, len(queries[0]), module.heads, -1).transpose(1, 2)
    k = module.key(tokens).view(b, n, module.heads, -1).transpose(1, 2)  # (B, h, N, d)
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, h, n_q, N)
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()
    corrected = module(heatmaps.float())
    change = (corrected - heatmaps.float()).norm() / heatmaps.float().norm().clamp_min(1e-12)
    gate = module.gate.detach().float()
    return {
        "gate_abs_mean": gate.abs().mean(),
        "gate": gate,
        "entropy": entropy,
        "entropy_max": torch.tensor(float(n)).log(),
        "relative_change": change,
    }
