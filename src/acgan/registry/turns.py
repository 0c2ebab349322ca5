"""Concurrent ``acgan register`` runs against one registry: one version per trained ensemble,
and the champion rule applied in version order.

MLflow's registry has no locks and no compare-and-set, but it numbers versions atomically: the
store keys versions by (name, version), so two concurrent creations never get the same number,
and a version exists with all its tags (they are written in the same transaction) before a
higher one can be created. Both rules here build on that number:

- **Same ensemble** (:func:`keep_oldest`): two processes that both found no version of an
  ensemble both create one. Each then looks up the versions carrying the ensemble's hash; the
  lowest number wins, and the other process deletes its own version (and its logged model)
  and carries on with the winner as a re-registration.
- **Turns** (:func:`wait_for_turn`): a version's registration (aliases, champion rule, the
  final ``acgan.registration_complete`` tag) starts only when every older version still being
  registered has finished, so the rule runs in version order, as if the registrations had run
  one after the other, and the newest version ends as ``@candidate``. A version without that
  tag for longer than ``registry.turn_timeout_s`` after its creation is taken as abandoned (a
  killed process; the next registration of its ensemble finishes it).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from acgan.registry.model_log import HASH_TAG, delete_version
from acgan.retry import Retry

log = logging.getLogger(__name__)
DONE_TAG = "acgan.registration_complete"
POLL_S = (0.2, 2.0)  # first and longest pause between two looks at the registry


def keep_oldest(retry: Retry, client: Any, name: str, digest: str, mine: Any) -> tuple[Any, bool]:
    """``(version, created)`` after creating ``mine``: ``(mine, True)`` when it is the oldest
    version of this ensemble, else the oldest one (``created`` False) with ``mine`` deleted."""
    found = retry(
        "search model versions",
        lambda: client.search_model_versions(f"name='{name}' and tags.`{HASH_TAG}` = '{digest}'"),
    )
    older = [
        int(v.version)
        for v in found
        if int(v.version) < int(mine.version) and v.status != "FAILED_REGISTRATION"
    ]
    if not older:
        return mine, True
    first = min(older)
    log.info(
        "%s v%s already registers this ensemble (a concurrent `acgan register`); removing v%s",
        name,
        first,
        mine.version,
    )
    delete_version(retry, client, name, int(mine.version))
    if getattr(mine, "model_id", None):
        try:  # the duplicate upload: hidden from the UI (its files go with `mlflow gc`)
            client.delete_logged_model(mine.model_id)
        except Exception as exc:
            log.warning("could not delete logged model %s: %s", mine.model_id, exc)
    return retry(f"read {name} v{first}", lambda: client.get_model_version(name, first)), False


def _in_flight(v: Any, now_ms: float, timeout_s: float) -> bool:
    """Being registered right now: not finished, and not yet old enough to be abandoned."""
    return v.tags.get(DONE_TAG) != "true" and now_ms - v.creation_timestamp < timeout_s * 1000


def wait_for_turn(
    retry: Retry, client: Any, name: str, mine: Any, created: bool, timeout_s: float
) -> Any:
    """Wait until no registration that goes before ``mine`` is in flight; return ``mine``
    read again (another process may have finished it meanwhile).

    Before a new version go the older versions in flight; before a re-registration also the
    version itself when another process is still finishing it, and, once the version is
    complete, every version in flight (a re-registration may move ``@champion`` too)."""
    version = int(mine.version)
    deadline = time.monotonic() + timeout_s
    pause, waited_for = POLL_S[0], None
    while True:
        found = retry(
            f"list the versions of {name}",
            lambda: client.search_model_versions(f"name='{name}'"),
        )
        now_ms = time.time() * 1000
        me = next((v for v in found if int(v.version) == version), mine)
        complete = me.tags.get(DONE_TAG) == "true"
        ahead = sorted(
            int(v.version)
            for v in found
            if _in_flight(v, now_ms, timeout_s)
            and (
                int(v.version) < version
                or (not created and int(v.version) == version)
                or (not created and complete and int(v.version) != version)
            )
        )
        if not ahead or time.monotonic() >= deadline:
            if ahead:
                log.warning(
                    "%s v%s: still waiting for v%s after %.0f s (registry.turn_timeout_s); "
                    "going ahead",
                    name,
                    version,
                    ", v".join(map(str, ahead)),
                    timeout_s,
                )
            break
        if ahead != waited_for:
            log.info("%s v%s: waiting for v%s to finish registering", name, version, ahead)
            waited_for = ahead
        time.sleep(pause)
        pause = min(pause * 2, POLL_S[1])
    if created:
        return mine
    return retry(f"read {name} v{version}", lambda: client.get_model_version(name, version))
