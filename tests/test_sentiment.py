"""The pure scorer, its asset table, training, the shipped model file and `tickflow sentiment score`."""

from __future__ import annotations

import subprocess
import sys

from agents.sentiment import DEFAULT_ASSETS, AssetTable, LinearModel, Scorer, features, lexicon_table, macro_f1, tokens
from agents.sentiment_model import MODEL_PATH, default_lexicon, default_scorer, load_model, read_finbert_ds4a
from agents.sentiment_training import Example, cross_validate, fit
from tests.conftest import data_path


def test_assets_names_tickers_cashtags_pairs_and_extension():
    t = AssetTable()
    assert t.find("Bitcoin and ether rally; XBT futures open") == ("BTC", "ETH")
    assert t.find("$sol and $Eth pumping, BTCUSDT flat") == ("SOL", "ETH", "BTC")
    assert t.find("Solana outage: SOL drops") == ("SOL",)
    assert t.find("a sol of sunshine, link in bio, ether-net") == ("ETH",)  # prose "sol"/"link" are no assets
    assert t.find("Stocks fall as the Fed hikes") == ()  # market-wide
    assert t.find("Shiba Inu burns tokens; Bitcoin Cash forks") == ("SHIB", "BCH")
    assert t.find("BITCOIN NEAR RECORD AS SOL AND LINK RALLY") == ("BTC",)  # capitals: word tickers name nothing
    assert t.find("BITCOIN NEAR RECORD AS $SOL RALLIES") == ("BTC", "SOL")
    assert t.find("NEAR Protocol and LINK holders vote") == ("NEAR", "LINK")
    ext = AssetTable({**DEFAULT_ASSETS, "PEPE": ("pepe",)})
    assert ext.find("PEPE and pepe memes") == ("PEPE",)


def test_negation_marks_and_flips_lexicon():
    lex = lexicon_table({"good": 1.9})
    grams, dense = features("Bitcoin is not good", lex)
    assert "not_good" in grams and "good" not in grams
    assert dense[0] == 0 and dense[1] > 0  # VADER positive word under negation counts negative
    grams, dense = features("Bitcoin surges", lex)
    assert dense[2] > 0 and dense[4] == 0  # finance lexicon: "surges"
    assert tokens("BTC up 12% to $30,000") == ["btc", "up", "<pct>", "to", "<num>"]


def test_shipped_model_scores_in_range_and_sensibly():
    scorer = default_scorer()
    assert MODEL_PATH.stat().st_size < 5_000_000
    pos = scorer.score("Bitcoin surges to a record high as ETF inflows jump")
    neg = scorer.score("Crypto exchange hacked, Solana plunges 20% amid panic selling")
    assert pos.label == "positive" and neg.label == "negative" and pos.score > 0 > neg.score
    assert neg.assets == ("SOL",)
    for s in scorer.score_many(["", "!!!", "Ethereum"]):
        assert -1 <= s.score <= 1 and s.label in ("positive", "negative", "neutral")


def test_model_round_trip_and_macro_f1():
    m = load_model()
    again = LinearModel.from_dict(m.to_dict())
    lex = default_lexicon()
    texts = ["Bitcoin slumps", "ETH rallies", "Markets wait"]
    assert [Scorer(m, lex).score(t) for t in texts] == [Scorer(again, lex).score(t) for t in texts]
    assert macro_f1(["positive", "negative", "neutral"], ["positive", "negative", "neutral"]) == 1.0
    assert abs(macro_f1(["positive", "negative"], ["positive", "positive"]) - (2 / 3) / 3) < 1e-9


def test_training_is_deterministic_and_learns_from_the_shared_headlines():
    examples = list(read_finbert_ds4a(data_path("crypto_news", "crypto_news_finbert_ds4a.csv")))[:1200]
    lex = default_lexicon()
    a, b = fit(examples, lex, l2=0.1, epochs=60), fit(examples, lex, l2=0.1, epochs=60)
    assert a.to_dict() == b.to_dict()
    cv = cross_validate(examples, lex, folds=3, l2=0.1, epochs=60)
    majority = macro_f1([e.label for e in examples], ["neutral"] * len(examples))
    assert cv["finbert_ds4a"] > majority + 0.2


def test_fit_separates_a_toy_set():
    ex = [Example(f"coin {w} today", lab, "toy") for w, lab in [("soars", "positive"), ("gains", "positive"), ("crashes", "negative"), ("plunges", "negative"), ("opens", "neutral"), ("lists", "neutral")] * 5]
    m = fit(ex, lexicon_table({}), l2=1e-4, epochs=200)
    s = Scorer(m, lexicon_table({}))
    assert [s.score(e.text).label for e in ex[:6]] == [e.label for e in ex[:6]]


def test_cli_score_one_csv_line_per_input_in_order():
    text = "Bitcoin surges to a record high\n\nEthereum exchange hacked, ETH plunges\nmarket, \"quoted\"\n"
    r = subprocess.run([sys.executable, "-m", "streams", "sentiment", "score"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("positive,") and lines[0].endswith(",BTC")
    assert lines[1].endswith(",") and lines[2].startswith("negative,") and lines[2].endswith(",ETH")
