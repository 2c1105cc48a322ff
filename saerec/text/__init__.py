"""Text encoders and the word vocabulary; pure library code, no Ray and no storage."""

from saerec.text.encoders import EncodeStats, PooledEncoder, TextEncoder, load_encoder, masked_mean
from saerec.text.vocabulary import WordCounter, tokenize_words

__all__ = [
    "EncodeStats",
    "PooledEncoder",
    "TextEncoder",
    "WordCounter",
    "load_encoder",
    "masked_mean",
    "tokenize_words",
]
