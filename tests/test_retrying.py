"""Per-call retries and timeouts, and malformed bodies, against the loopback server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from autogen_core.models import ChatCompletionClient, UserMessage

from rlver_agents.builders import ClientPool, call_policy, retry_policy
from rlver_agents.config import ConfigError, RunConfig, TimeoutSettings, parse_config
from rlver_agents.errors import is_transient
from rlver_agents.models.openai_compat import (
    DEFAULT_CALL_TIMEOUT_S,
    MalformedResponseError,
    openai_compatible_client,
)
from rlver_agents.models.retrying import CallPolicy, ModelCallError, RetryingChatCompletionClient
from rlver_agents.models.spec import ModelSpec
from rlver_agents.testing.fake_server import FakeServer, Faults

HELLO = [UserMessage(content="hello", source="user")]
# generous against a loaded machine, but well short of a hung call (``hang_s`` 10)
FAST = CallPolicy(timeout_s=3.0, retries=2, backoff_s=0.0, max_backoff_s=0.0)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    faults = getattr(request, "param", Faults())
    with FakeServer(lambda _: "fine, thanks", model="m", faults=faults, deadline_s=60) as s:
        yield s


def _client(server: FakeServer, policy: CallPolicy = FAST) -> RetryingChatCompletionClient:
    inner = openai_compatible_client("m", server.base_url, timeout=policy.timeout_s, max_retries=0)
    return RetryingChatCompletionClient(
        inner, role="judge", server=f"model 'm' at {server.base_url}", policy=policy
    )


async def test_a_malformed_body_names_the_role_and_the_server(server: FakeServer) -> None:
    server.faults = Faults(malformed=1.0)
    client = _client(server)
    with pytest.raises(ModelCallError) as caught:
        await client.create(HELLO)
    await client.close()
    message = str(caught.value)
    assert message.startswith(f"judge call to model 'm' at {server.base_url} failed 3 time(s)")
    assert "MalformedResponseError" in message and "without choices" in message
    assert isinstance(caught.value.__cause__, MalformedResponseError)
    assert is_transient(caught.value), "a call that kept failing still restarts the dialogue"
    assert server.counts["malformed"] == 3 and client.retried == 2


async def test_a_hung_call_times_out_and_is_retried(server: FakeServer) -> None:
    server.faults = Faults(hang=1.0, hang_s=10.0)
    client = _client(server, FAST.model_copy(update={"timeout_s": 1.0, "retries": 1}))
    with pytest.raises(ModelCallError, match=r"TimeoutError: no answer within 1s"):
        await client.create(HELLO)
    await client.close()
    assert server.counts["hang"] == 2


@pytest.mark.parametrize("kind", ["error_500", "drop", "hang", "malformed", "null_content"])
async def test_each_fault_is_retried_until_a_call_succeeds(server: FakeServer, kind: str) -> None:
    """A ``content: null`` included: the answer comes from the retry, never an empty reply."""
    # seed 1 draws 0.13, then 0.85: the first try fails, the retry succeeds
    server.faults = Faults(**{kind: 0.5}, hang_s=10.0, seed=1)  # type: ignore[arg-type]
    client = _client(server)
    result = await client.create(HELLO)
    await client.close()
    assert result.content == "fine, thanks"
    assert server.counts[kind] == 1 and server.counts["ok"] == 1 and client.retried == 1


async def test_errors_that_would_repeat_are_not_retried(server: FakeServer) -> None:
    server.faults = Faults(broken_status=400)
    client = _client(server)
    with pytest.raises(openai.BadRequestError):
        await client.create(HELLO)
    await client.close()
    assert client.retried == 0


def test_the_wrapper_round_trips_as_a_component() -> None:
    inner = openai_compatible_client("m", "http://127.0.0.1:9/v1", max_retries=0)
    client = RetryingChatCompletionClient(inner, role="simulator", server="s", policy=FAST)
    loaded = ChatCompletionClient.load_component(client.dump_component())
    assert isinstance(loaded, RetryingChatCompletionClient)
    assert loaded.role == "simulator" and loaded.policy == FAST
    assert loaded.model_info == inner.model_info


def test_the_run_configuration_sets_timeouts_and_retries() -> None:
    run = parse_config(
        {"timeouts": {"call_s": 7, "call_retries": 1, "turn_s": 30, "dialogue_attempts": 2}},
        source=Path("run.yaml"),
    )
    assert call_policy(run.timeouts).timeout_s == 7 and call_policy(run.timeouts).retries == 1
    policy = retry_policy(run.timeouts)
    assert policy.turn_timeout_s == 30 and policy.max_attempts == 2
    with pytest.raises(ConfigError, match=r"run\.yaml: field timeouts: .*shorter than call_s"):
        parse_config({"timeouts": {"call_s": 60, "turn_s": 30}}, source=Path("run.yaml"))
    defaults = TimeoutSettings()
    assert defaults.call_s == DEFAULT_CALL_TIMEOUT_S < 600


def test_the_pool_sets_the_sdk_timeout_and_shares_one_connection_pool_per_server() -> None:
    spec = ModelSpec(kind="openai", model="m", base_url="http://127.0.0.1:9/v1")
    pool = ClientPool()
    calls = CallPolicy(timeout_s=7.0)
    agent = pool.client(spec, None, role="agent", calls=calls)
    judge = pool.client(spec, None, role="judge", calls=calls)
    assert isinstance(agent, RetryingChatCompletionClient)
    assert isinstance(judge, RetryingChatCompletionClient)
    assert agent.inner is judge.inner and (agent.role, judge.role) == ("agent", "judge")
    sdk = agent.inner._client  # type: ignore[attr-defined]
    assert sdk.timeout == 7.0 and sdk.max_retries == 0
    assert RunConfig().timeouts.call_s == DEFAULT_CALL_TIMEOUT_S
