"""TopK sparse autoencoder: model, sizing rule, metrics and framework-free training pieces."""
from saerec.sae.model import SAEConfig, SAEOutput, TopKSAE, data_centre, geometric_median
from saerec.sae.sizing import num_latents
from saerec.sae.training import (
    TrainState,
    build_optimizer,
    checkpoint_state,
    default_lr,
    evaluate,
    load_checkpoint_state,
    train_epoch,
)

__all__ = [
    "SAEConfig",
    "SAEOutput",
    "TopKSAE",
    "TrainState",
    "build_optimizer",
    "checkpoint_state",
    "data_centre",
    "default_lr",
    "evaluate",
    "geometric_median",
    "load_checkpoint_state",
    "num_latents",
    "train_epoch",
]
