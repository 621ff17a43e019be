"""The agents a worker runs, in pipeline order: one :class:`agents.spec.AgentSpec` each."""

from __future__ import annotations

from agents.candle_agent import CANDLES
from agents.indicator_agent import INDICATORS
from agents.onchain_agent import ONCHAIN, ONCHAIN_PRICES
from agents.risk_agent import RISK
from agents.sentiment_agent import SPEC as SENTIMENT
from agents.signal_agent import SIGNALS
from agents.spec import AgentSpec

AGENTS: tuple[AgentSpec, ...] = (CANDLES, INDICATORS, ONCHAIN_PRICES, ONCHAIN, SENTIMENT, SIGNALS, RISK)


def agent_spec(name: str) -> AgentSpec:
    for spec in AGENTS:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown agent {name!r}; known: {', '.join(s.name for s in AGENTS)}")
