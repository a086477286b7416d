"""A Redis that refuses the store's credentials, database or commands: a ConfigurationError
at open that says what to fix (retrying cannot help), never showing the password."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
from redis_servers import require_redis

import trio_chatbridge as cb
from trio_chatbridge.testing import RedisServer, redis_server

PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis with a password, a user allowed only to ping, and a disabled user."""
    require_redis()
    with redis_server(tmp_path_factory.mktemp("guarded")) as server:
        server.cli("acl", "setuser", "pinger", "on", ">pinger-pw", "~*", "+ping", "+hello")
        server.cli("acl", "setuser", "gone", "off", ">gone-pw", "~*", "+@all")
        server.cli("config", "set", "requirepass", PASSWORD)
        yield server


async def refused(url: str) -> cb.ConfigurationError:
    with trio.fail_after(10), pytest.raises(cb.ConfigurationError) as caught:
        async with cb.RedisStore.from_url(url, timeout=2):
            raise AssertionError("opened")
    return caught.value


@pytest.mark.parametrize(
    ("credentials", "says"),
    [
        (f":wrong-{PASSWORD}", "refused the credentials"),
        ("", "refused the credentials"),  # none given
        ("gone:gone-pw", "refused the credentials"),  # a disabled ACL user
        ("pinger:pinger-pw", "may not run what the store needs"),
    ],
)
async def test_refused_credentials_or_commands_are_a_configuration_error_at_open(
    guarded: RedisServer, credentials: str, says: str
) -> None:
    at = f"{credentials}@" if credentials else ""
    error = await refused(f"redis://{at}127.0.0.1:{guarded.port}/0")
    assert says in str(error)
    for secret in (PASSWORD, "pinger-pw", "gone-pw"):
        assert secret not in str(error)
        assert secret not in repr(cb.RedisStore.from_url(f"redis://u:{secret}@127.0.0.1:1/0"))


async def test_a_database_redis_does_not_have_is_a_configuration_error_at_open(
    guarded: RedisServer,
) -> None:
    error = await refused(f"redis://:{PASSWORD}@127.0.0.1:{guarded.port}/99")
    assert "no such database" in str(error) and "'databases' setting" in str(error)
    assert PASSWORD not in str(error)


async def test_the_right_password_opens(guarded: RedisServer) -> None:
    with trio.fail_after(10):
        async with cb.RedisStore.from_url(f"redis://:{PASSWORD}@127.0.0.1:{guarded.port}/3"):
            pass


@pytest.mark.parametrize(
    ("url", "cluster", "says"),
    [
        ("redis://:pw@127.0.0.1:6379/zero", False, "is not a number"),
        ("redis://127.0.0.1:6379/1", True, "only database 0"),
    ],
)
def test_a_database_that_cannot_be_is_refused_when_the_store_is_built(
    url: str, cluster: bool, says: str
) -> None:
    with pytest.raises(cb.ConfigurationError, match=says) as caught:
        cb.RedisStore.from_url(url, cluster=cluster)
    assert ":pw@" not in str(caught.value)
