"""The I/O around the pure scorer: the shipped model file, VADER's lexicon, labelled data sets.

The model file (``agents/models/sentiment.json.gz``) is rebuilt by ``tickflow sentiment train``
and read offline; VADER's lexicon comes from the installed ``vaderSentiment`` package.
"""

from __future__ import annotations

import ast
import csv
import functools
import gzip
import hashlib
import io
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from agents.sentiment import DEFAULT_ASSETS, LABELS, AssetTable, LinearModel, Scorer, lexicon_table
from agents.sentiment_training import Example

MODEL_PATH = Path(__file__).parent / "models" / "sentiment.json.gz"

# The shared labelled sets: two label schemes. ds4a's titles carry FinBERT labels (a finance model
# trained on human-labelled news); NYU's carry TextBlob's polarity class of the article's text (a
# general-purpose lexicon; polarity 0.004 rounds to 0.0 and is still "positive").
FINBERT_DS4A = "crypto_news/crypto_news_finbert_ds4a.csv"
TEXTBLOB_NYU = "crypto_news/cryptonews_semicolon_nyu_team4.csv"


@functools.cache
def vader_lexicon() -> dict[str, float]:
    text = resources.files("vaderSentiment").joinpath("vader_lexicon.txt").read_text(encoding="utf-8")
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            out[parts[0]] = float(parts[1])
    return out


@functools.cache
def default_lexicon() -> dict[str, tuple[float, float]]:
    return lexicon_table(vader_lexicon())


def load_model(path: Path | str = MODEL_PATH) -> LinearModel:
    try:
        data = gzip.decompress(Path(path).read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"no sentiment model at {path}: build it with `tickflow sentiment train`") from None
    return LinearModel.from_dict(orjson.loads(data))


def save_model(model: LinearModel, path: Path | str = MODEL_PATH) -> int:
    """Write the model (deterministic bytes: sorted keys, no gzip time stamp); returns its size."""
    raw = orjson.dumps(model.to_dict(), option=orjson.OPT_SORT_KEYS)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(raw)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(buf.getvalue())
    return len(buf.getvalue())


def default_scorer(assets: AssetTable | None = None, model_path: Path | str | None = None) -> Scorer:
    return Scorer(load_model(model_path or MODEL_PATH), default_lexicon(), assets)


def read_finbert_ds4a(path: Path) -> Iterator[Example]:
    """Titles with FinBERT labels; the trailing " - Publisher" is no part of the headline."""
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            label = row.get("description_finbert", "").strip().lower()
            if label in LABELS and row.get("title"):
                yield Example(strip_publisher(row["title"]), label, "finbert_ds4a")


def read_textblob_nyu(path: Path) -> Iterator[Example]:
    """Title and text with the TextBlob class of the text (``;``-separated, a Python dict per row)."""
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter=";"):
            try:
                label = str(ast.literal_eval(row["sentiment"])["class"]).lower()
            except (ValueError, SyntaxError, KeyError, TypeError):
                continue
            if label in LABELS:
                yield Example(f"{row.get('title') or ''}. {row.get('text') or ''}".strip(" ."), label, "textblob_nyu")


def read_labelled(path: Path, source: str | None = None) -> Iterator[Example]:
    """Any other labelled text: ``text@label`` lines (Financial PhraseBank's format) or CSV with
    ``text`` and ``label`` columns. For evaluating on text the model has never seen."""
    name = source or Path(path).stem
    raw = Path(path).read_text(encoding="utf-8-sig", errors="replace")
    if Path(path).suffix.lower() == ".csv":
        for row in csv.DictReader(io.StringIO(raw)):
            label = (row.get("label") or row.get("sentiment") or "").strip().lower()
            if label in LABELS and row.get("text"):
                yield Example(row["text"], label, name)
        return
    for line in raw.splitlines():
        text, _, label = line.rpartition("@")
        if text and label.strip().lower() in LABELS:
            yield Example(text.strip(), label.strip().lower(), name)


def strip_publisher(title: str) -> str:
    head, sep, tail = title.rpartition(" - ")
    return head if sep and len(tail) < 40 else title


def shared_examples(data_dir: Path) -> list[Example]:
    """Both shared labelled sets, in file order."""
    return [*read_finbert_ds4a(data_dir / FINBERT_DS4A), *read_textblob_nyu(data_dir / TEXTBLOB_NYU)]


# The shipped model's recipe. FinBERT's labels carry finance sentiment; TextBlob's carry a general
# lexicon's view of the article text, so the NYU set adds vocabulary at a low weight only. Chosen
# on two human-labelled finance sets the model never trains on (Financial PhraseBank, Twitter
# Financial News; README, Sentiment), macro-F1 there: 0.596/0.575 as shipped, 0.614/0.577 without
# the TextBlob set, 0.565/0.493 with it at weight 1. A strong L2 on the n-grams and none on the
# five lexicon weights is what carries to other text.
TRAIN_WEIGHTS: dict[str, float] = {"finbert_ds4a": 1.0, "textblob_nyu": 0.03}
TRAIN_L2 = 0.3


def weighted(examples: list[Example], weights: dict[str, float] = TRAIN_WEIGHTS) -> list[Example]:
    return [Example(e.text, e.label, e.source, weights.get(e.source, 1.0)) for e in examples if weights.get(e.source, 1.0) > 0]


def train_default(data_dir: Path) -> LinearModel:
    """The shipped model, rebuilt from the shared labelled sets (deterministic)."""
    from agents.sentiment_training import fit

    model = fit(weighted(shared_examples(data_dir)), default_lexicon(), l2=TRAIN_L2)
    digest = hashlib.sha256(orjson.dumps(model.to_dict(), option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
    model.meta.update({"id": f"lr-{digest}", "weights": TRAIN_WEIGHTS})
    return model


def settings_scorer(settings: Any) -> Scorer:
    """The scorer that ``Settings`` describe: the model file and the asset table with its additions."""
    assets = AssetTable({**DEFAULT_ASSETS, **{k.upper(): tuple(v) for k, v in settings.agents.sentiment_assets.items()}})
    return default_scorer(assets, settings.agents.sentiment_model_path)
