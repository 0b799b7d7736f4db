"""Outbound URLs fetched on a client's behalf (input images; webhooks), guarded
against server-side request forgery. Torch-free; used by the API.

A URL is accepted when it is http(s), carries no credentials, and EVERY address its host
resolves to is a public unicast address (`address_problem`). A host with one public and
one internal address is refused: which one a later connection gets is not ours to pick.

No DNS rebinding: `fetch` resolves each host once, checks the answer, and then connects
only to those vetted addresses; the name is never resolved again. It does so with an
httpcore network backend (`_PinnedBackend`) whose `connect_tcp` ignores the hostname it
is handed and opens the TCP connection to a vetted IP. Nothing above the socket changes:
the request URL keeps its hostname, so the Host header is the original one and, for
https, the TLS handshake sends the hostname as SNI and verifies the certificate against
it (ssl's `check_hostname`). Rewriting the URL to the IP plus an `sni_hostname`
extension would also work, but then the Host header and the redirect base must be
patched back by hand; pinning below the request leaves them right by construction.

Redirects are followed by hand (at most `max_redirects`) and every hop is checked like
the first. `post` (webhook deliveries) shares the checks and the pinned connection, but
follows no redirect at all: a 3xx is an answer like any other.

The body is limited by Content-Length up front and while streaming, and the whole fetch
(DNS, connect, TLS, every read and write, every hop) shares one deadline: each socket
operation waits at most for the time left.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import certifi
import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to, as strings. Injectable for tests.
Resolver = Callable[[str, int], Sequence[str]]

MAX_URL_CHARS = 2048
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_RESOLVE_TIMEOUT = 10.0
_USER_AGENT = b"ssd-img2img-fetch/1"


class UrlError(ValueError):
    """A URL that cannot be used; the message is meant for the client."""


class UnsafeUrlError(UrlError):
    """Refused before any connection: bad scheme or syntax, or a non-public address."""


class FetchError(UrlError):
    """The URL was allowed but fetching it failed (network, HTTP status, size, time)."""


def _v4(network: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(network)


def _v6(network: str) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(network)


# Explicit, so the policy does not depend on which Python's `is_global` tables are
# installed; `is_global` is still checked afterwards as a catch-all.
_LOOPBACK_V4 = _v4("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.IPv6Address("::1")
_NAT64 = _v6("64:ff9b::/96")  # well-known NAT64 prefix: the low 32 bits are an IPv4 target
_BLOCKED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_v4("0.0.0.0/8"), "a 'this network' address"),
    (_v4("10.0.0.0/8"), "a private address"),
    (_v4("100.64.0.0/10"), "a shared (carrier-grade NAT) address"),
    (_v4("169.254.0.0/16"), "a link-local address (cloud metadata services live there)"),
    (_v4("172.16.0.0/12"), "a private address"),
    (_v4("192.0.0.0/24"), "an IETF protocol address"),
    (_v4("192.0.2.0/24"), "a documentation address"),
    (_v4("192.88.99.0/24"), "a 6to4 relay address"),
    (_v4("192.168.0.0/16"), "a private address"),
    (_v4("198.18.0.0/15"), "a benchmarking address"),
    (_v4("198.51.100.0/24"), "a documentation address"),
    (_v4("203.0.113.0/24"), "a documentation address"),
    (_v4("224.0.0.0/4"), "a multicast address"),
    (_v4("240.0.0.0/4"), "a reserved address"),  # includes 255.255.255.255
)
_BLOCKED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_v6("::/128"), "the unspecified address"),
    (_v6("::/8"), "a reserved address"),  # IPv4-compatible ::a.b.c.d among others
    (_v6("100::/64"), "a discard-only address"),
    (_v6("2001::/23"), "an IETF protocol address"),  # Teredo, benchmarking, ORCHID
    (_v6("2001:db8::/32"), "a documentation address"),
    (_v6("2002::/16"), "a 6to4 address"),  # embeds an IPv4 address; refused, not decoded
    (_v6("3fff::/20"), "a documentation address"),
    (_v6("5f00::/16"), "a segment-routing address"),
    (_v6("fc00::/7"), "a private (unique local) address"),
    (_v6("fe80::/10"), "a link-local address"),
    (_v6("fec0::/10"), "a site-local address"),
    (_v6("ff00::/8"), "a multicast address"),
)


def for_logs(url: str) -> str:
    """`url` without what may be a secret: its user info, query and fragment (webhook
    URLs often carry a token in the query). For logs; tenants see their own URLs whole."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None else f"{host}:{port}"
    redacted = "?…" if parts.query or parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")) + redacted


def address_problem(ip: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why `ip` must not be connected to, or None when it is a public unicast address.

    `allow_loopback` admits 127.0.0.0/8 and ::1 (local development), nothing else.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 address that carries an IPv4 one reaches that IPv4 host: judge that.
        embedded = ip.ipv4_mapped or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None
        )
        if embedded is not None:
            return address_problem(embedded, allow_loopback=allow_loopback)
        if ip == _LOOPBACK_V6:
            return None if allow_loopback else "a loopback address"
        for network6, what in _BLOCKED_V6:
            if ip in network6:
                return what
    else:
        if ip in _LOOPBACK_V4:
            return None if allow_loopback else "a loopback address"
        for network4, what in _BLOCKED_V4:
            if ip in network4:
                return what
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "not a public address"
    return None


def check_address(ip: IPAddress, *, allow_loopback: bool, host: str | None = None) -> None:
    """Raise UnsafeUrlError unless `ip` is a public unicast address."""
    problem = address_problem(ip, allow_loopback=allow_loopback)
    if problem is not None:
        name = f"{host} resolves to {ip}, which is" if host and _is_name(host) else f"{ip} is"
        raise UnsafeUrlError(f"{name} {problem}; only public addresses may be fetched")


def _is_name(host: str) -> bool:
    """A DNS name, as opposed to an IP literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


@dataclass(frozen=True)
class CheckedUrl:
    """A URL whose host resolved only to allowed addresses; connect to those only."""

    url: httpx.URL
    addresses: tuple[IPAddress, ...]

    @property
    def host(self) -> str:
        return _host(self.url)

    @property
    def port(self) -> int:
        return _port(self.url)


def _host(url: httpx.URL) -> str:
    return url.raw_host.decode("ascii")  # IDNA-encoded, as DNS and SNI want it


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def parse_url(url: str | httpx.URL) -> httpx.URL:
    """Syntax-only checks: http(s), a host, no credentials, a sane length."""
    if len(str(url)) > MAX_URL_CHARS:
        raise UnsafeUrlError(f"URL longer than {MAX_URL_CHARS} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UnsafeUrlError(f"not a valid URL ({exc})") from exc
    if parsed.scheme not in ("http", "https"):
        raise UnsafeUrlError("only http and https URLs are allowed")
    if not parsed.host:
        raise UnsafeUrlError("the URL has no host")
    if parsed.userinfo:
        raise UnsafeUrlError("URLs with credentials (user:password@) are not allowed")
    return parsed


def resolve_host(host: str, port: int) -> list[str]:
    """The system resolver's addresses for `host`. Tests replace this (or pass a
    `resolver`) to simulate any DNS answer without touching the network."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


# getaddrinfo has no timeout of its own: it runs here so the caller can stop waiting
# when the deadline passes (the lookup itself finishes in the background). A few
# threads: lookups are short, and a flood of slow ones only delays other lookups.
_DNS_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="url-dns")


def _resolve(
    host: str, port: int, resolver: Resolver | None, timeout: float
) -> tuple[IPAddress, ...]:
    try:
        return (ipaddress.ip_address(host),)  # an IP literal: nothing to resolve
    except ValueError:
        pass
    lookup = resolver or resolve_host  # looked up now, so monkeypatching works
    future = _DNS_POOL.submit(lookup, host, port)
    try:
        answers = future.result(timeout=max(timeout, 0.001))
    except FutureTimeoutError as exc:
        raise FetchError(f"resolving {host} took longer than {timeout:.3g} s") from exc
    except (OSError, UnicodeError) as exc:
        raise FetchError(f"cannot resolve {host}") from exc
    addresses: list[IPAddress] = []
    for answer in answers:
        ip = ipaddress.ip_address(answer)
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise FetchError(f"cannot resolve {host}")
    return tuple(addresses)


def check_url(
    url: str | httpx.URL,
    allow_loopback: bool,
    *,
    resolver: Resolver | None = None,
    timeout: float = DEFAULT_RESOLVE_TIMEOUT,
) -> CheckedUrl:
    """Parse `url`, resolve its host and refuse it unless every address is allowed.

    Raises UnsafeUrlError (refused) or FetchError (the name does not resolve in time).
    """
    parsed = parse_url(url)
    addresses = _resolve(_host(parsed), _port(parsed), resolver, timeout)
    for ip in addresses:
        check_address(ip, allow_loopback=allow_loopback, host=_host(parsed))
    return CheckedUrl(parsed, addresses)


def fetch(
    url: str,
    *,
    max_bytes: int,
    timeout: float,
    allow_loopback: bool,
    max_redirects: int = 3,
    resolver: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> bytes:
    """GET `url` and return its body, with every safety check described above.

    `ssl_context` defaults to certificate verification against certifi's CA bundle.
    """
    deadline = time.monotonic() + timeout
    current: str | httpx.URL = url
    for _ in range(max_redirects + 1):
        checked = check_url(
            current, allow_loopback, resolver=resolver, timeout=_time_left(deadline, timeout)
        )
        outcome = _get_once(checked, max_bytes, deadline, timeout, ssl_context)
        if isinstance(outcome, bytes):
            return outcome
        current = outcome
    raise FetchError(f"more than {max_redirects} redirects")


def _time_left(deadline: float, timeout: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(f"took longer than {timeout:.3g} s")
    return left


@lru_cache
def _default_ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certifi.where())


def _get_once(
    checked: CheckedUrl,
    max_bytes: int,
    deadline: float,
    timeout: float,
    ssl_context: ssl.SSLContext | None,
) -> bytes | httpx.URL:
    """One GET to the vetted addresses: the body, or the URL a redirect points to."""
    headers = [
        (b"User-Agent", _USER_AGENT),
        (b"Accept", b"image/*"),
        # Compressed bodies are refused rather than inflated: no decompression bombs.
        (b"Accept-Encoding", b"identity"),
    ]
    with _pinned_exchange(
        checked, b"GET", headers, None, deadline, timeout, ssl_context
    ) as response:
        return _read_response(response, checked.url, max_bytes)


@contextmanager
def _pinned_exchange(
    checked: CheckedUrl,
    method: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None,
    deadline: float,
    timeout: float,
    ssl_context: ssl.SSLContext | None,
) -> Iterator[httpcore.Response]:
    """One request to the vetted addresses only (no redirect is followed here), its
    response streamed inside the block; network failures become FetchError."""
    url = checked.url
    request_url = httpcore.URL(
        scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
    )
    # The Host header is the URL's own, bracketed for IPv6, default port left out.
    all_headers = [(b"Host", url.netloc), *headers]
    left = _time_left(deadline, timeout)
    pool = httpcore.ConnectionPool(
        ssl_context=ssl_context or _default_ssl_context(),
        network_backend=_PinnedBackend(checked.addresses, deadline),
        max_connections=1,
        retries=0,
    )
    try:
        with (
            pool,
            pool.stream(
                method,
                request_url,
                headers=all_headers,
                content=body,
                extensions={"timeout": dict.fromkeys(("connect", "read", "write", "pool"), left)},
            ) as response,
        ):
            yield response
    except httpcore.TimeoutException as exc:
        raise FetchError(f"took longer than {timeout:.3g} s") from exc
    except httpcore.ConnectError as exc:
        raise FetchError(f"could not connect to {checked.host}: {exc or 'refused'}") from exc
    except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
        raise FetchError(f"the connection to {checked.host} failed: {exc or 'error'}") from exc


@dataclass(frozen=True)
class PostResponse:
    """What a POST got back: the status and headers (the body is read and dropped)."""

    status: int
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def post(
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str],
    timeout: float,
    allow_loopback: bool,
    max_response_bytes: int = 64 * 1024,
    resolver: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> PostResponse:
    """POST `body` to `url` once, with the same checks and pinning as `fetch` (webhooks).

    Redirects are NOT followed: a 3xx comes back like any other status. Any status is
    returned; raises UnsafeUrlError (refused before connecting) or FetchError (no HTTP
    answer: DNS, connection, TLS, time). At most `max_response_bytes` of the response
    body are read before the connection is dropped.
    """
    deadline = time.monotonic() + timeout
    checked = check_url(url, allow_loopback, resolver=resolver, timeout=timeout)
    request_headers = [
        (b"User-Agent", _USER_AGENT),
        (b"Accept-Encoding", b"identity"),
        *((key.encode("latin-1"), value.encode("latin-1")) for key, value in headers.items()),
    ]
    with _pinned_exchange(
        checked, b"POST", request_headers, body, deadline, timeout, ssl_context
    ) as response:
        read = 0
        for chunk in response.iter_stream():
            read += len(chunk)
            if read >= max_response_bytes:
                break
        return PostResponse(
            status=response.status,
            headers=tuple(
                (key.decode("latin-1"), value.decode("latin-1").strip())
                for key, value in response.headers
            ),
        )


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _read_response(
    response: httpcore.Response, url: httpx.URL, max_bytes: int
) -> bytes | httpx.URL:
    if response.status in REDIRECT_STATUSES:
        location = _header(response, b"location")
        if not location:
            raise FetchError(f"HTTP {response.status} redirect without a Location")
        try:
            return url.join(location)
        except (httpx.InvalidURL, ValueError) as exc:
            raise UnsafeUrlError("redirect to an invalid URL") from exc
    if response.status != 200:
        raise FetchError(f"the server answered HTTP {response.status}")
    encoding = _header(response, b"content-encoding")
    if encoding and encoding.lower() != "identity":
        raise FetchError(f"compressed responses ({encoding}) are not supported")
    declared = _header(response, b"content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"larger than the limit of {max_bytes} bytes")
    body = bytearray()
    for chunk in response.iter_stream():
        body += chunk
        if len(body) > max_bytes:
            raise FetchError(f"larger than the limit of {max_bytes} bytes")
    return bytes(body)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the vetted addresses, never to what the hostname resolves to now."""

    def __init__(self, addresses: Sequence[IPAddress], deadline: float) -> None:
        self._addresses = addresses
        self._deadline = deadline
        self._system = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,  # the URL's hostname: deliberately not resolved again
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        error: Exception = httpcore.ConnectError(f"no address for {host}")
        for ip in self._addresses:  # in resolver order, like a browser without racing
            try:
                stream = self._system.connect_tcp(
                    str(ip),
                    port,
                    timeout=_capped(timeout, self._deadline, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are never fetched")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _capped(timeout: float | None, deadline: float, error: type[Exception]) -> float:
    """The smaller of an operation's own timeout and the time left to the deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the time limit was reached")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every wait ends at the fetch's deadline at the latest."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _capped(timeout, self._deadline, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _capped(timeout, self._deadline, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        # server_hostname is the URL's hostname: SNI and certificate checks use it.
        inner = self._inner.start_tls(
            ssl_context, server_hostname, _capped(timeout, self._deadline, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
