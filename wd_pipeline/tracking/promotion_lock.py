"""A lock held in the MLflow registry itself, so only one run at a time can move ``@champion``.

Why: MLflow has no compare-and-set on aliases. Two runs that read the same champion and
then both call ``set_registered_model_alias`` both "win", and the later one can put a worse
model on ``@champion``. Promotion must therefore happen under mutual exclusion, and the
lock must live where the shared state lives — the registry — because runs racing for one
model name may share nothing else: two laptops, a CI job and a nightly deployment write to
one tracking server, each with its own (or an ephemeral) Prefect API. A Prefect global
concurrency limit only serialises runs that talk to the same Prefect API, a file lock only
processes on one machine; so neither is used, and the library stays free of Prefect.

How: the lock is a registered model named ``<model>.promotion-lock``. Creating a registered
model is the one atomic test-and-set MLflow offers: the name is the table's primary key, so
of two concurrent creates exactly one succeeds and the other gets
``RESOURCE_ALREADY_EXISTS`` — on a SQLite file and through a tracking server alike (both are
tested). The holder's identity (a random token, ``host:pid:start`` of its process) and an
expiry are written as tags in the same create, and the description says how to clear it by
hand. Releasing deletes it, in ``finally``.

A holder that died leaves its lock behind. It is *stale* when its owner process is known to
be gone (same host: pid and start time no longer match a running process) or, for owners on other hosts where
that cannot be checked, when its expiry has passed. A live owner on this host is never
broken. Breaking is a rename to ``<lock>.broken-<token>`` rather than a delete: two waiters
that found the same stale lock both try the rename, and only the first can succeed — the
second's target name already exists — so a waiter can never delete a lock that another
waiter has just taken. The renamed tombstones are removed once older than the TTL.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wd_pipeline import processes
from wd_pipeline.errors import TrackingError, first_line

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import RegisteredModel

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".promotion-lock"
BROKEN_INFIX = ".broken-"
TOKEN_TAG = "wd.lock.token"
OWNER_TAG = "wd.lock.owner"
EXPIRES_TAG = "wd.lock.expires"  # epoch seconds
TIMEOUT_ENV = "WD_PIPELINE_LOCK_TIMEOUT"
TTL_ENV = "WD_PIPELINE_LOCK_TTL"


@dataclass(frozen=True)
class LockSettings:
    """How long a holder may keep the lock, and how long a waiter waits for it.

    Promotion under the lock takes seconds (re-score the champion when it changed, a
    bootstrap, a few tags), so a 5-minute TTL only matters for a holder that died on another
    host; the 10-minute wait outlasts it, so a queue of waiters behind such a crash recovers.
    """

    ttl: float = 300.0
    timeout: float = 600.0
    poll: float = 0.5

    @classmethod
    def from_env(cls) -> LockSettings:
        """Defaults, overridden by ``WD_PIPELINE_LOCK_TIMEOUT`` / ``WD_PIPELINE_LOCK_TTL`` (seconds)."""
        defaults = cls()
        return cls(ttl=_seconds(TTL_ENV, defaults.ttl), timeout=_seconds(TIMEOUT_ENV, defaults.timeout))


def _seconds(variable: str, default: float) -> float:
    text = os.environ.get(variable, "")
    try:
        return float(text) if text else default
    except ValueError:
        raise TrackingError(f"{variable}={text!r} is not a number of seconds") from None


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as read from its tags."""

    token: str
    owner: str
    expires: float

    def stale(self, now: float) -> str | None:
        """Why this holder may be broken, or None while it may still be promoting."""
        alive = processes.identity_alive(self.owner) if self.owner else None
        if alive is False:
            return f"its owner process {self.owner} is gone"
        if alive is None and now > self.expires:
            return f"it expired {now - self.expires:.0f} s ago (owner {self.owner or 'unknown'})"
        return None


@dataclass(frozen=True)
class Lock:
    """A lock this process holds; ``waited`` is how long acquiring it took (seconds)."""

    client: MlflowClient
    name: str
    token: str
    waited: float

    def ensure_held(self) -> None:
        """Raise unless the lock is still ours (it could have been broken as expired)."""
        holder = read_holder(self.client, self.name)
        if holder is None or holder.token != self.token:
            raise TrackingError(
                f"lost the promotion lock {self.name!r} before moving the alias (it was broken as stale); "
                f"nothing was promoted — raise {TTL_ENV} if promotion takes this long"
            )


def lock_name(model_name: str) -> str:
    return f"{model_name}{LOCK_SUFFIX}"


def clear_hint(name: str) -> str:
    """How a user removes a lock by hand (the MLflow CLI has no command for it)."""
    return (
        f"if no run is promoting, delete registered model {name!r} in the MLflow UI or with "
        f"`python -c \"import mlflow; mlflow.MlflowClient().delete_registered_model('{name}')\"`"
    )


@contextmanager
def promotion_lock(client: MlflowClient, model_name: str, settings: LockSettings | None = None) -> Iterator[Lock]:
    """Hold ``<model_name>.promotion-lock`` for the body; always released, even on failure."""
    lock = acquire(client, model_name, settings or LockSettings.from_env())
    try:
        yield lock
    finally:
        release(lock)


def acquire(client: MlflowClient, model_name: str, settings: LockSettings) -> Lock:
    """Create the lock, breaking a stale one, waiting at most ``settings.timeout`` seconds."""
    name, token, started = lock_name(model_name), uuid.uuid4().hex, time.monotonic()
    while True:
        if _try_create(client, name, token, settings.ttl):
            return Lock(client, name, token, time.monotonic() - started)
        holder = read_holder(client, name)
        if holder is not None and holder.token == token:  # created, but the answer was lost and the call retried
            return Lock(client, name, token, time.monotonic() - started)
        if holder is None:
            continue  # released between our create and our read: try again at once
        reason = holder.stale(time.time())
        if reason is not None and _break(client, name, holder, reason, settings.ttl):
            continue
        waited = time.monotonic() - started
        if waited >= settings.timeout:
            raise TrackingError(
                f"promotion lock {name!r} is held by {holder.owner or 'an unknown owner'} and was not released "
                f"within {settings.timeout:g} s ({TIMEOUT_ENV}); {clear_hint(name)}"
            )
        time.sleep(min(settings.poll * random.uniform(0.5, 1.5), max(settings.timeout - waited, 0.01)))


def release(lock: Lock) -> None:
    """Delete the lock if it is still ours; never raises (it runs in ``finally``)."""
    try:
        holder = read_holder(lock.client, lock.name)
        if holder is not None and holder.token == lock.token:
            lock.client.delete_registered_model(lock.name)
        else:
            log.warning("promotion lock %s was broken by another run before release", lock.name)
    except Exception as exc:  # a lock left behind is broken later as stale; don't mask the real error
        log.warning(
            "could not release promotion lock %s: %s; %s", lock.name, first_line(exc, 200), clear_hint(lock.name)
        )


def read_holder(client: MlflowClient, name: str) -> Holder | None:
    """The lock's holder, or None when there is no lock."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return _holder(model)


def _holder(model: RegisteredModel) -> Holder:
    """A lock made by hand may lack tags: then it expires a default TTL after its creation."""
    tags = model.tags or {}
    created_ms = model.creation_timestamp or 0
    try:
        expires = float(tags[EXPIRES_TAG])
    except (KeyError, ValueError):
        expires = created_ms / 1000 + LockSettings().ttl
    return Holder(tags.get(TOKEN_TAG) or f"untagged-{created_ms}", tags.get(OWNER_TAG, ""), expires)


def _try_create(client: MlflowClient, name: str, token: str, ttl: float) -> bool:
    """The test-and-set: True if this call created the lock, False if it already exists."""
    from mlflow.exceptions import MlflowException

    owner = processes.identity()
    tags = {TOKEN_TAG: token, OWNER_TAG: owner, EXPIRES_TAG: f"{time.time() + ttl:.3f}"}
    description = f"Promotion lock held by {owner} (wd-pipeline). Deleted when that run is done; {clear_hint(name)}."
    try:
        client.create_registered_model(name, tags=tags, description=description)
    except MlflowException as exc:
        # RESOURCE_DOES_NOT_EXIST: a waiter renamed a stale lock away while the store was
        # creating this one. Either way the caller reads the holder and tries again; a lock
        # that this call did create comes back with this call's token.
        if exc.error_code in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
            return False
        raise TrackingError(f"cannot create promotion lock {name!r}: {first_line(exc, 200)}") from exc
    return True


def _break(client: MlflowClient, name: str, holder: Holder, reason: str, ttl: float) -> bool:
    """Rename a stale lock out of the way; False when another waiter did it first (that is fine)."""
    tombstone = f"{name}{BROKEN_INFIX}{holder.token}"
    try:
        client.rename_registered_model(name, tombstone)
    except Exception as exc:  # another waiter broke it first (name taken or gone), or the store was busy
        log.info("did not break promotion lock %s: %s", name, first_line(exc, 200))
        return False
    log.warning("broke stale promotion lock %s (%s); kept as %s", name, reason, tombstone)
    _remove_old_tombstones(client, name, ttl)
    return True


def _remove_old_tombstones(client: MlflowClient, name: str, ttl: float) -> None:
    """Delete broken locks older than the TTL: no waiter still acts on what it read from them."""
    prefix = f"{name}{BROKEN_INFIX}"
    cutoff_ms = (time.time() - ttl) * 1000
    try:
        for model in client.search_registered_models(filter_string=f"name LIKE '{prefix}%'"):
            if model.name.startswith(prefix) and (model.last_updated_timestamp or 0) < cutoff_ms:
                client.delete_registered_model(model.name)
    except Exception as exc:  # tidying only
        log.info("could not remove old broken locks of %s: %s", name, first_line(exc, 200))
