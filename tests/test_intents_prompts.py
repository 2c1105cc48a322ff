"""Prompt rendering, verdict parsing and the served-judge requests (no model needed)."""
import numpy as np
import pytest

from saerec.intents import engine_requests as er
from saerec.intents.prompts import JudgePrompts, load_likelihood_template, load_template
from saerec.intents.verdicts import (
    CANNOT_TELL,
    copies_the_list,
    parse_detection,
    parse_summary,
    parse_verdict,
    repeats_a_word,
    validate_keep,
)


@pytest.fixture(scope="module")
def prompts():
    return JudgePrompts.load("Amazon beauty products")


def test_summary_prompt_is_system_examples_then_the_latents_words(prompts):
    messages = prompts.summary_request(["lotion", "dry", "flaky"])
    roles = [m["role"] for m in messages]
    assert roles[0] == "system" and roles[-1] == "user"
    assert roles[1:-1] == ["user", "assistant"] * (len(roles[1:-1]) // 2)
    assert "Amazon beauty products" in messages[0]["content"]
    assert "Words: lotion, dry, flaky" in messages[-1]["content"]
    assert "$" not in "".join(m["content"] for m in messages)
    assert any(m["content"] == CANNOT_TELL for m in messages if m["role"] == "assistant")


def test_every_request_of_a_prompt_shares_the_same_prefix(prompts):
    first = prompts.verdict_request("nail care", ["nail", "polish"])
    second = prompts.verdict_request("hair colour", np.array(["dye", "roots"]))
    assert first[:-1] == second[:-1]
    assert "Theme: hair colour" in second[-1]["content"] and "Words: dye, roots" in second[-1]["content"]


def test_classification_examples_cover_all_four_levels(prompts):
    answers = {m["content"] for m in prompts.verdict_request("x", ["y"]) if m["role"] == "assistant"}
    assert answers == {"Yes", "Probably", "Maybe", "No"}


def test_detection_prompt_clips_long_texts_and_flattens_whitespace():
    prompts = JudgePrompts.load("toys", max_text_chars=20)
    last = prompts.detection_request("puzzles", "a  very\nlong review text that goes on and on")[-1]["content"]
    assert "Text: a very long review ..." in last
    assert "\n" not in last.split("Text: ")[1].split("\n")[0]


def test_dollar_signs_in_words_are_inserted_literally(prompts):
    assert "Words: $5, $domain" in prompts.summary_request(["$5", "$domain"])[-1]["content"]


def test_custom_template_folder_and_missing_fields(tmp_path):
    (tmp_path / "summarise.yaml").write_text("system: Study $domain.\nuser: 'W: $words and $extra'\n")
    template = load_template("summarise", tmp_path)
    with pytest.raises(ValueError, match="'extra'"):
        template.messages("toys", words=["a"])
    assert template.messages("toys", words=["a"], extra="b")[-1]["content"] == "W: a and b"


def test_likelihood_texts_are_the_template_filled_with_the_domain_and_summary(prompts, tmp_path):
    assert prompts.coherence_context() == "Reviews of Amazon beauty products mention these words:"
    assert prompts.detection_contexts("nail care") == ("Theme: nail care\nText:", "Text:")
    (tmp_path / "likelihood.yaml").write_text("coherence: 'On $domain:'\nthemed: 'About $summary ($domain):'\nplain: '-'\n")
    edited = load_likelihood_template(tmp_path)
    assert edited.coherence_context("toys") == "On toys:"
    assert edited.detection_contexts("toys", "$5 puzzles") == ("About $5 puzzles (toys):", "-")
    (tmp_path / "likelihood.yaml").write_text("coherence: 'On $domain:'\nthemed: 'Text:'\nplain: 'Text:'\n")
    with pytest.raises(ValueError, match=r"\$summary"):
        load_likelihood_template(tmp_path)
    (tmp_path / "likelihood.yaml").write_text("coherence: 'On $domain:'\n")
    with pytest.raises(ValueError, match="lacks text"):
        load_likelihood_template(tmp_path)


def test_unknown_template_and_empty_domain_are_rejected():
    with pytest.raises(ValueError, match="unknown template"):
        load_template("explain")
    with pytest.raises(ValueError, match="domain"):
        JudgePrompts.load("  ")


@pytest.mark.parametrize("raw,expected", [
    ("dry skin hydration", "dry skin hydration"),
    ("  Theme: Nail Care.\nMore chatter", "Nail Care"),
    ('"budget shopping"', "budget shopping"),
    ("Cannot Tell", CANNOT_TELL),
    ("I cannot tell what these share.", CANNOT_TELL),
    ("no clear theme", CANNOT_TELL),
    ("", CANNOT_TELL),
    ("   \n\n  ", CANNOT_TELL),
    ("1234 !!! ??", CANNOT_TELL),
    (None, CANNOT_TELL),
    (17, CANNOT_TELL),
    ("cellulite, cellulite, cellulite", CANNOT_TELL),
    ("jellies, jellies, jellies", CANNOT_TELL),
    ("de la, de lait, la, de lait", CANNOT_TELL),
    ("Skin, skin care", CANNOT_TELL),
    ("a cream for a dry face", "a cream for a dry face"),
    ("spf 30 or spf 50", CANNOT_TELL),
])
def test_parse_summary(raw, expected):
    assert parse_summary(raw) == expected


@pytest.mark.parametrize("raw,expected", [
    ("moisturizer, lotion", CANNOT_TELL),
    ("Theme: Lotion, DRY, flaky cream.", CANNOT_TELL),
    ("dry, skin care", "dry, skin care"),
    ("lotion cream", "lotion cream"),
    ("lotions, creams", "lotions, creams"),
])
def test_parse_summary_rejects_the_word_list_copied_back(raw, expected):
    assert parse_summary(raw, words=["moisturizer", "lotion", "dry", "cream", "flaky"]) == expected
    assert parse_summary(raw) != CANNOT_TELL  # without the list, nothing to compare with


def test_the_summary_prompts_own_answers_pass_the_summary_rules():
    for example in load_template("summarise").examples:
        assert parse_summary(example["answer"], words=example["words"]) == example["answer"]


def test_repeats_and_copies_compare_words_of_two_or_more_letters_or_digits_in_any_case():
    assert not repeats_a_word("a b a b") and repeats_a_word("Nail NAIL") and repeats_a_word("50 ml, 50 ml")
    assert not repeats_a_word("word0 word1") and not repeats_a_word("")
    assert copies_the_list("Dry, CREAM!", ["cream", "dry"]) and not copies_the_list("dry, creams", ["cream", "dry"])
    assert not copies_the_list("dry cream", ["cream", "dry"]) and not copies_the_list("dry, cream", [])


def test_parse_summary_caps_length():
    assert parse_summary(" ".join(f"word{i}" for i in range(40)), max_words=5) == "word0 word1 word2 word3 word4"


@pytest.mark.parametrize("raw,expected", [
    ("Yes", "Yes"), ("yes.", "Yes"), ("Probably", "Probably"), (" maybe\n", "Maybe"), ("No", "No"),
    ("Answer: No, it is not.", "No"), ("**Yes** - clearly", "Yes"), ("Cannot Tell", CANNOT_TELL),
    ("", CANNOT_TELL), ("banana", CANNOT_TELL), ("Yesterday", CANNOT_TELL), (None, CANNOT_TELL),
    ("\x00\x01", CANNOT_TELL), (["Yes"], CANNOT_TELL),
])
def test_parse_verdict_never_raises(raw, expected):
    assert parse_verdict(raw) == expected


def test_parse_detection():
    assert parse_detection("Yes") == 1.0
    assert parse_detection("no") == 0.0
    assert parse_detection("Probably") is None
    assert parse_detection("") is None


def test_validate_keep():
    assert validate_keep(["Yes", "Probably"]) == ("Yes", "Probably")
    with pytest.raises(ValueError, match="judge.keep"):
        validate_keep(["yes"])
    with pytest.raises(ValueError, match="judge.keep"):
        validate_keep([])


def test_vllm_rows_are_deterministic_and_constrain_the_verdict(prompts):
    summary = er.summary_row(prompts, ["nail", "polish"], max_tokens=16)
    assert summary["sampling_params"] == {"temperature": 0.0, "max_tokens": 16}
    verdict = er.verdict_row(prompts, "nail care", ["nail", "polish"])
    assert verdict["sampling_params"]["temperature"] == 0.0
    assert verdict["sampling_params"]["structured_outputs"] == {"choice": ["Yes", "Probably", "Maybe", "No"]}
    detect = er.detection_row(prompts, "nail care", "my nails look great")
    assert detect["sampling_params"]["structured_outputs"] == {"choice": ["Yes", "No"]}
    assert detect["messages"][-1]["content"].startswith("Theme: nail care")


def test_vllm_processor_kwargs():
    settings = er.ServedJudgeSettings(model="mistralai/Mistral-7B-Instruct-v0.3", batch_size=128,
                                      concurrency=2, max_model_len=1024, num_gpus_per_actor=2)
    kwargs = er.vllm_processor_kwargs(settings)
    assert kwargs["model_source"] == "mistralai/Mistral-7B-Instruct-v0.3"
    assert kwargs["concurrency"] == 2 and kwargs["batch_size"] == 128
    engine = kwargs["engine_kwargs"]
    assert engine["max_model_len"] == 1024 and engine["enable_prefix_caching"] is True
    assert engine["tensor_parallel_size"] == 2
    with pytest.raises(ValueError, match="num_gpus_per_actor"):
        er.vllm_processor_kwargs(er.ServedJudgeSettings(model="m", num_gpus_per_actor=0))


def test_vllm_processor_config_builds_with_ray_data_llm():
    llm = pytest.importorskip("ray.data.llm", reason="ray.data.llm is not importable here")
    kwargs = er.vllm_processor_kwargs(er.ServedJudgeSettings(model="mistralai/Mistral-7B-Instruct-v0.3"))
    config = llm.vLLMEngineProcessorConfig(**kwargs)
    assert config.model_source == "mistralai/Mistral-7B-Instruct-v0.3"
    assert config.engine_kwargs["enable_prefix_caching"] is True
    assert config.engine_kwargs["task_type"] == "generate"


def test_http_processor_config_and_answers():
    llm = pytest.importorskip("ray.data.llm", reason="ray.data.llm is not importable here")
    settings = er.ServedJudgeSettings(model="m", base_url="http://127.0.0.1:8000/v1/")
    config = llm.HttpRequestProcessorConfig(**er.http_processor_kwargs(settings))
    assert config.url == "http://127.0.0.1:8000/v1/chat/completions"
    with pytest.raises(ValueError, match="base_url"):
        er.http_processor_kwargs(er.ServedJudgeSettings(model="m"))
    payload = er.http_payload("m", [{"role": "user", "content": "hi"}], max_tokens=4)
    assert payload["temperature"] == 0.0 and payload["model"] == "m"
    assert er.http_answer({"choices": [{"message": {"content": "Yes"}}]}) == "Yes"
    for broken in ({}, {"choices": []}, {"choices": [{"message": {"content": None}}]}, None, "error"):
        assert er.http_answer(broken) == ""
