"""Ask the local kaspad's gRPC RPC whether it is synced: the trio shell around
:mod:`bridge.core.kaspad_rpc`.

:func:`poll_server_info` keeps one connection and one ``MessageStream`` call open and asks
GetServerInfo every ``interval`` seconds, reporting each answer, or why there was none, to the
caller. A lost or refused connection is reported and redialed at the next interval; it never
ends the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from bridge.core.kaspad_rpc import RpcClient, RpcClosed, RpcError, ServerInfo
from bridge.core.peers import hostport
from bridge.net import h2io

log = logging.getLogger("bridge.sync")


class _NoAnswer(Exception):
    pass


async def _ask(stream: trio.SocketStream, client: RpcClient, timeout: float) -> ServerInfo:
    rid = client.ask()
    with trio.move_on_after(timeout):
        await h2io.flush(stream, client)
        while True:
            data = await h2io.receive(stream)
            if not data:
                raise _NoAnswer("kaspad closed the RPC connection")
            events = client.receive_data(data)
            await h2io.flush(stream, client)
            for ev in events:
                if isinstance(ev, RpcClosed):
                    raise _NoAnswer(f"kaspad ended the RPC call ({ev.why})")
                if ev.id == rid:
                    return ev
    raise _NoAnswer(f"kaspad's RPC did not answer within {timeout:g}s")


class RpcUnavailable(Exception):
    """kaspad's RPC gave no answer (the message says why and where)."""


async def server_info(host: str, port: int, *, timeout: float) -> ServerInfo:
    """One GetServerInfo answer (``doctor``); :class:`RpcUnavailable` when there is none."""
    answers: list[ServerInfo] = []
    problems: list[str] = []
    with trio.move_on_after(timeout * 2 + 1):
        async with trio.open_nursery() as nursery:
            def answer(info: ServerInfo) -> None:
                answers.append(info)
                nursery.cancel_scope.cancel()

            def problem(why: str) -> None:
                problems.append(why)
                nursery.cancel_scope.cancel()

            nursery.start_soon(lambda: poll_server_info(host, port, interval=timeout,
                                                        timeout=timeout, on_answer=answer,
                                                        on_problem=problem))
    if answers:
        return answers[0]
    raise RpcUnavailable(problems[0] if problems else
                         f"kaspad's RPC at {host}:{port} did not answer")


async def poll_server_info(host: str, port: int, *, interval: float, timeout: float,
                           on_answer: Callable[[ServerInfo], None],
                           on_problem: Callable[[str], None]) -> None:
    """Forever: GetServerInfo from kaspad's RPC at ``host:port`` every ``interval`` seconds."""
    authority = hostport(host, port)
    while True:
        stream: trio.SocketStream | None = None
        try:
            with trio.fail_after(timeout):
                stream = await trio.open_tcp_stream(host, port)
            client = RpcClient(authority)
            while True:
                on_answer(await _ask(stream, client, timeout))
                await trio.sleep(interval)
        except trio.TooSlowError:
            on_problem(f"kaspad's RPC at {authority} did not accept a connection within "
                       f"{timeout:g}s")
        except OSError as exc:
            on_problem(f"kaspad's RPC at {authority} is not reachable "
                       f"({exc.strerror or exc!r})")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            on_problem(f"kaspad's RPC connection at {authority} broke ({exc!r})")
        except (_NoAnswer, RpcError) as exc:
            on_problem(f"{exc} (kaspad's RPC at {authority})")
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)
        await trio.sleep(interval)
