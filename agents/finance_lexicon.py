"""Finance and crypto polarity words that a general lexicon (VADER) misses or gets wrong.

VADER was built on social media: it has no "bullish", "plunge" or "liquidation", and it scores
"crash" and "gain" but not "slump", "rally" or "delist". These lists give the scorer a signal on
words the training headlines are too few to teach it; their weight is learned with the rest.
Inflected forms are listed, not stemmed, so a lookup stays one dict access per token.
"""

from __future__ import annotations


def _forms(*stems: str) -> set[str]:
    """A stem and its usual inflections (surge -> surges, surged, surging)."""
    out: set[str] = set()
    for s in stems:
        out.add(s)
        if s.endswith("e"):
            out.update((s + "s", s + "d", s[:-1] + "ing"))
        elif s.endswith("y") and len(s) > 3 and s[-2] not in "aeiou":
            out.update((s[:-1] + "ies", s[:-1] + "ied", s + "ing"))
        else:
            out.update((s + "s", s + "ed", s + "ing"))
    return out


POSITIVE: frozenset[str] = frozenset(
    _forms(
        "surge", "soar", "rally", "jump", "climb", "rise", "gain", "rebound", "recover", "advance",
        "skyrocket", "spike", "boost", "outperform", "beat", "exceed", "top", "profit", "grow",
        "expand", "improve", "strengthen", "approve", "adopt", "partner", "upgrade", "accumulate",
        "attract", "win", "award", "succeed", "breakout", "moon", "pump", "double", "triple",
        "launch", "integrate", "support", "welcome", "embrace", "back", "invest", "raise", "fund",
        "increase", "lift", "benefit", "secure", "achieve", "overtake", "reclaim", "record",
        "bolster", "accelerate", "upturn", "sign", "acquire", "deliver",
    )
    | {
        "bullish", "bull", "bulls", "uptrend", "upside", "upbeat", "optimism", "optimistic", "positive",
        "strong", "stronger", "strongest", "robust", "solid", "healthy", "higher", "highs", "high",
        "growth", "profitable", "profits", "profit", "gains", "record", "milestone", "breakthrough",
        "adoption", "approval", "approved", "inflows", "inflow", "green", "ath", "all-time", "soaring",
        "success", "successful", "lucrative", "favorable", "favourable", "opportunity", "opportunities",
        "upgrade", "upgraded", "partnership", "partnerships", "dividend", "dividends", "recovery",
        "rebound", "momentum", "confidence", "confident", "booming", "boom", "winner", "winners",
        "best", "better", "improved", "improvement", "increase", "increased", "rise", "rises",
        "expansion", "demand", "legal", "legalize", "legalizes", "legalized", "tax-free", "innovative",
        "innovation", "leading", "leader", "efficient", "reward", "rewards", "bullrun", "outperforms",
        "rose", "risen", "grew", "grown", "won", "upswing", "surplus", "beats", "soared", "climbed",
    }
)

NEGATIVE: frozenset[str] = frozenset(
    _forms(
        "plunge", "plummet", "tumble", "slump", "slide", "sink", "drop", "fall", "decline", "dip",
        "crash", "collapse", "tank", "dump", "slip", "shed", "lose", "erase", "wipe", "retreat",
        "hack", "exploit", "steal", "scam", "defraud", "ban", "restrict", "crack", "sue", "fine",
        "charge", "arrest", "halt", "suspend", "freeze", "delist", "liquidate", "default", "warn",
        "fear", "worry", "threaten", "struggle", "fail", "miss", "cut", "lay", "downgrade", "probe",
        "investigate", "reject", "deny", "delay", "weaken", "shrink", "decrease", "underperform",
        "sell", "flee", "outflow", "bleed", "sour", "hurt", "damage", "attack", "drain", "burn",
        "penalize", "sanction", "accuse", "allege", "manipulate", "slash", "stall", "stumble",
    )
    | {
        "bearish", "bear", "bears", "downtrend", "downside", "pessimism", "pessimistic", "negative",
        "weak", "weaker", "weakest", "lower", "lows", "low", "loss", "losses", "lost", "fell", "fallen",
        "sold", "selloff", "sell-off", "sank", "sunk", "slid", "bankrupt", "bankruptcy", "insolvent",
        "insolvency", "fraud", "fraudulent", "scam", "scams", "ponzi", "hack", "hacked", "hacker",
        "hackers", "exploit", "theft", "stolen", "lawsuit", "lawsuits", "litigation", "crackdown",
        "ban", "banned", "illegal", "liquidation", "liquidations", "outflows", "red", "crisis",
        "turmoil", "volatile", "volatility", "risk", "risks", "risky", "bubble", "panic", "fud",
        "uncertainty", "uncertain", "concern", "concerns", "warning", "warnings", "threat", "threats",
        "decline", "declines", "layoffs", "layoff", "recession", "inflation", "worst", "worse",
        "trouble", "troubled", "problem", "problems", "failure", "failed", "collapse", "contagion",
        "capitulation", "rug", "rugpull", "rekt", "bleeding", "downturn", "slowdown", "shortfall",
        "deficit", "debt", "penalty", "penalties", "fine", "fined", "investigation", "subpoena",
        "bust", "plunge", "slump", "weakness", "pressure", "difficult", "difficulties", "challenging",
        "shrank", "shrunk", "slashed", "lost", "losing", "loses", "loss-making", "writedown", "impairment",
    }
)

# A word on both lists ("fine", "charge", "back", "low"...) has no sign of its own: the n-gram
# weights decide it from its context.
_BOTH = POSITIVE & NEGATIVE
POSITIVE = frozenset(POSITIVE - _BOTH)
NEGATIVE = frozenset(NEGATIVE - _BOTH)
