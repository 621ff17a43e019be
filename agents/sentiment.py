"""Sentiment of financial text: label, score in [-1, 1] and the crypto assets it names.

Pure and I/O-free: the model's weights and the general lexicon come in as data
(``agents.sentiment_model`` loads the shipped file). The scorer is a multinomial logistic
regression over

- word unigrams and bigrams, with the three words after a negator marked (``not_gain``), and
- a few dense lexicon features: VADER valences and a finance/crypto word list
  (``agents.finance_lexicon``), negation-aware, so words the training text never showed still
  count.

score = P(positive) - P(negative); label = the most probable class. One text costs a regex pass
and a few dozen dict lookups (no numpy on the hot path), so a worker scores tens of thousands of
headlines a second.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.finance_lexicon import NEGATIVE as FIN_NEGATIVE
from agents.finance_lexicon import POSITIVE as FIN_POSITIVE

LABELS: tuple[str, str, str] = ("negative", "neutral", "positive")
MARKET = "MARKET"  # the asset of a text that names none: market-wide

# Assets: ticker -> names. Names match as whole words in any case; tickers match in capitals
# ("SOL", "ETH") or as cashtags in any case ("$sol"), so "sol" or "link" in prose names nothing.
DEFAULT_ASSETS: dict[str, tuple[str, ...]] = {
    "BTC": ("bitcoin", "bitcoins", "xbt"),
    "ETH": ("ethereum", "ether"),
    "SOL": ("solana",),
    "XRP": ("ripple", "xrp"),
    "ADA": ("cardano",),
    "DOGE": ("dogecoin", "doge"),
    "DOT": ("polkadot",),
    "LTC": ("litecoin",),
    "BNB": ("binance coin", "bnb"),
    "USDT": ("tether", "usdt"),
    "USDC": ("usdc",),
    "AVAX": ("avalanche avax",),
    "LINK": ("chainlink",),
    "MATIC": ("polygon matic",),
    "TRX": ("tron",),
    "SHIB": ("shiba inu", "shib"),
    "XLM": (),
    "ATOM": (),
    "UNI": ("uniswap",),
    "XMR": ("monero",),
    "BCH": ("bitcoin cash",),
    "ETC": ("ethereum classic",),
    "LUNA": ("terra luna", "luna"),
    "NEAR": (),
    "APT": ("aptos",),
    "ARB": ("arbitrum",),
    "TON": ("toncoin",),
}
_QUOTES = ("USDT", "USDC", "BUSD", "USD", "EUR", "BTC", "ETH")
# Tickers that are English words: in a headline written in capitals ("BITCOIN NEAR RECORD") they
# name nothing unless written as cashtags.
WORD_TICKERS = frozenset({"NEAR", "TON", "LINK", "UNI", "APT", "ARB", "ATOM", "DOT", "SOL", "ONE", "GAS", "OP", "CAKE", "GALA", "FLOW", "SAND", "MANA"})
_WORD = re.compile(r"\$?[A-Za-z][A-Za-z0-9]*")
_TOKEN = re.compile(r"[a-z][a-z0-9'\-]*[a-z0-9]|[a-z]|\d+(?:[.,]\d+)*%?")
_NEGATORS = frozenset(
    "not no never none nor nothing nobody neither without cannot cant isnt arent wasnt werent dont doesnt didnt "
    "wont wouldnt shouldnt couldnt hasnt havent hadnt aint fails fail failed lack lacks".split()
) | frozenset(w + "n't" for w in "is are was were do does did wo would should could has have had ai ca".split())
_NEGATION_SPAN = 3


@dataclass(frozen=True, slots=True)
class Sentiment:
    label: str  # negative | neutral | positive
    score: float  # P(positive) - P(negative), in [-1, 1]
    assets: tuple[str, ...]  # tickers named, in order of first mention; () = market-wide


class AssetTable:
    """Which assets a text names. Extend it with ``AssetTable({**DEFAULT_ASSETS, "PEPE": ("pepe",)})``."""

    def __init__(self, assets: Mapping[str, Iterable[str]] = DEFAULT_ASSETS) -> None:
        self.tickers: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.phrases: dict[str, dict[str, str]] = {}  # first word -> {"rest of phrase": ticker}
        for ticker, names in assets.items():
            t = ticker.upper()
            self.tickers[t] = t
            for name in names:
                words = name.lower().split()
                if len(words) == 1:
                    self.names.setdefault(words[0], t)
                else:
                    self.phrases.setdefault(words[0], {})[" ".join(words[1:])] = t

    def find(self, text: str) -> tuple[str, ...]:
        found: dict[str, None] = {}
        words = _WORD.findall(text)
        shouting = sum(1 for w in words if w.isupper()) * 2 > len(words)
        for i, w in enumerate(words):
            if w[0] == "$":
                t = self.tickers.get(w[1:].upper())
                if t:
                    found[t] = None
                continue
            low = w.lower()
            phrases = self.phrases.get(low)
            if phrases and i + 1 < len(words):
                rest = words[i + 1].lower()
                t = phrases.get(rest) or (phrases.get(f"{rest} {words[i + 2].lower()}") if i + 2 < len(words) else None)
                if t:
                    found[t] = None
                    continue
            t = self.names.get(low)
            if t:
                found[t] = None
            elif w.isupper() and len(w) > 1 and not (shouting and w in WORD_TICKERS):
                t = self.tickers.get(w) or self._pair(w)
                if t:
                    found[t] = None
        return tuple(found)

    def _pair(self, w: str) -> str | None:
        """BTCUSDT, ETHBTC: the base asset of a trading pair written as one word."""
        for q in _QUOTES:
            if w.endswith(q) and len(w) > len(q):
                return self.tickers.get(w[: -len(q)])
        return None


def tokens(text: str) -> list[str]:
    """Lower-case words and numbers; numbers collapse to ``<num>``/``<pct>`` so a price is no feature."""
    out = _TOKEN.findall(text.lower())
    for i, t in enumerate(out):
        if t[0].isdigit():
            out[i] = "<pct>" if t[-1] == "%" else "<num>"
    return out


# Dense features, in this order, after the n-grams: names are part of the model file.
DENSE = ("lex_vader_pos", "lex_vader_neg", "lex_fin_pos", "lex_fin_neg", "lex_none")


def lexicon_table(vader: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """One lookup per token: word -> (VADER valence / 4, finance sign)."""
    table: dict[str, tuple[float, float]] = {w: (v / 4.0, 0.0) for w, v in vader.items()}
    for w in FIN_POSITIVE:
        table[w] = (table.get(w, (0.0, 0.0))[0], 1.0)
    for w in FIN_NEGATIVE:
        table[w] = (table.get(w, (0.0, 0.0))[0], -1.0)
    return table


def features(text: str, lexicon: Mapping[str, tuple[float, float]]) -> tuple[list[str], list[float]]:
    """The text's n-gram features and its dense lexicon features (same for training and scoring)."""
    toks = tokens(text)
    grams: list[str] = []
    vpos = vneg = fpos = fneg = 0.0
    negated = 0
    prev = "<s>"
    for t in toks:
        if t in _NEGATORS:
            negated = _NEGATION_SPAN
            grams.append(t)
            grams.append(prev + " " + t)
            prev = t
            continue
        g = "not_" + t if negated else t
        grams.append(g)
        grams.append(prev + " " + t)
        prev = t
        lex = lexicon.get(t)
        if lex is not None:
            v, f = lex
            if negated:
                v, f = -0.74 * v, -f
            if v > 0:
                vpos += v
            else:
                vneg -= v
            if f > 0:
                fpos += f
            elif f < 0:
                fneg -= f
        if negated:
            negated -= 1
    grams.append(prev + " </s>")
    dense = [_squash(vpos), _squash(vneg), _squash(fpos), _squash(fneg), 1.0 if vpos + vneg + fpos + fneg == 0 else 0.0]
    return grams, dense


def _squash(x: float) -> float:
    return x / (1.0 + x)


@dataclass(slots=True)
class LinearModel:
    """Weights of the three classes: per n-gram, per dense feature, and a bias."""

    grams: dict[str, tuple[float, float, float]]
    dense: list[tuple[float, float, float]]
    bias: tuple[float, float, float]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": list(LABELS),
            "dense_features": list(DENSE),
            "bias": [round(b, 5) for b in self.bias],
            "dense": [[round(w, 5) for w in row] for row in self.dense],
            "grams": {g: [round(w, 4) for w in ws] for g, ws in self.grams.items()},
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LinearModel:
        if tuple(d["labels"]) != LABELS or tuple(d["dense_features"]) != DENSE:
            raise ValueError(f"sentiment model has labels {d['labels']} and features {d['dense_features']}; this version needs {LABELS} and {DENSE}")
        return cls(
            grams={g: (float(w[0]), float(w[1]), float(w[2])) for g, w in d["grams"].items()},
            dense=[(float(r[0]), float(r[1]), float(r[2])) for r in d["dense"]],
            bias=(float(d["bias"][0]), float(d["bias"][1]), float(d["bias"][2])),
            meta=dict(d.get("meta", {})),
        )


class Scorer:
    """Scores texts with a :class:`LinearModel`, a lexicon table and an :class:`AssetTable`."""

    def __init__(self, model: LinearModel, lexicon: Mapping[str, tuple[float, float]], assets: AssetTable | None = None) -> None:
        self.model = model
        self.lexicon = lexicon
        self.assets = assets or AssetTable()
        self.model_id = str(model.meta.get("id", "unversioned"))

    def probabilities(self, text: str) -> tuple[float, float, float]:
        m = self.model
        grams, dense = features(text, self.lexicon)
        s0, s1, s2 = m.bias
        get = m.grams.get
        for g in grams:
            w = get(g)
            if w is not None:
                s0 += w[0]
                s1 += w[1]
                s2 += w[2]
        for x, w in zip(dense, m.dense):
            if x:
                s0 += x * w[0]
                s1 += x * w[1]
                s2 += x * w[2]
        top = max(s0, s1, s2)
        e0, e1, e2 = math.exp(s0 - top), math.exp(s1 - top), math.exp(s2 - top)
        z = e0 + e1 + e2
        return e0 / z, e1 / z, e2 / z

    def score(self, text: str) -> Sentiment:
        p = self.probabilities(text)
        label = LABELS[p.index(max(p))]
        return Sentiment(label, round(p[2] - p[0], 4), self.assets.find(text))

    def score_many(self, texts: Sequence[str]) -> list[Sentiment]:
        return [self.score(t) for t in texts]


def macro_f1(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str] = LABELS) -> float:
    """Unweighted mean of the per-class F1 scores (a class never seen nor predicted counts 0)."""
    f1s = []
    for c in labels:
        tp = sum(1 for t, p in zip(truth, predicted) if t == c and p == c)
        fp = sum(1 for t, p in zip(truth, predicted) if t != c and p == c)
        fn = sum(1 for t, p in zip(truth, predicted) if t == c and p != c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s)
