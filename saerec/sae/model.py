"""TopK sparse autoencoder over text embeddings (METHOD.md eq. 1).

Two variants share one class because they differ only in where the decoder comes from:

* ``tied=True`` is the paper's: the decoder is the encoder's transpose, so latent i both reads
  and writes along row i of ``W_enc``.
* ``tied=False`` is the stronger recipe of the public SAE trainers: a separate decoder,
  initialised as the encoder's transpose, whose rows are kept at unit norm (with the gradient
  component parallel to each row removed before the optimizer step, so Adam does not waste its
  step on a direction the renormalisation undoes), plus an AuxK loss that lets dead latents
  learn from the residual the live ones leave.

The model knows nothing of Ray or storage. Its constructor arguments are one ``SAEConfig``, and
it owns its persistence (as EleutherAI's sparsify does): ``to_bytes`` gives a config JSON and a
safetensors state dict, ``from_bytes`` rebuilds the trained model from them; storage only moves
the bytes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

from saerec.sae.metrics import fvu

PRE_BIAS_METHODS = ("geometric_median", "mean")
DEFAULT_AUX_COEF = 1.0 / 32.0


@dataclass(frozen=True)
class SAEConfig:
    """The constructor arguments of a ``TopKSAE``, checked on creation.

    ``aux_k`` None turns AuxK off; ``tied`` picks the paper's decoder (the encoder's transpose).
    """

    d_in: int
    n_latents: int
    k: int
    tied: bool
    aux_k: int | None = None
    aux_coef: float = DEFAULT_AUX_COEF

    def __post_init__(self) -> None:
        if self.d_in <= 0:
            raise ValueError(f"d_in must be positive, got {self.d_in}")
        if not 0 < self.k <= self.n_latents:
            raise ValueError(f"k must be in [1, n_latents={self.n_latents}], got {self.k}")
        if self.aux_k is not None and not 0 < self.aux_k <= self.n_latents:
            raise ValueError(f"aux_k must be None or in [1, n_latents={self.n_latents}], got {self.aux_k}")
        if self.aux_coef < 0:
            raise ValueError(f"aux_coef must be >= 0, got {self.aux_coef}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "SAEConfig":
        """The config from ``to_dict()``; a missing or unknown key is a ValueError naming it."""
        if not isinstance(config, dict):
            raise ValueError(f"SAE config must be a JSON object, got {type(config).__name__}")
        known = {f.name for f in fields(cls)}
        required = ("d_in", "n_latents", "k", "tied")
        missing = [key for key in required if key not in config]
        if missing:
            raise ValueError(f"SAE config is missing key(s) {missing}; got keys {sorted(config)}")
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"SAE config has unknown key(s) {sorted(unknown)}")
        return cls(**config)


@dataclass
class SAEOutput:
    """What one forward pass yields; ``loss`` is what the optimizer minimises."""

    reconstruction: Tensor
    top_values: Tensor
    top_indices: Tensor
    loss: Tensor
    recon_loss: Tensor
    aux_loss: Tensor
    fvu: Tensor


class TopKSAE(nn.Module):
    """z = TopK(ReLU(W_enc (x - b_pre) + b_enc)),  x_hat = W_dec z + b_pre.

    The ReLU keeps codes non-negative so a latent reads as "how much of this direction is
    present"; a row may therefore carry fewer than k non-zeros when fewer than k pre-activations
    are positive, never more.
    """

    def __init__(self, config: SAEConfig) -> None:
        super().__init__()
        self.config = config
        self.d_in, self.n_latents, self.k = config.d_in, config.n_latents, config.k
        self.tied, self.aux_k, self.aux_coef = config.tied, config.aux_k, config.aux_coef

        directions = F.normalize(torch.randn(config.n_latents, config.d_in), dim=1)
        self.W_enc = nn.Parameter(directions)
        self.b_enc = nn.Parameter(torch.zeros(config.n_latents))
        self.b_pre = nn.Parameter(torch.zeros(config.d_in))
        self.W_dec = None if config.tied else nn.Parameter(directions.clone())

    # -- persistence ----------------------------------------------------------------------------

    def to_bytes(self) -> tuple[bytes, bytes]:
        """(config JSON, safetensors state dict): everything ``from_bytes`` needs."""
        config = json.dumps(self.config.to_dict(), indent=2, sort_keys=True).encode()
        state = {name: t.detach().cpu().contiguous() for name, t in self.state_dict().items()}
        return config, save_tensors(state)

    @staticmethod
    def config_from_bytes(config: bytes) -> SAEConfig:
        """The config part of ``to_bytes``; a damaged or foreign one is a ValueError saying why."""
        try:
            parsed = json.loads(config)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"SAE config is not valid JSON: {exc}") from exc
        try:
            return SAEConfig.from_dict(parsed)
        except TypeError as exc:
            raise ValueError(f"SAE config has a value of the wrong type: {exc}") from exc

    @classmethod
    def from_bytes(cls, config: SAEConfig | bytes, weights: bytes) -> "TopKSAE":
        """The trained model, in eval mode, from ``to_bytes`` output; weights that do not fit the
        config (or are no safetensors file) are a ValueError saying why."""
        if isinstance(config, bytes):
            config = cls.config_from_bytes(config)
        model = cls(config)
        try:
            state = load_tensors(weights)
        except SafetensorError as exc:
            raise ValueError(f"SAE weights are not a safetensors file: {exc}") from exc
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"SAE weights do not fit the config {config.to_dict()}: {exc}") from exc
        return model.eval()

    @torch.no_grad()
    def set_pre_bias(self, centre: Tensor) -> None:
        """Set b_pre to the data's centre (``data_centre``, computed once on a driver for many workers)."""
        if centre.shape != (self.d_in,):
            raise ValueError(f"pre-bias must have shape ({self.d_in},), got {tuple(centre.shape)}")
        self.b_pre.copy_(centre.to(self.b_pre.device, self.b_pre.dtype))

    # -- the forward pass --------------------------------------------------------------------

    def decoder_weight(self) -> Tensor:
        """Decoder rows, one per latent (F x D): W_enc itself when tied."""
        return self.W_enc if self.W_dec is None else self.W_dec

    def pre_activations(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return F.relu(F.linear(x - self.b_pre, self.W_enc, self.b_enc))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Sparse codes as (top_values, top_indices), each (batch, k)."""
        return self.pre_activations(x).topk(self.k, dim=-1, sorted=False)

    def decode(self, top_values: Tensor, top_indices: Tensor) -> Tensor:
        """Reconstruct from sparse codes; touches only k decoder rows per input."""
        return self._decode_no_bias(top_values, top_indices) + self.b_pre

    def _decode_no_bias(self, values: Tensor, indices: Tensor) -> Tensor:
        return F.embedding_bag(
            indices, self.decoder_weight(), per_sample_weights=values.to(self.b_pre.dtype), mode="sum"
        )

    def forward(self, x: Tensor, dead_mask: Tensor | None = None, n_dead: int | None = None) -> SAEOutput:
        """Reconstruct ``x``; with ``dead_mask`` (bool, F) and ``aux_k`` set, add the AuxK term.

        ``n_dead`` is the caller's (possibly slightly stale) count of dead latents: it caps the
        AuxK width at min(aux_k, n_dead), and 0 skips the term, without the device sync that
        counting the mask here would cost. Losses are FVU-normalised (squared error over the
        batch's total variance) so one learning rate works whatever the embedding scale.
        """
        pre = self.pre_activations(x)
        top_values, top_indices = pre.topk(self.k, dim=-1, sorted=False)
        reconstruction = self._decode_no_bias(top_values, top_indices) + self.b_pre
        variance = (x - x.mean(0)).pow(2).sum().clamp_min(torch.finfo(x.dtype).tiny)
        recon_loss = (reconstruction - x).pow(2).sum() / variance
        aux_loss = self._aux_loss(x, pre, reconstruction, variance, dead_mask, n_dead)
        return SAEOutput(
            reconstruction=reconstruction,
            top_values=top_values,
            top_indices=top_indices,
            loss=recon_loss + self.aux_coef * aux_loss,
            recon_loss=recon_loss,
            aux_loss=aux_loss,
            fvu=fvu(x.detach(), reconstruction.detach()),
        )

    def _aux_loss(
        self,
        x: Tensor,
        pre: Tensor,
        reconstruction: Tensor,
        variance: Tensor,
        dead_mask: Tensor | None,
        n_dead: int | None,
    ) -> Tensor:
        """AuxK: the top dead latents try to reconstruct the residual the live latents leave.

        Scaled by min(n_dead / aux_k, 1) (counted on the device) so a handful of dead latents
        does not get the full weight of the term. Slots beyond the number of dead latents
        select -inf, which the clamp turns into zero weights.
        """
        zero = pre.new_zeros(())
        if self.aux_k is None or dead_mask is None:
            return zero
        if dead_mask.shape != (self.n_latents,) or dead_mask.dtype != torch.bool:
            raise ValueError(
                f"dead_mask must be a bool tensor of shape ({self.n_latents},), "
                f"got {dead_mask.dtype} {tuple(dead_mask.shape)}"
            )
        dead_mask = dead_mask.to(pre.device)
        width = min(self.aux_k, int(dead_mask.sum()) if n_dead is None else n_dead)
        if width <= 0:
            return zero
        masked = pre.masked_fill(~dead_mask, float("-inf"))
        aux_values, aux_indices = masked.topk(width, dim=-1, sorted=False)
        aux_reconstruction = self._decode_no_bias(aux_values.clamp_min(0.0), aux_indices)
        residual = (x - reconstruction).detach()
        scale = (dead_mask.sum() / self.aux_k).clamp(max=1.0)
        return scale * (aux_reconstruction - residual).pow(2).sum() / variance

    # -- the untied variant's constraints ----------------------------------------------------

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Drop the gradient component along each decoder row (untied only; call before step)."""
        if self.W_dec is None or self.W_dec.grad is None:
            return
        grad = self.W_dec.grad
        grad -= (grad * self.W_dec).sum(dim=1, keepdim=True) * self.W_dec

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Put every decoder row back on the unit sphere (untied only; call after step)."""
        if self.W_dec is None:
            return
        self.W_dec.copy_(F.normalize(self.W_dec, dim=1))

    # -- what the rest of the system reads -----------------------------------------------------

    def intent_vectors(self) -> Tensor:
        """Intent vector of latent i = row i of W_enc (F x D), detached."""
        return self.W_enc.detach()

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"SAE input must be (batch, {self.d_in}), got {tuple(x.shape)}")


@torch.no_grad()
def data_centre(sample: Tensor, method: str = "geometric_median") -> Tensor:
    """Where to centre the model before training (its b_pre), from a sample of the inputs.

    The geometric median is robust to the outlying embeddings every corpus has (empty or
    boilerplate texts), which the mean is not; both are offered because the mean is exact
    and free for huge samples.
    """
    if method not in PRE_BIAS_METHODS:
        raise ValueError(f"pre-bias method must be one of {PRE_BIAS_METHODS}, got {method!r}")
    if sample.dim() != 2 or sample.shape[0] == 0:
        raise ValueError(f"the pre-bias sample must be a non-empty (n, d) tensor, got {tuple(sample.shape)}")
    sample = sample.float()
    return geometric_median(sample) if method == "geometric_median" else sample.mean(0)


@torch.no_grad()
def geometric_median(points: Tensor, iterations: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances."""
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(f"geometric_median needs a non-empty (n, d) tensor, got {tuple(points.shape)}")
    points = points.double()
    median = points.mean(0)
    for _ in range(iterations):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(1e-12)
        updated = (weights[:, None] * points).sum(0) / weights.sum()
        shift = (updated - median).norm()
        median = updated
        if shift <= tol * median.norm().clamp_min(1.0):
            break
    return median.float()
