"""A rollout's rules as data: which candidate version is watched, over what window, against which
bounds, and what passing a window does (step its weight up, then promote it). And the verdict of
one window's numbers against them.

Pure: no clock, no server. `Rollouts` (rollout.py) gathers the numbers and applies the verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelpod.errors import InvalidInput

ROLLBACK, STEP, PROMOTE, WAIT = "rollback", "step", "promote", "wait"
FIELDS = ("version", "window_seconds", "min_requests", "max_error_rate", "max_p99_seconds",
          "min_agreement", "steps", "promote")  # fmt: skip


@dataclass(frozen=True)
class RolloutRules:
    version: str  # the candidate: a version of the split (a canary) or the shadow's
    window_seconds: float = 60.0  # a step needs a whole window within bounds; a rollback does not wait
    min_requests: int = 20  # no verdict on fewer requests than this in the window
    max_error_rate: float | None = None  # failed / answered, of the candidate's requests
    max_p99_seconds: float | None = None
    min_agreement: float | None = None  # a shadow's: the share of its answers agreeing on every output
    steps: tuple[float, ...] = ()  # the candidate's share in percent, one step per passing window
    promote: bool = False  # once it passes at its last step: make it the model's default version

    def document(self) -> dict[str, Any]:
        return {name: (list(value) if name == "steps" else value) for name, value in vars(self).items()}


@dataclass(frozen=True)
class Numbers:
    """What the candidate did since its window started."""

    requests: int
    errors: int
    p99_seconds: float | None
    agreement: float | None  # None: nothing compared (a canary, or a shadow with no answers yet)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def document(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "error_rate": self.error_rate,
                "p99_seconds": self.p99_seconds, "agreement": self.agreement}  # fmt: skip


def verdict(rules: RolloutRules, numbers: Numbers, window_over: bool, last_step: bool) -> tuple[str, str]:
    """What to do now, and why: roll back as soon as enough requests cross a bound; step or promote
    once a whole window passed within them; else wait."""
    if numbers.requests < rules.min_requests:
        return WAIT, f"{numbers.requests} of {rules.min_requests} requests"
    crossed = _crossed(rules, numbers)
    if crossed:
        return ROLLBACK, crossed
    if not window_over:
        return WAIT, "within bounds; the window is not over"
    if not last_step:
        return STEP, "a window within bounds"
    if rules.promote:
        return PROMOTE, "a window within bounds at its last step"
    return WAIT, "within bounds at its last step; promote is off"


def _crossed(rules: RolloutRules, numbers: Numbers) -> str:
    """The bounds the numbers cross, in words ("" when none)."""
    crossed = []
    if rules.max_error_rate is not None and numbers.error_rate > rules.max_error_rate:
        crossed.append(f"error rate {numbers.error_rate:.3g} > {rules.max_error_rate:g}")
    if rules.max_p99_seconds is not None and (numbers.p99_seconds or 0.0) > rules.max_p99_seconds:
        crossed.append(f"p99 {numbers.p99_seconds:.3g} s > {rules.max_p99_seconds:g} s")
    agreement = numbers.agreement
    if rules.min_agreement is not None and agreement is not None and agreement < rules.min_agreement:
        crossed.append(f"agreement {agreement:.3g} < {rules.min_agreement:g}")
    return "; ".join(crossed)


def rules_of(document: Any) -> RolloutRules | None:
    """Rules from `{"version": "2", "window_seconds": 60, "min_requests": 100, "max_error_rate": 0.01,
    "steps": [25, 50, 100], "promote": true}`; InvalidInput naming what is wrong."""
    if document is None:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("version"), str | int):
        raise InvalidInput('rollout must be an object like {"version": "2", "max_error_rate": 0.01}')
    unknown = set(document) - set(FIELDS)
    if unknown:
        raise InvalidInput(f"unknown rollout fields {sorted(unknown)}; use {', '.join(FIELDS)}")
    min_requests = document.get("min_requests", 20)
    if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 1:
        raise InvalidInput(f"rollout min_requests must be an integer >= 1, not {min_requests!r}")
    promote = document.get("promote", False)
    if not isinstance(promote, bool):
        raise InvalidInput(f"rollout promote must be true or false, not {promote!r}")
    return RolloutRules(
        version=str(document["version"]),
        window_seconds=_bounded(document, "window_seconds", 60.0, 0.0, 86400.0),
        min_requests=min_requests,
        max_error_rate=_optional(document, "max_error_rate", 1.0),
        max_p99_seconds=_optional(document, "max_p99_seconds", 86400.0),
        min_agreement=_optional(document, "min_agreement", 1.0),
        steps=_steps_of(document.get("steps", [])),
        promote=promote,
    )


def _bounded(document: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = document.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
        raise InvalidInput(f"rollout {name} must be a number in ({low:g}, {high:g}], not {value!r}")
    return float(value)


def _optional(document: dict[str, Any], name: str, high: float) -> float | None:
    value = document.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise InvalidInput(f"rollout {name} must be a number in [0, {high:g}], not {value!r}")
    return float(value)


def _steps_of(steps: Any) -> tuple[float, ...]:
    if not isinstance(steps, list) or not all(
        isinstance(s, int | float) and not isinstance(s, bool) and 0 < s <= 100 for s in steps
    ):
        raise InvalidInput(
            f"rollout steps must be a list of percents in (0, 100], like [25, 50, 100], not {steps!r}"
        )
    if list(steps) != sorted(set(steps)):
        raise InvalidInput(f"rollout steps must rise, each once, like [25, 50, 100], not {steps!r}")
    return tuple(float(s) for s in steps)
