"""What every layer says about a failure: is it transient, and how is it recorded.

On the lowest floor (no project imports), so model clients (``models.retrying``) and the
episode runner share one definition without the clients importing the runner.
"""

from __future__ import annotations

import importlib
from functools import cache


@cache
def _transient_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [TimeoutError, ConnectionError]
    for name in ("httpx", "httpx2"):  # openai 3 ships its HTTP stack as httpx2
        try:
            types.append(importlib.import_module(name).TransportError)
        except ImportError:
            continue
    try:
        import openai

        types += [openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError]
        types.append(openai.InternalServerError)
    except ImportError:
        pass
    return tuple(types)


def is_transient(error: BaseException) -> bool:
    """A timeout, a dropped connection, a rate limit or an HTTP 5xx, anywhere in the cause chain.

    The chain matters because agents often re-raise a client error wrapped in their own. It is
    followed as a traceback shows it: the explicit cause, else the context unless suppressed.
    """
    transient = _transient_types()
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, transient):
            return True
        status = getattr(current, "status_code", None)
        if isinstance(status, int) and status >= 500:
            return True
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return False


def describe_error(error: BaseException) -> str:
    """``Type: message``, the form every errored episode records."""
    message = str(error).strip()
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
