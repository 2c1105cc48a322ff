"""BSARec (Shin et al., AAAI 2024) blocks, with the frequency filter made causal.

BSARec adds an inductive bias to self-attention. Each block reads the sequence twice:
- through causal self-attention;
- through a fixed frequency filter. The filter keeps the lowest ``c // 2 + 1`` DFT frequencies of
  a ``max_len`` window as the *low* part and rescales the rest, ``x - low``, by a learned
  per-channel ``beta``: ``filter(x) = low(x) + beta * (x - low(x))``.
The two views are mixed with a fixed ``alpha``:

    h = alpha * LN(x + filter(x)) + (1 - alpha) * LN(x + attention(x))

A GELU feed-forward layer (4d wide) follows, every sub-layer post-LN, as in the paper's code.

Causality. The paper filters the whole window at once, so position t reads items after t. Its
loss sits only at the last position of each prefix, so that never leaks there. Here every position
carries a loss (causal mask, target t+1), so a whole-window filter would let position t see its
answer. The filter is therefore applied per position: position t gets the paper's filter of the
``max_len`` window that *ends at t*, zero before the first item, read at that window's last
position. This is a causal convolution. Its taps are the last row of the window's low-pass
projector, built once from ``c`` and ``max_len``: a lower-triangular Toeplitz matrix.
- Cost: one (w, w) x (w, d) product per block, the same order as attention, and no FFT per step.
- At the last position of a full window it equals the paper's filter exactly.
- Every position and every training recipe (per-position or prefix examples) is one computation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def lowpass_kernel(max_len: int, c: int) -> Tensor:
    """(max_len, max_len) lower-triangular K. Row t is the low part, at its last position, of the
    ``max_len`` window ending at t (zero before position 0), so ``low = K[:w, :w] @ x``. A cut-off
    ``c >= max_len`` keeps every frequency: K is the identity."""
    if c < 1:
        raise ValueError(f"the frequency cut-off c must be >= 1, got {c}")
    spectrum = torch.fft.rfft(torch.eye(max_len, dtype=torch.float64), dim=0, norm="ortho")
    spectrum[c // 2 + 1:] = 0
    projector = torch.fft.irfft(spectrum, n=max_len, dim=0, norm="ortho")  # column j: low part of unit vector j
    taps = projector[-1].flip(0)  # taps[lag]: weight of the item `lag` steps back
    lag = torch.arange(max_len).unsqueeze(1) - torch.arange(max_len).unsqueeze(0)
    return torch.where(lag >= 0, taps[lag.clamp(min=0)], 0.0).float()


class FrequencyFilter(nn.Module):
    """LN(x + dropout(low + beta * (x - low))), with ``low`` the causal low-pass part (module docstring).

    ``beta`` = ``beta_root ** 2`` per channel, so it stays non-negative; it starts as the square of a
    standard normal (mean 1), as in the paper's code.
    """

    def __init__(self, d: int, max_len: int, c: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("kernel", lowpass_kernel(max_len, c), persistent=False)
        self.beta_root = nn.Parameter(torch.randn(d))
        self.drop = nn.Dropout(dropout)
        self.ln = nn.LayerNorm(d)

    def forward(self, x: Tensor) -> Tensor:
        width = x.shape[1]
        low = self.kernel[:width, :width] @ x
        return self.ln(x + self.drop(low + self.beta_root.square() * (x - low)))


class BSARecBlock(nn.Module):
    """One BSARec block: alpha * filter branch + (1 - alpha) * causal attention branch, then the
    feed-forward layer; every sub-layer is residual and post-LN."""

    def __init__(self, d: int, heads: int, dropout: float, max_len: int, alpha: float, c: int) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.heads, self.alpha, self.attn_dropout = heads, alpha, dropout
        self.filter = FrequencyFilter(d, max_len, c, dropout)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.ln_attn = nn.LayerNorm(d)
        self.ffn_in = nn.Linear(d, 4 * d)
        self.ffn_out = nn.Linear(4 * d, d)
        self.ln_ffn = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def attention(self, x: Tensor) -> Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_dropout if self.training else 0.0, is_causal=True)
        return self.ln_attn(x + self.drop(self.attn_out(att.transpose(1, 2).reshape(b, length, d))))

    def forward(self, x: Tensor) -> Tensor:
        h = self.alpha * self.filter(x) + (1.0 - self.alpha) * self.attention(x)
        return self.ln_ffn(h + self.drop(self.ffn_out(F.gelu(self.ffn_in(h)))))
