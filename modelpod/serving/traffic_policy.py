"""A model's traffic policy as data: weights over its versions (optionally sticky by a request key)
and a shadow version; parsed from a document or the `--traffic` flag, checked, and applied.

Pure: no server, no files. `Traffic` (traffic.py) keeps one per model and saves it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from modelpod.errors import InvalidInput
from modelpod.serving.rollout_rules import RolloutRules, rules_of

MAX_WEIGHT = 1e12  # weights are relative; a bound keeps their sum finite


@dataclass(frozen=True)
class Shadow:
    version: str
    share: float  # of the requests the split answers, 0 < share <= 1


@dataclass(frozen=True)
class TrafficPolicy:
    split: dict[str, float] = field(default_factory=dict)  # version -> weight; empty: the default
    sticky: bool = False  # a request's key (header) picks its version, so one user keeps one
    shadow: Shadow | None = None
    rollout: RolloutRules | None = None  # a candidate version watched, stepped up, rolled back

    def choose(self, key: str | None) -> str | None:
        """The version a request to the bare model name goes to; None: the model's default."""
        if not self.split:
            return None
        total = sum(self.split.values())
        point = _point_of(key) if self.sticky and key else random.random()
        point *= total
        for version, weight in self.split.items():
            point -= weight
            if point < 0:
                return version
        return next(reversed(self.split))  # floating-point rounding at the very top

    def shadows(self) -> str | None:
        """The shadow version if this request should also go to it (a draw against its share)."""
        if self.shadow is None or random.random() >= self.shadow.share:
            return None
        return self.shadow.version

    def document(self) -> dict[str, Any]:
        shadow = None if self.shadow is None else {"version": self.shadow.version, "share": self.shadow.share}
        rollout = None if self.rollout is None else self.rollout.document()
        return {"split": dict(self.split), "sticky": self.sticky, "shadow": shadow, "rollout": rollout}

    def versions(self) -> set[str]:
        return set(self.split) | ({self.shadow.version} if self.shadow else set())


def _point_of(key: str) -> float:
    """A stable point in [0, 1) for a key: the same key always lands on the same version."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def policy_of(document: Any) -> TrafficPolicy:
    """A policy from `{"split": {"1": 90, "2": 10}, "sticky": true, "shadow": {"version": "3",
    "share": 0.5}}`; every part optional; InvalidInput naming what is wrong."""
    if not isinstance(document, dict):
        raise InvalidInput('a traffic policy must be an object like {"split": {"1": 90, "2": 10}}')
    unknown = set(document) - {"split", "sticky", "shadow", "rollout"}
    if unknown:
        raise InvalidInput(
            f"unknown traffic policy fields {sorted(unknown)}; use split, sticky, shadow, rollout"
        )
    sticky = document.get("sticky", False)
    if not isinstance(sticky, bool):
        raise InvalidInput(f"sticky must be true or false, not {sticky!r}")
    split, shadow = _split_of(document.get("split") or {}), _shadow_of(document.get("shadow"))
    return TrafficPolicy(split, sticky, shadow, _rollout_of(document.get("rollout"), split, shadow))


def _rollout_of(document: Any, split: dict[str, float], shadow: Shadow | None) -> RolloutRules | None:
    """The rules, whose candidate is a version of the split or the shadow."""
    rules = rules_of(document)
    if rules is None:
        return None
    shadowed = shadow is not None and shadow.version == rules.version
    if rules.version not in split and not shadowed:
        raise InvalidInput(
            f"the rollout's version {rules.version!r} is neither in the split nor the shadow: "
            'give it a weight (e.g. "split": {"1": 90, "2": 10}) or make it the shadow'
        )
    if rules.min_agreement is not None and not shadowed:
        raise InvalidInput("rollout min_agreement needs the rollout's version to be the shadow")
    return rules


def _split_of(split: Any) -> dict[str, float]:
    if not isinstance(split, dict):
        raise InvalidInput('split must be an object of version: weight, like {"1": 90, "2": 10}')
    weights: dict[str, float] = {}
    for version, weight in split.items():
        if not version:
            raise InvalidInput('a version in the split is empty: name each version, like {"1": 90}')
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
            raise InvalidInput(f"the weight of version {version!r} must be a number >= 0, not {weight!r}")
        if not 0 <= weight <= MAX_WEIGHT:
            raise InvalidInput(f"the weight of version {version!r} must be at most {MAX_WEIGHT:g}")
        weights[str(version)] = float(weight)
    if weights and sum(weights.values()) <= 0:
        raise InvalidInput("the split's weights sum to zero: give at least one version a positive weight")
    return weights


def _shadow_of(shadow: Any) -> Shadow | None:
    if shadow is None:
        return None
    if not isinstance(shadow, dict) or not isinstance(shadow.get("version"), str | int):
        raise InvalidInput('shadow must be an object like {"version": "2", "share": 0.1}')
    share = shadow.get("share", 1.0)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        raise InvalidInput(f"the shadow's share must be a number in (0, 1], not {share!r}")
    return Shadow(str(shadow["version"]), float(share))


def parse_flag(text: str) -> dict[str, TrafficPolicy]:
    """`iris=1:90,2:10+sticky+shadow=3@0.1;echo=2:1` (the `--traffic` flag) as a policy per model."""
    policies: dict[str, TrafficPolicy] = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        name, separator, rest = entry.partition("=")
        if not separator or not name.strip():
            raise InvalidInput(
                f"traffic entry {entry!r} is not MODEL=VERSION:WEIGHT,... (e.g. iris=1:90,2:10)"
            )
        pairs, *options = rest.split("+")
        document: dict[str, Any] = {"split": _flag_split(entry, pairs)}
        for option in (o.strip() for o in options):
            if option == "sticky":
                document["sticky"] = True
            elif option.startswith("shadow="):
                version, _, share = option.removeprefix("shadow=").partition("@")
                document["shadow"] = {"version": version.strip(), "share": _number(entry, share or "1")}
            else:
                raise InvalidInput(
                    f"traffic entry {entry!r}: +{option} is not +sticky or +shadow=VERSION@SHARE"
                )
        policies[name.strip()] = policy_of(document)
    return policies


def _flag_split(entry: str, pairs: str) -> dict[str, Any]:
    split: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in pairs.split(","))):
        version, colon, weight = pair.partition(":")
        if not colon:
            raise InvalidInput(f"traffic entry {entry!r}: {pair!r} is not VERSION:WEIGHT")
        split[version.strip()] = _number(entry, weight)
    return split


def _number(entry: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidInput(f"traffic entry {entry!r}: {text!r} is not a number") from None
