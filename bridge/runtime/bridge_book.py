"""What :class:`bridge.runtime.bridge.Bridge` learns, into its address book: the addresses its
relays' policies learn from gossip (:func:`learned`, a runner's ``on_learned``), the writer that
stores them from a worker thread, and DNS seeding through Tor.

A 2500-entry batch costs the book ~0.1-0.3 s of CPU, which must not stall every relay and
/health: batches (each up to one Addresses message) queue for :func:`book_writer`, at most
:data:`BOOK_QUEUE`; when the writer falls behind, new batches are dropped and counted
(``book_writer.dropped_batches``; the book is a cache, gossip repeats). At shutdown what is still
queued is written before the book closes (:func:`drain_book_queue`). Without a book, learned
onions become in-memory candidates of the selector.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from bridge.core.errors import BridgeError
from bridge.core.events import AddressesLearned, OnionsLearned
from bridge.core.peers import Target
from bridge.core.selection import source_rank
from bridge.net.probe import harvest
from bridge.store.book import AddressBookError

if TYPE_CHECKING:  # the bridge imports this module and passes itself in
    from bridge.runtime.bridge import Bridge

#: learned-address batches (each up to one Addresses message) waiting for the book's writer
BOOK_QUEUE = 32

log = logging.getLogger("bridge")

#: Version.protocolVersion the seeder harvest announces: upstream master accepts only >= 10
#: (protocol.md §5.3) and the Tor fork accepts anything >= 8, so 10 reaches both.
SEED_PROTOCOL_VERSION = 10


def _book_source(source: str) -> str:
    """A source as the book accepts it (as ``AddressBook.gossip_hook`` writes it)."""
    try:
        source_rank(source)
    except ValueError:
        return ("gossip:" + source)[:200]
    return source


def learned(bridge: Bridge, event: OnionsLearned | AddressesLearned) -> None:
    """What a relay's policy learned from gossip (its runner's ``on_learned``). Discovery:
    every onion becomes a candidate; with a book, the entries of one event (one Addresses
    message) are stored together, one book transaction (issue G). IP entries are stored
    only with a book (passive harvest; dialed only if peers.onlynet allows)."""
    onlynet = bridge.options.onlynet
    if isinstance(event, AddressesLearned):
        if bridge.book is not None:
            _store(bridge, list(event.endpoints), event.source, poke=bool(onlynet - {"onion"}))
        return
    if "onion" not in onlynet:
        return
    if bridge.book is None:
        for peer in event.peers:
            bridge.selector.add(Target(peer.address.host, peer.port))
        bridge.pool.poke()
        return
    _store(bridge, [(p.address.host, p.port) for p in event.peers], _book_source(event.source),
           poke=True)


def _store(bridge: Bridge, endpoints: list[tuple[str, int]], source: str, *, poke: bool) -> None:
    """Queue learned addresses for the book (written inline when no writer runs, e.g. a
    test calling the gossip hooks of a bridge that is not running)."""
    if not endpoints:
        return
    if not bridge._book_writing:
        if _write_batch(bridge, endpoints, source) and poke:
            bridge.pool.poke()
        return
    try:
        bridge._book_in.send_nowait((endpoints, source, poke))
    except trio.WouldBlock:
        _count_batch(bridge, dropped_batches=1)
        log.debug("address book writer busy: %d addresses from %s not stored",
                  len(endpoints), source)


def _count_batch(bridge: Bridge, **by: int) -> None:
    with bridge._book_stats_lock:
        bridge.book_stats = bridge.book_stats.bump(**by)


def _write_batch(bridge: Bridge, endpoints: list[tuple[str, int]], source: str) -> int:
    """Store one batch; how many entries are new. Runs in the writer's thread."""
    book = bridge.book
    assert book is not None
    try:
        added = book.learn_many(bridge.options.network, endpoints, source=source)
    except AddressBookError:  # closed meanwhile (shutdown): it is a cache
        return 0
    except Exception:  # a bug here must not end the daemon (the book is a cache)
        _count_batch(bridge, failed_batches=1)
        log.exception("storing %d learned addresses failed", len(endpoints))
        return 0
    _count_batch(bridge, batches=1)
    return added


async def book_writer(bridge: Bridge) -> None:
    """Writes learned addresses to the book in a worker thread, one batch at a time (the
    book serialises its calls; a shutdown waits for the batch being written)."""
    try:
        async for endpoints, source, poke in bridge._book_out:
            # shielded: a batch taken from the queue is written even if the bridge is
            # stopping (run_sync checks for cancellation before it starts the thread, which
            # lost the batch; a write takes well under a second)
            with trio.CancelScope(shield=True):
                added = await trio.to_thread.run_sync(_write_batch, bridge, endpoints, source)
            if added and poke:
                bridge.pool.poke()
    finally:
        bridge._book_writing = False


def drain_book_queue(bridge: Bridge) -> None:
    """At shutdown: what was learned and not stored yet is written before the book closes
    (inline: the writer has stopped)."""
    bridge._book_writing = False
    if bridge.book is None:
        return
    while True:
        try:
            endpoints, source, _poke = bridge._book_out.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return
        _write_batch(bridge, endpoints, source)


async def seed_loop(bridge: Bridge) -> None:
    """DNS seeding without local DNS: each seeder name is dialed *through Tor* as a one-shot
    peer (the exit resolves it and connects to one node), its addresses are harvested into
    the book, and the connection is closed."""
    assert bridge.book is not None
    while True:
        usable = [e for e in bridge.book.entries(bridge.options.network)
                  if e.kind in bridge.options.onlynet and not e.is_self]
        if len(usable) < bridge.options.seed_below:
            for host, port in bridge.options.seeders:
                await _harvest_seeder(bridge, host, port)
        await trio.sleep(bridge.options.seed_interval)


async def _harvest_seeder(bridge: Bridge, host: str, port: int) -> None:
    assert bridge.book is not None
    if bridge.dialer.gate is not None:
        await bridge.dialer.gate()
    proxy = bridge.dialer.tor_proxy()
    if proxy is None:
        log.info("seeder %s:%d skipped: no SOCKS proxy known yet", host, port)
        return
    own = {bridge.gossip.kaspad_node_id} if bridge.gossip.kaspad_node_id else set()
    try:
        res = await harvest(host, port, proxy=proxy, network=bridge.options.network,
                            protocol_version=SEED_PROTOCOL_VERSION, forbidden_ids=own)
    except (BridgeError, OSError, trio.TooSlowError) as exc:
        what = exc.describe() if isinstance(exc, BridgeError) else repr(exc)
        log.info("seeder %s:%d: %s", host, port, what)
        return
    added = bridge.book.learn_many(bridge.options.network, res.endpoints, source="seed",
                                   addrv2=False)
    log.info("seeder %s:%d gave %d IPs and %d onions (%d new) in %.1fs", host, port,
             len(res.ips), len(res.onions), added, res.elapsed)
    bridge.pool.poke()
