"""Word alignment (eq. 2) and activation statistics against brute-force computations."""
import math

import pytest
import torch

from saerec.intents.activations import summarise_activations
from saerec.intents.alignment import align_words, log_normalisers


def brute_force_scores(latents, words, alpha, beta):
    sims = latents @ words.T
    p_w_given_i = torch.softmax(sims / alpha, dim=1)
    p_i_given_w = torch.softmax(sims / beta, dim=0)
    return p_w_given_i * torch.log(p_i_given_w * latents.shape[0])


@pytest.fixture
def tiny():
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(13, 6, generator=gen, dtype=torch.float64)
    return latents, torch.randn(37, 6, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("latent_chunk,word_chunk", [(13, 37), (4, 5), (1, 1), (5, 100)])
def test_alignment_matches_brute_force_across_chunk_boundaries(tiny, latent_chunk, word_chunk):
    latents, words = tiny
    expected = brute_force_scores(latents, words, alpha=0.7, beta=1.3)
    top = expected.topk(4, dim=1)
    got = align_words(latents, words, top_n=4, alpha=0.7, beta=1.3,
                      latent_chunk=latent_chunk, word_chunk=word_chunk)
    assert torch.equal(got.word_ids, top.indices)
    assert torch.allclose(got.scores, top.values, atol=1e-12)


def test_log_normalisers_match_full_logsumexp(tiny):
    latents, words = tiny
    sims = latents @ words.T
    per_latent, per_word = log_normalisers(latents, words, 0.5, 2.0, latent_chunk=3, word_chunk=8)
    assert torch.allclose(per_latent, torch.logsumexp(sims / 0.5, dim=1))
    assert torch.allclose(per_word, torch.logsumexp(sims / 2.0, dim=0))


def test_cosine_option_equals_alignment_of_normalised_vectors(tiny):
    latents, words = tiny
    scaled = latents * torch.arange(1, 14, dtype=torch.float64)[:, None]
    got = align_words(scaled, words, top_n=3, cosine=True, latent_chunk=4, word_chunk=7)
    expected = brute_force_scores(torch.nn.functional.normalize(latents, dim=1),
                                  torch.nn.functional.normalize(words, dim=1), 1.0, 1.0).topk(3, dim=1)
    assert torch.equal(got.word_ids, expected.indices)


def test_unique_strong_word_beats_a_word_shared_by_every_latent():
    # latent 0 points along axis 0; word 0 sits on axis 0 only, word 1 is close to every latent.
    latents = torch.eye(3)
    words = torch.tensor([[3.0, 0.0, 0.0], [2.0, 2.0, 2.0], [0.0, 0.0, 0.1]])
    got = align_words(latents, words, top_n=3)
    assert got.word_ids[0, 0].item() == 0
    assert got.scores[0, 0] > 0


def test_top_n_larger_than_vocabulary_is_capped(tiny):
    latents, words = tiny
    got = align_words(latents, words[:3], top_n=10, word_chunk=2)
    assert got.word_ids.shape == (13, 3)
    assert sorted(got.word_ids[0].tolist()) == [0, 1, 2]


@pytest.mark.parametrize("kwargs,message", [
    ({"alpha": 0.0}, "alpha"), ({"top_n": 0}, "top_n"), ({"word_chunk": 0}, "word_chunk"),
])
def test_bad_arguments_are_named(tiny, kwargs, message):
    latents, words = tiny
    with pytest.raises(ValueError, match=message):
        align_words(latents, words, **kwargs)


def test_dimension_mismatch_is_reported(tiny):
    latents, words = tiny
    with pytest.raises(ValueError, match="dim"):
        align_words(latents, words[:, :5])


def test_activation_summary_matches_dense_brute_force():
    gen = torch.Generator().manual_seed(3)
    n_texts, n_latents, k = 23, 9, 3
    dense = torch.relu(torch.randn(n_texts, n_latents, generator=gen))
    values, indices = dense.topk(k, dim=1)
    chunks = [(values[i:i + 5], indices[i:i + 5]) for i in range(0, n_texts, 5)]
    got = summarise_activations(chunks, num_latents=n_latents, top_m=4)

    sparse = torch.zeros_like(dense).scatter(1, indices, values)
    assert torch.allclose(got.frequency, (sparse > 0).double().mean(dim=0))
    for latent in range(n_latents):
        fired = torch.nonzero(sparse[:, latent] > 0).flatten()
        best = fired[sparse[fired, latent].argsort(descending=True)][:4]
        assert got.top_texts[latent, :len(best)].tolist() == best.tolist()
        assert (got.top_texts[latent, len(best):] == -1).all()
        assert torch.allclose(got.top_values[latent, :len(best)], sparse[best, latent])


def test_activation_summary_rejects_out_of_range_latents():
    with pytest.raises(ValueError, match="out of range"):
        summarise_activations([(torch.ones(2, 1), torch.tensor([[0], [5]]))], num_latents=3, top_m=2)


def test_activation_summary_needs_texts():
    with pytest.raises(ValueError, match="no texts"):
        summarise_activations([], num_latents=3, top_m=2)


def test_prior_baseline_makes_unrelated_words_score_near_zero():
    latents = torch.eye(2)
    words = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    got = align_words(latents, words, top_n=2)
    assert got.word_ids[:, 0].tolist() == [0, 1]
    assert got.scores[0, 0].item() == pytest.approx(math.log(2), rel=1e-3)
    assert abs(got.scores[0, 1].item()) < 1e-3


def test_corpus_word_vectors_are_means_over_the_texts_containing_each_word():
    from saerec.intents.word_vectors import CorpusWordVectors

    vectors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    texts = ["nail polish nail", "polish gel", "unrelated words only"]
    grounded = CorpusWordVectors(["nail", "polish", "gel", "never"], 2, str.split)
    grounded.add(vectors[:2], texts[:2])
    grounded.add(vectors[2:], texts[2:])
    expected = torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, 2.0], [0.0, 0.0]])
    assert torch.allclose(grounded.vectors(), expected)
    assert grounded.counts.tolist() == [1, 2, 1, 0]
    with pytest.raises(ValueError, match="repeated"):
        CorpusWordVectors(["a", "a"], 2, str.split)
    with pytest.raises(ValueError, match="2 vectors but 1 texts"):
        grounded.add(vectors[:2], texts[:1])
