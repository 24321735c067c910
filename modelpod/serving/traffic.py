"""Which version a request to a bare model name goes to: each model's traffic policy, set at start
(`--traffic`) or by an admin at run time, saved beside the model's versions and restored on restart.

A request that names a version is never re-routed. The policy is replaced as a whole (one
assignment on the event loop), so requests in flight finish on the version they were sent to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelpod.errors import InvalidInput, ModelpodError, NotFound
from modelpod.runtime.state_files import DamagedState, read_json, write_json
from modelpod.serving.repository import Repository
from modelpod.serving.traffic_policy import TrafficPolicy, policy_of

logger = logging.getLogger("modelpod.traffic")

TRAFFIC_FILE = "traffic.json"  # in the model's folder, beside default.json
NO_POLICY = TrafficPolicy()


class Traffic:
    """The traffic policies of a repository's models."""

    def __init__(self, repository: Repository, pool_size: int = 1) -> None:
        self.repository = repository
        self.pool_size = pool_size  # versions of a model kept loaded at once
        self.configured: dict[str, TrafficPolicy] = {}  # from the flag or environment, at start
        self._policies: dict[str, TrafficPolicy] = {}  # restored or set; read lazily per model
        # told of each bare-name request's policy when it has a rollout (`Rollouts.check`)
        self.on_rollout: Callable[[str, TrafficPolicy], None] | None = None

    def configure(self, policies: dict[str, TrafficPolicy]) -> None:
        """The policies the server was started with; InvalidInput for an unknown model or version."""
        for name, policy in policies.items():
            try:
                self.repository.get(name)
            except NotFound as error:
                raise InvalidInput(f"--traffic: {error}") from None
            self._check(name, policy)
            self.configured[name] = policy

    def version_for(self, name: str, version: str | None, key: str | None) -> str | None:
        """The version a request goes to: its own if it names one, else the policy's choice (None:
        the default)."""
        if version:
            return version
        policy = self.policy(name)
        if policy.rollout is not None and self.on_rollout is not None:
            self.on_rollout(name, policy)
            policy = self.policy(name)  # the rollout may have just changed it
        return policy.choose(key)

    def policy(self, name: str) -> TrafficPolicy:
        if name not in self._policies:
            self._policies[name] = self._restore(name)
        return self._policies[name]

    def set(self, name: str, document: Any) -> TrafficPolicy:
        """Check, save, then apply a new policy for the model (an empty object removes it)."""
        self.repository.get(name)
        policy = policy_of(document)
        self._check(name, policy)
        configured = self.configured.get(name, NO_POLICY).document()
        write_json(self._path(name), {"policy": policy.document(), "configured": configured})
        self._policies[name] = policy
        logger.info("%s: traffic policy set to %s", name, policy.document())
        if self.warning(name):
            logger.warning("%s: %s", name, self.warning(name))
        return policy

    def warning(self, name: str) -> str | None:
        """Why the policy will be slow: it sends traffic to more versions than the pool keeps, so
        each request may load the version it goes to (evicting another)."""
        versions = self.policy(name).versions() | {self.repository.get(name).default_version}
        if len(versions) <= self.pool_size:
            return None
        return (
            f"the policy uses {len(versions)} versions (with the default) but the pool keeps "
            f"{self.pool_size} per model: versions will be loaded and evicted in turn; "
            f"set MODELPOD_MODEL_POOL_SIZE to {len(versions)} or more"
        )

    def _check(self, name: str, policy: TrafficPolicy) -> None:
        for version in sorted(policy.versions()):
            try:
                self.repository.resolve(name, version)
            except (NotFound, InvalidInput) as error:
                raise InvalidInput(f"the traffic policy names an unknown version: {error}") from None

    def _restore(self, name: str) -> TrafficPolicy:
        """The saved policy, unless the server now starts with another configured one (someone
        chose again since) or the file is unreadable (logged; the configured one applies)."""
        configured = self.configured.get(name, NO_POLICY)
        path = self._path(name)
        try:
            saved = read_json(path)
            if saved is None:
                return configured
            if not isinstance(saved, dict):
                raise DamagedState(f"{path} is damaged: it holds no policy")
            if "configured" in saved and policy_of(saved["configured"]) != configured:
                return configured
            return policy_of(saved.get("policy"))
        except ModelpodError as error:
            logger.warning("%s: the saved traffic policy was not restored: %s", name, error)
            return configured

    def _path(self, name: str) -> Path:
        return self.repository.data_path / self.repository.get(name).name / TRAFFIC_FILE
