"""A deterministic demo dataset with planted shopping intents, written in the raw Amazon format.

Each planted intent owns a set of words. Items carry one or two intents (their descriptions use
those words), users prefer a few intents (their choices follow them), and every review mixes the
chosen intent's words with generic shopping chatter and occasional off-topic words. A share of
items (``new_items``) are new arrivals, bought only as a user's last two choices: they have almost
no training interactions, so an ID cannot be learned for them, while their description carries
their intents. Because the
files are raw Amazon review/meta files, the demo runs through exactly the loaders real data uses,
and later stages can check that the planted intents are recovered.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PLANTED: dict[str, list[str]] = {
    "sensitive skin": ["sensitive", "gentle", "irritation", "redness", "soothing", "hypoallergenic",
                       "calming", "rash", "mild", "dermatologist", "eczema", "itchy"],
    "budget": ["cheap", "affordable", "price", "bargain", "value", "inexpensive", "deal", "budget",
               "cost", "money", "discount", "pricey"],
    "fragrance": ["scent", "perfume", "smell", "floral", "aroma", "musky", "vanilla", "fragrance",
                  "cologne", "lavender", "citrus", "notes"],
    "hair repair": ["damaged", "frizz", "split", "ends", "conditioner", "repair", "shine", "brittle",
                    "keratin", "breakage", "detangle", "strands"],
    "anti-aging": ["wrinkles", "aging", "firming", "retinol", "collagen", "lines", "youthful",
                   "elasticity", "sagging", "mature", "peptides", "crows"],
    "acne": ["acne", "breakouts", "pimples", "blemishes", "pores", "oily", "salicylic", "zits",
             "blackheads", "benzoyl", "cystic", "spots"],
    "sun protection": ["sunscreen", "spf", "sunburn", "uv", "beach", "tan", "broad", "spectrum",
                       "sun", "outdoor", "zinc", "rays"],
    "nail care": ["nail", "polish", "manicure", "cuticle", "lacquer", "chip", "topcoat", "nails",
                  "gel", "enamel", "pedicure", "buffer"],
    "long-wear makeup": ["foundation", "coverage", "concealer", "longwear", "smudge", "transfer",
                         "matte", "primer", "flawless", "blend", "powder", "setting"],
    "eye makeup": ["mascara", "lashes", "eyeliner", "volume", "clump", "curl", "eyeshadow",
                   "lengthening", "brows", "liner", "palette", "smoky"],
    "lip care": ["lips", "chapped", "balm", "lipstick", "gloss", "cracked", "tint", "plump",
                 "lipgloss", "pout", "peeling", "moisturizing"],
    "natural ingredients": ["organic", "natural", "vegan", "chemicals", "paraben", "cruelty",
                            "plant", "botanical", "sulfate", "toxic", "ingredients", "essential"],
    "men's grooming": ["beard", "shave", "razor", "aftershave", "stubble", "trimmer", "shaving",
                       "grooming", "mustache", "bristles", "husband", "burn"],
    "dry skin hydration": ["dry", "hydration", "moisturizer", "flaky", "cream", "hydrate",
                           "dehydrated", "parched", "lotion", "winter", "supple", "hydrating"],
    "gift packaging": ["gift", "packaging", "box", "present", "wrapped", "birthday", "christmas",
                       "elegant", "bottle", "design", "mother", "beautiful"],
    "travel size": ["travel", "size", "compact", "portable", "purse", "trip", "tsa", "mini",
                    "luggage", "carry", "bag", "sample"],
    "curly hair": ["curls", "curly", "coils", "defined", "waves", "ringlets", "bounce",
                   "humidity", "crunchy", "coily", "diffuser", "kinks"],
    "teeth whitening": ["teeth", "whitening", "smile", "enamel-safe", "stains", "whiter", "strips",
                        "toothpaste", "dentist", "coffee", "bleaching", "gums"],
    "spa relaxation": ["bath", "relaxing", "spa", "soak", "bubbles", "candle", "pamper", "salts",
                       "massage", "tub", "unwind", "stress"],
    "body care": ["body", "wash", "scrub", "exfoliating", "shower", "loofah", "butter", "legs",
                  "arms", "smooth", "silky", "glow"],
    "hair color": ["dye", "color", "roots", "gray", "blonde", "brunette", "highlights", "bleach",
                   "toner", "brassy", "coverage-gray", "shade"],
    "tools brushes": ["brush", "brushes", "sponge", "bristle", "applicator", "blender", "handle",
                      "synthetic", "tool", "tapered", "fluffy", "angled"],
    "eye area": ["eye", "puffiness", "circles", "undereye", "bags", "dark", "depuffing", "roller",
                 "tired", "lids", "caffeine", "brighten"],
    "long lasting wear": ["lasting", "hours", "allday", "stays", "wears", "fade", "budge", "durable",
                          "holds", "endurance", "longevity", "overnight"],
}
GENERIC = ["great", "love", "product", "good", "nice", "bought", "works", "really", "would",
           "recommend", "use", "using", "also", "time", "well", "little", "much", "like", "one",
           "just", "definitely", "happy", "order", "item", "received", "tried", "worth", "again",
           "first", "days", "week", "daily", "favorite", "purchase", "amazing", "okay", "pretty",
           "quality", "expected", "arrived"]
PRODUCT_NOUNS = ["cream", "serum", "lotion", "oil", "spray", "gel", "kit", "set", "mist", "stick",
                 "balm", "wash", "mask", "powder", "tonic", "drops"]
TEMPLATES = [
    "{g0} {g1} this {w0} {noun}. {w1} and {w2}, {g2} {g3}.",
    "{w0} {w1} {noun}: {g0} {g1} {w2} {g2}.",
    "{g0} {w0}, {w1} {g1}. {g2} {w2} {g3} {noun}.",
    "i {g0} the {w0} {w1} {noun}, {g1} {w2}. {g2}.",
]


@dataclass(frozen=True)
class DemoSpec:
    users: int
    items: int
    intents: int
    min_length: int
    max_length: int
    seed: int
    new_items: float = 0.0


def planted_intents(n: int) -> list[dict[str, object]]:
    names = list(PLANTED)[:n]
    return [{"name": name, "words": PLANTED[name]} for name in names]


def generate(spec: DemoSpec, folder: Path) -> dict[str, Path]:
    """Write ``reviews_Demo_5.json.gz``, ``meta_Demo.json.gz``, ``planted_intents.json`` and
    ``item_categories.tsv`` (each item labelled with its planted intents)."""
    rng = np.random.default_rng(spec.seed)
    intents = planted_intents(spec.intents)
    n_int = len(intents)
    words = [list(i["words"]) for i in intents]

    primary = np.arange(spec.items) % n_int
    rng.shuffle(primary)
    secondary = np.where(rng.random(spec.items) < 0.3, rng.integers(0, n_int, spec.items), -1)
    popularity = 1.0 / (1.0 + rng.permutation(spec.items)) ** 0.6
    by_intent = [np.flatnonzero((primary == i) | (secondary == i)) for i in range(n_int)]
    # New arrivals: items on sale only at the end, drawn from their own stream so that the demo without
    # them (new_items 0) is the same draw for draw. Before a user's last two choices (valid and test
    # targets) they are not on sale; at those two they are, beside the rest of the intent's items.
    arrivals = np.random.default_rng([spec.seed, 1])
    new = np.zeros(spec.items, dtype=bool)
    if spec.new_items > 0:
        new[arrivals.choice(spec.items, size=max(1, round(spec.new_items * spec.items)), replace=False)] = True
    on_sale_early = [ids[~new[ids]] if (~new[ids]).any() else ids for ids in by_intent]

    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta_Demo.json.gz"
    with gzip.open(meta_path, "wt", encoding="utf-8") as meta:
        for item in range(spec.items):
            own = words[primary[item]]
            picked = list(rng.choice(own, size=3, replace=False))
            if secondary[item] >= 0:
                picked.append(str(rng.choice(words[secondary[item]])))
            noun = str(rng.choice(PRODUCT_NOUNS))
            title = " ".join(picked + [noun])
            description = f"{rng.choice(GENERIC)} {noun} for {intents[primary[item]]['name']}"
            meta.write(json.dumps({"asin": f"D{item:05d}", "title": title,
                                   "description": description}) + "\n")

    reviews_path = folder / "reviews_Demo_5.json.gz"
    day = 86_400
    with gzip.open(reviews_path, "wt", encoding="utf-8") as out:
        for user in range(spec.users):
            prefs = rng.choice(n_int, size=int(rng.integers(1, 4)), replace=False)
            weights = rng.dirichlet(np.ones(len(prefs)))
            length = int(np.clip(rng.geometric(1 / 9) + spec.min_length - 1, spec.min_length, spec.max_length))
            t = int(1_300_000_000 + rng.integers(0, 1000) * day)
            current = prefs[rng.choice(len(prefs), p=weights)]
            seen: set[int] = set()
            for step in range(length):
                if rng.random() < 0.35:
                    current = prefs[rng.choice(len(prefs), p=weights)]
                on_sale = by_intent[current] if step >= length - 2 else on_sale_early[current]
                pool = [i for i in on_sale if i not in seen] or list(on_sale)
                p = popularity[pool] / popularity[pool].sum()
                item = int(rng.choice(pool, p=p))
                seen.add(item)
                t += int(rng.integers(1, 30)) * day
                out.write(json.dumps(_review(rng, user, item, words[current], words, t)) + "\n")
    intents_path = folder / "planted_intents.json"
    intents_path.write_text(json.dumps(intents, indent=2))
    categories_path = folder / "item_categories.tsv"
    categories_path.write_text(_categories(intents, primary, secondary))
    return {"reviews": reviews_path, "meta": meta_path, "planted_intents": intents_path,
            "item_categories": categories_path}


def _categories(intents: list[dict[str, object]], primary: np.ndarray, secondary: np.ndarray) -> str:
    """Each item's planted intents as its categories (the TSV ``data.item_categories`` reads), derived
    from the draws already made, so the demo's random stream and every other number stay as they were."""
    rows = ["item_id\tcategories"]
    for item, (first, second) in enumerate(zip(primary, secondary)):
        names = [intents[int(first)]["name"]] + ([intents[int(second)]["name"]] if second >= 0 else [])
        rows.append(f"D{item:05d}\t{'|'.join(dict.fromkeys(str(n) for n in names))}")
    return "\n".join(rows) + "\n"


def _review(rng: np.random.Generator, user: int, item: int, own: list[str],
            all_words: list[list[str]], t: int) -> dict[str, object]:
    chosen = list(rng.choice(own, size=3, replace=False))
    if rng.random() < 0.2:
        chosen[2] = str(rng.choice(all_words[int(rng.integers(len(all_words)))]))
    fill = {f"g{i}": str(w) for i, w in enumerate(rng.choice(GENERIC, size=4, replace=False))}
    text = str(rng.choice(TEMPLATES)).format(w0=chosen[0], w1=chosen[1], w2=chosen[2],
                                             noun=rng.choice(PRODUCT_NOUNS), **fill)
    return {"reviewerID": f"U{user:05d}", "asin": f"D{item:05d}", "overall": float(rng.integers(3, 6)),
            "reviewText": text, "summary": f"{chosen[0]} {fill['g0']}", "unixReviewTime": t,
            "reviewTime": ""}
