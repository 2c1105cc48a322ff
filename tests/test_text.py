"""Text encoders (pooling, layers, edge cases) and vocabulary counting, on tiny random models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, T5Config, T5EncoderModel, T5ForConditionalGeneration

from saerec.text.encoders import load_encoder, masked_mean
from saerec.text.vocabulary import WordCounter, tokenize_words
from saerec.text.encoders import resolve_dtype, resolve_model_path

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path("minilm"))


def save_tiny_bert(folder, tokenizer) -> str:
    """A 2-layer, 16-wide random BERT with the MiniLM tokenizer: real code paths, millisecond forwards."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, tokenizer) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tokenizer)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory, tokenizer) -> str:
    """A whole random encoder-decoder, saved the way a P5 checkpoint is, loaded back encoder-only."""
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=tokenizer.vocab_size,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=3,
        num_decoder_layers=1,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny_t5")
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_masked_mean_ignores_masked_positions():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.allclose(masked_mean(hidden, mask), torch.tensor([[2.0, 3.0], [7.0, 8.0]]))


def test_pooling_equals_hand_computation_per_text(tiny_bert, tokenizer):
    encoder = load_encoder(tiny_bert, kind="bert", max_length=64, device="cpu", batch_size=8)
    reference = BertModel.from_pretrained(tiny_bert).eval()
    texts = ["red lipstick", "a moisturising face cream for dry skin in winter", "nail polish remover"]
    vectors = encoder.encode(texts)
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    for text, vector in zip(texts, vectors):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            expected = reference(input_ids=ids).last_hidden_state[0].mean(dim=0)
        np.testing.assert_allclose(vector, expected.numpy(), atol=1e-5)


def test_padding_does_not_change_a_vector(tiny_bert):
    encoder = load_encoder(tiny_bert, kind="bert", max_length=64, device="cpu", batch_size=8)
    alone = encoder.encode(["shampoo"])[0]
    padded = encoder.encode(["shampoo", "a very long text about hair care " * 5])[0]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_length_sorting_cuts_padding_and_keeps_order(tiny_bert):
    encoder = load_encoder(tiny_bert, kind="bert", max_length=64, device="cpu", batch_size=2)
    short, long_ = "soap", " ".join(["soap"] * 30)
    texts = [short, long_, short, long_]
    vectors = encoder.encode(texts)
    # Sorted micro-batches are (short, short) padded to 3 tokens and (long, long) to 32 tokens.
    assert encoder.stats.padded_tokens == 2 * 3 + 2 * 32
    assert encoder.stats.tokens == 2 * 3 + 2 * 32
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    np.testing.assert_allclose(vectors[1], vectors[3], atol=1e-6)
    assert not np.allclose(vectors[0], vectors[1])


def test_edge_case_texts_follow_the_documented_policy(tiny_bert, tokenizer):
    max_length = 16
    encoder = load_encoder(tiny_bert, kind="bert", max_length=max_length, device="cpu")
    words = [f"w{i}" for i in range(10_000)]
    texts = ["", "  \n\t ", "😀🎉💄", " ".join(words), "ok"]
    encoded = encoder.encode_detailed(texts)
    vectors = encoded.vectors
    assert vectors.shape == (5, 16)
    assert np.all(vectors[0] == 0) and np.all(vectors[1] == 0)
    assert encoded.tokens[:2].tolist() == [0, 0] and encoded.tokens[3] == max_length
    assert encoded.truncated.tolist() == [False, False, False, True, False]
    assert np.all(np.isfinite(vectors)) and np.linalg.norm(vectors[2]) > 0
    assert (encoder.stats.texts, encoder.stats.empty, encoder.stats.truncated) == (5, 2, 1)
    kept_ids = tokenizer(" ".join(words), truncation=True, max_length=max_length)["input_ids"]
    prefix = tokenizer.decode(kept_ids, skip_special_tokens=True)
    np.testing.assert_allclose(vectors[3], encoder.encode([prefix])[0], atol=1e-5)


def test_non_string_text_is_rejected_by_index(tiny_bert):
    encoder = load_encoder(tiny_bert, kind="bert", max_length=16, device="cpu")
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        encoder.encode(["fine", None])


def test_bf16_pools_to_float32_close_to_float32(tiny_bert):
    texts = ["body lotion", "hair dryer with diffuser"]
    full = load_encoder(tiny_bert, kind="bert", max_length=32, device="cpu", dtype="float32").encode(texts)
    half = load_encoder(tiny_bert, kind="bert", max_length=32, device="cpu", dtype="bfloat16").encode(texts)
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, atol=0.1)


def test_t5_checkpoint_loads_through_the_t5_path(tiny_t5):
    encoder = load_encoder(tiny_t5, kind="auto", max_length=32, device="cpu")
    assert isinstance(encoder.model, T5EncoderModel)
    assert encoder.dim == 16
    assert encoder.encode(["lip balm"]).shape == (1, 16)


def test_t5_layer_selection_picks_that_layers_hidden_states(tiny_t5, tokenizer):
    reference = T5EncoderModel.from_pretrained(tiny_t5).eval()
    block_outputs: list[torch.Tensor] = []
    for block in reference.encoder.block:
        block.register_forward_hook(lambda module, args, output: block_outputs.append(output[0]))
    text = "sunscreen for sensitive skin"
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        final = reference(input_ids=ids).last_hidden_state
        embedded = reference.encoder.embed_tokens(ids)
    expected = {0: embedded, 1: block_outputs[0], 2: block_outputs[1], 3: final, -1: final, -2: block_outputs[1]}
    pooled = {}
    for layer, hidden in expected.items():
        encoder = load_encoder(tiny_t5, kind="t5", layer=layer, max_length=32, device="cpu")
        pooled[layer] = encoder.encode([text])[0]
        np.testing.assert_allclose(pooled[layer], hidden[0].mean(dim=0).numpy(), atol=1e-5)
    assert len({tuple(np.round(pooled[layer], 4)) for layer in (0, 1, 2, 3)}) == 4
    assert len(load_encoder(tiny_t5, kind="t5", layer=1, device="cpu").model.encoder.block) == 2


def test_bad_settings_name_the_value(tiny_bert, tiny_t5):
    with pytest.raises(ValueError, match="layer=4"):
        load_encoder(tiny_t5, layer=4, device="cpu")
    with pytest.raises(ValueError, match="kind='gpt'"):
        load_encoder(tiny_bert, kind="gpt", device="cpu")
    with pytest.raises(ValueError, match="kind='t5'"):
        load_encoder(tiny_bert, kind="t5", device="cpu")
    with pytest.raises(ValueError, match="encoder-decoder"):
        load_encoder(tiny_t5, kind="bert", device="cpu")
    with pytest.raises(ValueError, match="max_length=128"):
        load_encoder(tiny_bert, max_length=128, device="cpu")
    with pytest.raises(ValueError, match="dtype='int8'"):
        load_encoder(tiny_bert, max_length=32, dtype="int8", device="cpu")
    with pytest.raises(ValueError, match="device='tpu'"):
        load_encoder(tiny_bert, max_length=32, device="tpu")


def test_auto_dtype_is_float32_on_cpu_and_bf16_on_cuda():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16


def test_default_minilm_places_related_texts_closer():
    encoder = load_encoder("minilm", device="cpu")
    assert encoder.dim == 384
    lipstick, lip_colour, engine = encoder.encode(["red lipstick", "matte lip colour in crimson", "diesel engine oil"])

    def cosine(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    assert cosine(lipstick, lip_colour) > cosine(lipstick, engine) + 0.2


def test_tokenize_words_lowercases_and_drops_digits_and_possessives():
    assert tokenize_words("Women’s Nail-Polish, 2x DON'T stop! Café") == ["women", "nail", "polish", "don't", "stop", "café"]


def top_words(texts: list, size: int, min_count: int, **counter) -> list[tuple[str, int]]:
    """The vocabulary the embed stage keeps from ``texts``: one counter over them, then its top words."""
    words = WordCounter(**counter)
    words.update(texts)
    return words.top(size, min_count)


def test_vocabulary_drops_stop_words_and_rare_words_and_caps_size():
    texts = ["The cream is great", "great cream, great smell", "the smell of roses", "cream"]
    assert top_words(texts, size=10, min_count=2) == [("cream", 3), ("great", 3), ("smell", 2)]
    assert top_words(texts, size=1, min_count=1) == [("cream", 3)]
    assert top_words(texts, size=10, min_count=1, stop_words=()) == [
        ("cream", 3),
        ("great", 3),
        ("smell", 2),
        ("the", 2),
        ("is", 1),
        ("of", 1),
        ("roses", 1),
    ]


def test_word_counters_merge_like_one_pass():
    texts = [f"soap {'lather ' * (i % 3)}bubbles" for i in range(20)]
    whole, left, right = WordCounter(), WordCounter(), WordCounter()
    whole.update(texts)
    left.update(texts[:7])
    right.update(texts[7:])
    left.merge(right)
    assert left.counts == whole.counts and left.texts == whole.texts == 20
    assert left.top(5, 1) == whole.top(5, 1)
    rows = WordCounter()
    rows.add_counts(*zip(*left.counts.items()))
    rows.add_counts(["soap"], [1])
    assert rows.counts["soap"] == whole.counts["soap"] + 1 and rows.counts["lather"] == whole.counts["lather"]


def test_vocabulary_rejects_bad_arguments():
    with pytest.raises(ValueError, match="size=0"):
        top_words(["cream"], size=0, min_count=1)
    with pytest.raises(ValueError, match="min_count=0"):
        top_words(["cream"], size=5, min_count=0)
    with pytest.raises(TypeError, match="text #1 is int"):
        top_words(["cream", 3], size=5, min_count=1)
