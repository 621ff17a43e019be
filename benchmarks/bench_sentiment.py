"""Sentiment: scoring speed beside plain VADER on the same headlines, and the model's accuracy.

Speed: the shared headlines (both files, titles) scored by the shipped scorer (label, score and
assets) and by vaderSentiment's ``polarity_scores`` in the same process, medians of the runs.
Accuracy: macro-F1 of 5-fold cross-validation per shared labelled set (trained on the mix the
shipped model uses), trained on one set and tested on the other, and plain VADER's on each set.
With ``SENTIMENT_EVAL=path[,path]`` (labelled text never trained on, ``text@label`` lines or CSV
``text,label``, e.g. Financial PhraseBank) the shipped model's macro-F1 on those files too.

    .venv/bin/python -m benchmarks.bench_sentiment [--runs 5]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from agents.sentiment import macro_f1
from agents.sentiment_model import TRAIN_L2, default_lexicon, default_scorer, read_labelled, shared_examples, weighted
from agents.sentiment_training import cross_dataset, cross_validate, evaluate
from benchmarks.common import console, median, spread, table, timed
from streams.settings import PROJECT_ROOT

DATA = PROJECT_ROOT.parent / "shared" / "data"


def vader_label(analyzer: SentimentIntensityAnalyzer, text: str) -> str:
    c = analyzer.polarity_scores(text)["compound"]
    return "positive" if c >= 0.05 else "negative" if c <= -0.05 else "neutral"


def main(runs: int = 5) -> None:
    if not (DATA / "crypto_news").is_dir():
        console.print(f"sentiment: skipped, {DATA}/crypto_news absent")
        return
    examples = shared_examples(DATA)
    texts = [e.text.split(". ", 1)[0] if e.source == "textblob_nyu" else e.text for e in examples]  # headlines only
    scorer = default_scorer()
    vader = SentimentIntensityAnalyzer()
    ours = [len(texts) / timed(lambda: scorer.score_many(texts)) for _ in range(runs)]
    base = [len(texts) / timed(lambda: [vader.polarity_scores(t) for t in texts]) for _ in range(runs)]
    t = table(f"sentiment scoring, {len(texts):,} shared headlines, 1 process, {runs} runs", "scorer", "headlines/s", "runs min-max", "vs VADER")
    t.add_row("tickflow (label, score, assets)", f"{median(ours):,.0f}", spread(ours), f"{median(ours) / median(base):.2f}x")
    t.add_row("plain VADER polarity_scores", f"{median(base):,.0f}", spread(base), "1.00x")
    console.print(t)

    lex = default_lexicon()
    mix = weighted(examples)
    acc = table("sentiment macro-F1 (3 classes)", "evaluation", "tickflow", "plain VADER")
    for name, f1 in cross_validate(mix, lex, l2=TRAIN_L2).items():
        held = [e for e in examples if e.source == name]
        acc.add_row(f"5-fold cross-validated on {name}", f"{f1:.3f}", f"{macro_f1([e.label for e in held], [vader_label(vader, e.text) for e in held]):.3f}")
    for (train, test), f1 in cross_dataset(mix, lex, l2=TRAIN_L2).items():
        acc.add_row(f"trained on {train} only, tested on {test}", f"{f1:.3f}", "")
    for path in filter(None, os.environ.get("SENTIMENT_EVAL", "").split(",")):
        held = list(read_labelled(Path(path)))
        acc.add_row(f"shipped model on {Path(path).name} ({len(held):,}, never trained on)", f"{evaluate(scorer.model, lex, held):.3f}",
                    f"{macro_f1([e.label for e in held], [vader_label(vader, e.text) for e in held]):.3f}")
    console.print(acc)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    main(p.parse_args().runs)
