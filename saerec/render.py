"""The run report as data (headings, text, tables, charts), rendered to self-contained HTML and Markdown.

Nothing here reads storage: the report stage gathers published outputs into a ``Document`` and
this module lays it out. Charts are matplotlib PNGs (Agg backend, no display needed), embedded as
base64 ``data:`` URIs in both formats, so either file can be mailed or opened offline alone.
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

# The paper's Table 2 (Beauty, full ranking) and Table 3 (KMeans-Intent), as quoted in METHOD.md.
PAPER_BEAUTY = {
    "SASRec": {"hr@10": 0.0624, "hr@20": 0.0894, "ndcg@10": 0.0342, "ndcg@20": 0.0386},
    "ICSRec": {"hr@10": 0.0953, "hr@20": 0.1297, "ndcg@10": 0.0576, "ndcg@20": 0.0663},
    "SAERec": {"hr@10": 0.1055, "hr@20": 0.1427, "ndcg@10": 0.0643, "ndcg@20": 0.0737},
    "KMeans-Intent": {"hr@20": 0.1349, "ndcg@20": 0.0671},
}
MAIN_METRICS = ("hr@10", "hr@20", "ndcg@10", "ndcg@20")


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    png: bytes
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[str | Table | Figure] = field(default_factory=list)


@dataclass
class Document:
    title: str
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str) -> Section:
        found = Section(title)
        self.sections.append(found)
        return found


def cell(value: Any) -> str:
    """Numbers to 4 significant decimals, None/NaN to an em dash, everything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_mean_std(mean: float, std: float | None, seeds: int) -> str:
    """``0.1234`` for one seed (it has no spread), ``0.1234 ± 0.0056 (n=3)`` for several."""
    if seeds > 1 and std is not None and not math.isnan(std):
        return f"{mean:.4f} ± {std:.4f} (n={seeds})"
    return f"{mean:.4f}"


def format_interval(result: Mapping[str, Any]) -> str:
    """A paired comparison as ``+0.0012 [-0.0003, +0.0027]``."""
    return f"{result['difference']:+.4f} [{result['low']:+.4f}, {result['high']:+.4f}]"


# Stage metric keys a reader meets in the appendix; any other key goes through ``metric_label``'s fallback.
METRIC_LABELS = {
    "fvu": "FVU (fraction of variance unexplained)", "l0": "L0 (active latents per text)",
    "dead_pct": "dead latents (%)", "n_latents": "latents", "k": "active latents per text (TopK k)",
    "lr": "learning rate", "dim": "embedding dimension", "texts_per_s": "texts embedded per second",
    "samples_per_s": "training samples per second", "count_words_s": "counting corpus words (s)",
    "embed_texts_s": "embedding the texts (s)", "embed_words_s": "embedding the words (s)",
    "corpus_repeats_dropped": "repeated corpus texts dropped", "bad_records_skipped": "bad input records skipped",
    "resumed_from_epoch": "resumed from epoch",
}
UNIT_SUFFIXES = (("_per_s", " per second"), ("_seconds", " (s)"), ("_s", " (s)"), ("_pct", " (%)"),
                 ("_bytes", " (bytes)"))


def metric_label(key: str) -> str:
    """A stage metric key as words for a reader: a known key's label, else the key with its unit
    suffix turned into a unit and underscores into spaces (``wall_time_s`` -> ``wall time (s)``)."""
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    for suffix, unit in UNIT_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[:-len(suffix)].replace("_", " ") + unit
    return key.replace("_", " ")


def metric_rows(metrics: Mapping[str, Any]) -> list[list[Any]]:
    """A stage's scalar metrics as ``[label, value]`` rows (lists and mappings are left to their own tables)."""
    return [[metric_label(k), v] for k, v in metrics.items()
            if isinstance(v, (int, float, str, bool)) or v is None]


ITEM_TEXT_SHOWN = 60


def item_label(item: int, text: str | None) -> str:
    """An item as a reader knows it: its text (title first) cut to about 60 characters at a word,
    with the id after it; the bare id only when the item has no text."""
    text = " ".join((text or "").split())
    if not text:
        return f"item {item}"
    if len(text) > ITEM_TEXT_SHOWN:
        cut = text[:ITEM_TEXT_SHOWN].rsplit(" ", 1)[0] or text[:ITEM_TEXT_SHOWN]
        text = cut.rstrip(" ,;:-") + "…"
    return f"{text} (id {item})"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td{white-space:nowrap}td.text{white-space:normal;text-align:left;min-width:14em}
td:first-child,th:first-child{text-align:left}caption{caption-side:top;text-align:left;
font-style:italic;padding:4px 0}figure{margin:1em 0}img{max-width:100%}figcaption{font-style:italic}"""


WRAPPED_CELL = 32


def _html_cell(text: str) -> str:
    """Numbers stay on one line; long text (item names, intent summaries) wraps, left-aligned."""
    shown = html.escape(text)
    return f"<td class='text'>{shown}</td>" if len(text) > WRAPPED_CELL else f"<td>{shown}</td>"


def to_html(doc: Document) -> str:
    """One HTML file with its CSS and images inline."""
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(doc.title)}</title>",
           f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(doc.title)}</h1>"]
    for section in doc.sections:
        out.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                out.append("<table>")
                if block.caption:
                    out.append(f"<caption>{html.escape(block.caption)}</caption>")
                out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in block.columns) + "</tr>")
                for row in block.rows:
                    out.append("<tr>" + "".join(_html_cell(cell(v)) for v in row) + "</tr>")
                out.append("</table>")
            elif isinstance(block, Figure):
                out.append(f"<figure><img alt='{html.escape(block.caption, quote=True)}' src='{_data_uri(block.png)}'>"
                           f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
            else:
                out.append(f"<p>{html.escape(block)}</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Document) -> str:
    """The same content as Markdown; images are inline data URIs too."""
    out = [f"# {doc.title}", ""]
    for section in doc.sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                if block.caption:
                    out += [f"*{_md_escape(block.caption)}*", ""]
                out.append("| " + " | ".join(_md_escape(c) for c in block.columns) + " |")
                out.append("|" + "|".join(["---"] + ["---:"] * (len(block.columns) - 1)) + "|")
                out += ["| " + " | ".join(_md_escape(cell(v)) for v in row) + " |" for row in block.rows]
            elif isinstance(block, Figure):
                out.append(f"![{_md_escape(block.caption)}]({_data_uri(block.png)})")
            else:
                out.append(block)
            out.append("")
    return "\n".join(out)


def _figure(plot: Any, height: float = 3.6) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, height), dpi=100)
    try:
        plot(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def bar_chart(labels: Sequence[str], means: Sequence[float], stds: Sequence[float], title: str,
              ylabel: str) -> bytes:
    """One bar per short label (histogram bins) with its seed spread as an error bar."""
    def plot(ax: Any) -> None:
        positions = range(len(labels))
        ax.bar(positions, means, yerr=stds, capsize=3, color="#4c72b0")
        ax.set_xticks(list(positions), labels)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    return _figure(plot)


def horizontal_bar_chart(labels: Sequence[str], means: Sequence[float], stds: Sequence[float], title: str,
                         xlabel: str) -> bytes:
    """One horizontal bar per setting, its seed spread as an error bar: long labels (variant names)
    stay level and readable on the y axis, first label on top."""
    def plot(ax: Any) -> None:
        positions = range(len(labels))
        ax.barh(list(positions), means, xerr=stds, capsize=3, color="#4c72b0")
        ax.set_yticks(list(positions), labels)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    return _figure(plot, height=max(2.4, 0.9 + 0.38 * len(labels)))


def line_chart(x: Sequence[float], series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str,
               xlabel: str, ylabel: str) -> bytes:
    """Each named series as mean ± std over seeds against ``x``."""
    def plot(ax: Any) -> None:
        for name, (means, stds) in series.items():
            ax.errorbar(list(x), means, yerr=stds, marker="o", capsize=3, label=name)
        ax.set_xticks(list(x))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return _figure(plot)


def histograms(series: Mapping[str, Sequence[float]], bins: Sequence[float], title: str, xlabel: str) -> bytes:
    """Overlaid step histograms, each as the share of its own values per bin, so groups of
    different sizes (125 kept intents, 3,000 rejected latents) compare by shape."""
    def plot(ax: Any) -> None:
        for name, values in series.items():
            if len(values):
                ax.hist(list(values), bins=list(bins), weights=[1 / len(values)] * len(values), histtype="step",
                        linewidth=1.8, label=f"{name} (n={len(values)})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share of sets")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return _figure(plot)


def main_results_table(ours: dict[str, dict[str, float]], metrics: Sequence[str] = MAIN_METRICS,
                       with_paper: bool = True, paper_rows: Mapping[str, str | None] | None = None) -> Table:
    """Our test metrics per model, with the paper's Beauty numbers beside them (— where it has
    none) unless the run's data cannot be compared with them (the demo). ``paper_rows`` maps our
    model names to the paper's row of the same model, which is then shown right below ours."""
    paper_rows = paper_rows or {}
    columns = ["model", "source", *metrics]
    rows: list[list[Any]] = []
    for name, values in ours.items():
        rows.append([name, "this run", *[values.get(m) for m in metrics]])
        paper = PAPER_BEAUTY.get(paper_rows.get(name) or "") if with_paper else None
        if paper is not None:
            rows.append([paper_rows[name], "paper (Beauty)", *[paper.get(m) for m in metrics]])
    shown = {paper_rows.get(v) for v in ours}
    for name, paper in PAPER_BEAUTY.items():
        if with_paper and name not in shown:
            rows.append([name, "paper (Beauty)", *[paper.get(m) for m in metrics]])
    caption = ("Test set (columns named valid: the validation item), full ranking over all items. Paper rows: "
               "Tables 2 and 3 of the SAERec paper on Amazon Beauty (other datasets are not comparable)."
               if with_paper else
               "Test set (columns named valid: the validation item), full ranking over all items. The paper's "
               "numbers are for Amazon Beauty and are not shown beside the demo's.")
    return Table(columns, rows, caption)


def _shown(value: Mapping[str, Any]) -> Any:
    """A ``{mean, std, n}`` cell: the mean alone for one seed, mean ± std (n) for several."""
    return value["mean"] if value["n"] < 2 else format_mean_std(value["mean"], value["std"], value["n"])


def popularity_tables(by_popularity: Mapping[str, Any], metrics: Sequence[str] = MAIN_METRICS) -> list[Table]:
    """Test metrics per model and bucket of the held-out item's training frequency (head, tail, cold),
    and the paired comparisons within each bucket (evaluate's ``by_popularity``)."""
    buckets = by_popularity["buckets"]
    cold, head_min = by_popularity["cold_max_train"], by_popularity["head_min_train"]
    tail = f"{cold + 1}–{head_min - 1}" if head_min > cold + 2 else f"{cold + 1}" if head_min == cold + 2 else "none"
    bounds = {"head": f"≥ {head_min}", "tail": tail, "cold": f"≤ {cold}"}
    shown = [m for m in metrics if any(m in b for model in by_popularity["models"].values() for b in model.values())]
    rows = [[model, f"{name} ({bounds[name]})", values["users"], *[_shown(values[m]) if m in values else None
                                                                 for m in shown]]
            for model, found in by_popularity["models"].items() for name, values in found.items()]
    sizes = "; ".join(f"{name}: {b['items']:,} items, {b['train_share']:.1%} of training interactions, "
                      f"{b['test_users']:,} test users" for name, b in buckets.items())
    tables = [Table(["model", "bucket (training interactions of the held-out item)", "test users", *shown], rows,
                    f"Test metrics by the held-out item's popularity in training. Head: the most popular "
                    f"{by_popularity['head_item_share']:.0%} of items (at least as many training interactions as the "
                    f"item at that rank, ties included); cold: at most {cold} (new items included); tail: the rest. "
                    f"{sizes}.")]
    pairs = [[f"{c['a']} − {c['b']}", name, found["users"], format_interval(found), found["excludes_zero"]]
             for c in by_popularity.get("comparisons", []) for name, found in c["buckets"].items()]
    if pairs:
        metric = by_popularity["comparisons"][0]["metric"]
        tables.append(Table(["pair", "bucket", "test users", f"test {metric} difference [95 % interval]",
                             "interval excludes 0"], pairs,
                            "Paired bootstrap over the bucket's users (seeds pooled per user by mean), the same pairs "
                            "as the main comparisons"))
    return tables
