"""Arrow schemas of every table stages exchange, declared once so writers and readers agree."""
from __future__ import annotations

import pyarrow as pa

# prepare
INTERACTIONS = pa.schema([
    ("user", pa.int32()),
    ("item", pa.int32()),
    ("position", pa.int32()),
    ("timestamp", pa.int64()),
    ("split", pa.string()),
])
USERS = pa.schema([("user", pa.int32()), ("raw_id", pa.string())])
ITEMS = pa.schema([("item", pa.int32()), ("raw_id", pa.string()), ("text", pa.string())])
CORPUS = pa.schema([
    ("text_id", pa.int64()),
    ("kind", pa.string()),
    ("user", pa.int32()),
    ("item", pa.int32()),
    ("text", pa.string()),
])

SPLITS = ("train", "valid", "test")
TEXT_KINDS = ("review", "item")


def embedding_schema(dim: int) -> pa.Schema:
    """Text embeddings: one fixed-size float32 vector per corpus text."""
    return pa.schema([("text_id", pa.int64()), ("vector", pa.list_(pa.float32(), dim))])


def embedding_table_schema(dim: int) -> pa.Schema:
    """What the embed stage writes: ``embedding_schema`` plus, per text, the tokens the encoder saw
    (0 = an empty text, whose vector is all zeros) and whether the text was cut at embed.max_length."""
    return pa.schema([*embedding_schema(dim), ("tokens", pa.int32()), ("truncated", pa.bool_())])


# evaluate: one row per test user; intents are SAE latent ids (k-means cluster ids for KMeans-Intent)
RECOMMENDATIONS = pa.schema([
    ("user", pa.int32()),
    ("target", pa.int32()),
    ("items", pa.list_(pa.int32())),
    ("hit", pa.bool_()),
    ("personal_intents", pa.list_(pa.int64())),
    ("personal_summaries", pa.list_(pa.string())),
    ("public_intents", pa.list_(pa.int64())),
    ("public_summaries", pa.list_(pa.string())),
    ("branch_weights", pa.list_(pa.float32())),
    # grounded models: per recommended item its strongest intents by contribution a_ji (h . E_i), those
    # contributions, and the share |intent part| / (|id part| + |intent part|) of its score
    ("item_intents", pa.list_(pa.list_(pa.int64()))),
    ("item_intent_summaries", pa.list_(pa.list_(pa.string()))),
    ("item_contributions", pa.list_(pa.list_(pa.float32()))),
    ("item_intent_share", pa.list_(pa.float32())),
])


# evaluate: one row per run and user with the full-ranking rank (0-based) of the held-out item on valid
# and on test, and the per-user NDCG@20 / HR@20 the paired comparisons read
PER_USER = pa.schema([
    ("variant", pa.string()),
    ("seed", pa.int64()),
    ("user", pa.int32()),
    ("valid_rank", pa.int64()),
    ("test_rank", pa.int64()),
    ("valid_ndcg@20", pa.float64()),
    ("valid_hr@20", pa.float64()),
    ("test_ndcg@20", pa.float64()),
    ("test_hr@20", pa.float64()),
])

# train_sae
LATENT_FREQUENCY = pa.schema([("latent", pa.int32()), ("count", pa.int64()), ("frequency", pa.float64())])


def sweep_results_schema(ks: list[int] | tuple[int, ...]) -> pa.Schema:
    """The sweep stage's per-trial table: the trial's settings, its selection run, and its metrics."""
    metrics = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg")]
    return pa.schema([
        ("trial_id", pa.string()), ("variant", pa.string()), ("k", pa.int32()), ("review_drop", pa.float64()),
        ("judge", pa.string()), ("seed", pa.int64()), ("studies", pa.list_(pa.string())),
        ("n_intents", pa.int64()), ("best_epoch", pa.int32()), ("epochs", pa.int32()),
        ("resumed_from_epoch", pa.int32()), ("train_seconds", pa.float64()),
        *[(f"valid_{m}", pa.float64()) for m in metrics],
        *[(f"test_{m}", pa.float64()) for m in metrics],
    ])


# explain: the SAE code of each non-empty corpus text, computed once and read by explain's summaries
# and by profile: exactly the SAE's k (latent id, value) pairs per row, in no order; a value of 0 means
# fewer than k latents fired on that text
SAE_CODES = pa.schema([
    ("text_id", pa.int64()),
    ("latents", pa.list_(pa.int32())),
    ("values", pa.list_(pa.float32())),
])

# explain: one row per SAE latent; the random texts are the detection score's negatives
EXPLAINED_LATENTS = pa.schema([
    ("latent", pa.int32()),
    ("words", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float32())),
    ("frequency", pa.float64()),
    ("top_text_ids", pa.list_(pa.int64())),
    ("top_texts", pa.list_(pa.string())),
    ("top_activations", pa.list_(pa.float32())),
    ("random_text_ids", pa.list_(pa.int64())),
    ("random_texts", pa.list_(pa.string())),
])

# profile: per intent set ("judged": the latents the judge kept; "all": every SAE latent) and item, the
# item's strongest intents as SAE latent ids (not positions in the set), strongest first, and their
# pooled weights
ITEM_CATEGORIES = pa.schema([("item", pa.int32()), ("categories", pa.list_(pa.string()))])
INTENT_PURITY = pa.schema([("group", pa.string()), ("id", pa.int32()), ("purity", pa.float32()),
                           ("category", pa.string())])
ITEM_PROFILES = pa.schema([
    ("set", pa.string()),
    ("item", pa.int32()),
    ("intents", pa.list_(pa.int32())),
    ("weights", pa.list_(pa.float32())),
])

# profile: each item with text, the mean embedding of its texts (the dense-text control's input)
ITEM_TEXT_VECTORS = pa.schema([
    ("item", pa.int32()),
    ("vector", pa.list_(pa.float32())),
])

# judge: one row per SAE latent; summary/verdict are null for latents beyond judge.max_latents,
# detection (held-out balanced accuracy) is null for latents that were not kept; detection_words
# is the bare-words baseline's, by the same scorer on the same texts
JUDGED_FEATURES = pa.schema([
    ("latent", pa.int32()),
    ("words", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float32())),
    ("frequency", pa.float64()),
    ("summary", pa.string()),
    ("verdict", pa.string()),
    ("kept", pa.bool_()),
    ("detection", pa.float64()),
    ("detection_words", pa.float64()),  # the latent's first words as its "summary"
    ("prescreen_score", pa.float64()),  # coherence z of the words (null: not computed)
    ("screened_out", pa.bool_()),  # below judge.prescreen: no summary, verdict No, never judged further
])
