"""One way to derive a seed from parts: episodes, rollout steps and processes all use it."""

from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 31-bit seed that depends only on ``parts`` (joined with ``:``), never on hash
    randomisation or scheduling order, so a run with the same parts replays exactly."""
    key = ":".join(str(part) for part in parts)
    digest = hashlib.blake2b(key.encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") % (2**31)
