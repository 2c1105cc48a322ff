"""Judge prompts, rendered from the YAML templates shipped in ``saerec/intents/templates``.

Each chat template (``summarise``, ``classify``, ``detect``) is a system turn, few-shot (user,
assistant) pairs and the final user turn, as chat messages. Every backend consumes the same
messages (vLLM and HTTP apply the served model's chat template, the local judge applies its
tokenizer's), and the system turn plus the examples form a prefix shared by every latent, which
both prefix caching and the local judge reuse. ``likelihood`` holds the plain texts that the
local judge's likelihood scoring reads instead of ``classify`` and ``detect``; keeping them in a
template too means every word the judge model reads is in ``templates/``.
As in the paper, only the dataset's domain changes between datasets.
"""
from __future__ import annotations

import importlib.resources
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

Message = dict[str, str]
TEMPLATE_NAMES = ("summarise", "classify", "detect")
LIKELIHOOD_TEMPLATE = "likelihood"


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt: system text, user text with ``$fields``, and few-shot examples."""

    name: str
    system: str
    user: str
    examples: tuple[dict[str, Any], ...]

    def prefix(self, domain: str) -> list[Message]:
        """The part shared by every request: system turn and the worked examples."""
        messages = [{"role": "system", "content": _fill(self.name, self.system, {"domain": domain})}]
        for example in self.examples:
            fields = {key: value for key, value in example.items() if key != "answer"}
            messages.append({"role": "user", "content": self._user(domain, fields)})
            messages.append({"role": "assistant", "content": str(example["answer"])})
        return messages

    def messages(self, domain: str, **fields: Any) -> list[Message]:
        """The full conversation for one request, ending with its user turn."""
        return [*self.prefix(domain), {"role": "user", "content": self._user(domain, fields)}]

    def _user(self, domain: str, fields: dict[str, Any]) -> str:
        values = {key: _as_text(value) for key, value in fields.items()}
        return _fill(self.name, self.user, {"domain": domain, **values})


@dataclass(frozen=True)
class LikelihoodTemplate:
    """The plain texts of likelihood scoring: the coherence context and the two detection contexts.

    Fields are substituted as given (a summary is not re-spaced), so a text scores exactly as written.
    """

    coherence: str
    themed: str
    plain: str

    def coherence_context(self, domain: str) -> str:
        return _fill(LIKELIHOOD_TEMPLATE, self.coherence, {"domain": domain})

    def detection_contexts(self, domain: str, summary: str) -> tuple[str, str]:
        """(context with the summary, context without it) that a text is scored after."""
        return (_fill(LIKELIHOOD_TEMPLATE, self.themed, {"domain": domain, "summary": summary}),
                _fill(LIKELIHOOD_TEMPLATE, self.plain, {"domain": domain}))


def load_template(name: str, folder: str | Path | None = None) -> PromptTemplate:
    """Read chat template ``name`` from ``folder`` (default: the package's own templates)."""
    if name not in TEMPLATE_NAMES:
        raise ValueError(f"unknown template {name!r}; expected one of {TEMPLATE_NAMES}")
    data = _read(name, folder)
    missing = [key for key in ("system", "user") if not isinstance(data.get(key), str)]
    if missing:
        raise ValueError(f"template {name!r} lacks text for {missing}")
    examples = tuple(data.get("examples") or ())
    for position, example in enumerate(examples):
        if "answer" not in example:
            raise ValueError(f"template {name!r} example {position} has no 'answer'")
    return PromptTemplate(name=name, system=data["system"], user=data["user"], examples=examples)


def load_likelihood_template(folder: str | Path | None = None) -> LikelihoodTemplate:
    """Read ``likelihood.yaml`` from ``folder`` (default: the package's own templates)."""
    data = _read(LIKELIHOOD_TEMPLATE, folder)
    missing = [key for key in ("coherence", "themed", "plain") if not isinstance(data.get(key), str)]
    if missing:
        raise ValueError(f"template {LIKELIHOOD_TEMPLATE!r} lacks text for {missing}")
    if "$summary" not in data["themed"] and "${summary}" not in data["themed"]:
        raise ValueError(f"template {LIKELIHOOD_TEMPLATE!r}: 'themed' must contain $summary, "
                         "or detection would compare two contexts that ignore the summary")
    return LikelihoodTemplate(coherence=data["coherence"], themed=data["themed"], plain=data["plain"])


def _read(name: str, folder: str | Path | None) -> dict[str, Any]:
    if folder is None:
        text = importlib.resources.files("saerec.intents").joinpath("templates", f"{name}.yaml").read_text()
    else:
        text = (Path(folder) / f"{name}.yaml").read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"template {name!r} is not a mapping of texts")
    return data


def _fill(name: str, text: str, values: dict[str, str]) -> str:
    try:
        return Template(text).substitute(values)
    except KeyError as missing:
        raise ValueError(f"template {name!r} needs field {missing.args[0]!r}") from None


@dataclass(frozen=True)
class JudgePrompts:
    """The prompts of one judge, bound to a domain such as 'Amazon beauty products'."""

    domain: str
    summarise: PromptTemplate
    classify: PromptTemplate
    detect: PromptTemplate
    likelihood: LikelihoodTemplate
    max_text_chars: int = 300

    @classmethod
    def load(cls, domain: str, folder: str | Path | None = None, max_text_chars: int = 300) -> "JudgePrompts":
        if not domain.strip():
            raise ValueError("the judge's domain must be a non-empty description, e.g. 'Amazon beauty products'")
        summarise, classify, detect = (load_template(name, folder) for name in TEMPLATE_NAMES)
        return cls(domain, summarise, classify, detect, load_likelihood_template(folder), max_text_chars)

    def summary_request(self, words: Sequence[str]) -> list[Message]:
        return self.summarise.messages(self.domain, words=words)

    def verdict_request(self, summary: str, words: Sequence[str]) -> list[Message]:
        return self.classify.messages(self.domain, summary=summary, words=words)

    def detection_request(self, summary: str, text: str) -> list[Message]:
        return self.detect.messages(self.domain, summary=summary, text=_clip(text, self.max_text_chars))

    def coherence_context(self) -> str:
        return self.likelihood.coherence_context(self.domain)

    def detection_contexts(self, summary: str) -> tuple[str, str]:
        return self.likelihood.detection_contexts(self.domain, summary)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, Iterable):
        return ", ".join(" ".join(str(item).split()) for item in value)
    return str(value)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."
