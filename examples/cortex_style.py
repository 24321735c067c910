"""A Cortex-style predictor: a plain class, no modelpod base class and no modelpod import.

    python examples/cortex_style.py

modelpod serves any class with `__init__(self, config)` and
`predict(self, payload, query_params=None)`: the request body is the payload, the query string
is `query_params`. This one scores sentiment with a small lexicon, flipping a word that
follows a negation ("not good").

Configuration: `threshold` (a score above it is positive, below minus it negative, default
0.2); `positive` / `negative` (extra words for the lexicon). A request may override the
threshold with `?threshold=0.5`.

A bad payload is answered with a `Response(status=400, ...)`: the predictor chooses its own
status. That is the one place modelpod is imported, so the class stays usable without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelpod.types import Response


def _lexicon(words: str) -> frozenset[str]:
    return frozenset(words.split())


POSITIVE = _lexicon(
    "good great excellent amazing awesome love loved lovely like liked nice happy fantastic "
    "wonderful best enjoy enjoyed perfect pleasant recommend superb brilliant fast helpful"
)
NEGATIVE = _lexicon(
    "bad awful terrible horrible hate hated poor worst boring slow broken ugly sad angry "
    "disappointing disappointed useless annoying wrong fail failed refund"
)
NEGATIONS = _lexicon("not no never don't doesn't didn't isn't wasn't aren't can't won't")
_WORD = re.compile(r"[a-z']+")
MAX_TEXT_LENGTH = 10_000


class SentimentPredictor:
    """Lexicon sentiment: +1 per positive word, -1 per negative word, averaged over those found."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.threshold = float(config.get("threshold", 0.2))
        self.positive = POSITIVE | _words(config.get("positive"))
        self.negative = NEGATIVE | _words(config.get("negative"))

    def predict(
        self, payload: Any, query_params: Mapping[str, str] | None = None
    ) -> dict[str, Any] | Response:
        """`payload`: {"text": "..."} or the text itself; answers label, score and the words."""
        text = payload.get("text") if isinstance(payload, Mapping) else payload
        if not isinstance(text, str) or not text.strip():
            return _bad_request('send {"text": "..."} with a non-empty string')
        if len(text) > MAX_TEXT_LENGTH:
            return _bad_request(f"text is longer than {MAX_TEXT_LENGTH} characters")
        threshold = self.threshold
        if query_params and "threshold" in query_params:
            try:
                threshold = float(query_params["threshold"])
            except ValueError:
                return _bad_request(f"threshold must be a number, not {query_params['threshold']!r}")

        score, matched = self.score(text)
        label = "positive" if score > threshold else "negative" if score < -threshold else "neutral"
        return {"label": label, "score": score, "matched": matched}

    def score(self, text: str) -> tuple[float, list[str]]:
        """The mean polarity of the lexicon words in `text` (0.0 when none), and those words."""
        total, matched, negated = 0, [], False
        for word in _WORD.findall(text.lower()):
            polarity = (word in self.positive) - (word in self.negative)
            if polarity:
                total += -polarity if negated else polarity
                matched.append(f"not {word}" if negated else word)
            negated = word in NEGATIONS
        return (total / len(matched) if matched else 0.0), matched


def _words(value: str | list[str] | None) -> frozenset[str]:
    """Extra lexicon words from the config: a list, or one space-separated string."""
    words = value.split() if isinstance(value, str) else value or ()
    return frozenset(word.lower() for word in words)


def _bad_request(message: str) -> Response:
    from modelpod.types import Response

    return Response(status=400, body={"error": message})


if __name__ == "__main__":
    from modelpod.runtime.runner import Runner

    with Runner(SentimentPredictor) as runner:
        print(runner.predict(payload={"text": "The service was great, not slow at all."}))
        print(runner.predict(payload={"text": 42}))
