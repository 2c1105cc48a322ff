"""Sequential recommenders (SASRec, SAERec, KMeans-Intent), training and full-ranking evaluation.

Plain PyTorch: nothing here knows about Ray or storage.
"""
from saerec.rec.batching import LeaveOneOut, RankingSet, leave_one_out, training_examples
from saerec.rec.metrics import evaluate, hr_ndcg, target_ranks
from saerec.rec.saerec_model import IntentConfig, SAERec, steering
from saerec.rec.sasrec import EncoderConfig, SASRec
from saerec.rec.training import FitConfig, FitResult, fit

__all__ = [
    "EncoderConfig", "FitConfig", "FitResult", "IntentConfig", "LeaveOneOut", "RankingSet",
    "SAERec", "SASRec", "evaluate", "fit", "hr_ndcg", "leave_one_out",
    "steering", "target_ranks", "training_examples",
]
