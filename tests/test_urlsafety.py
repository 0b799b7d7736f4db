"""SSRF guards of common.urlsafety. Refusals are proven without connecting anywhere but
loopback: a guard on socket.connect fails the test on any other address, and DNS
answers come from an injected resolver, never from the network."""

from __future__ import annotations

import gzip
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common import urlsafety
from common.urlsafety import FetchError, UnsafeUrlError, address_problem, check_url, fetch
from tests.support.image_samples import jpeg
from tests.support.loopback_http import (
    LoopbackServer,
    dripping,
    loopback_server,
    redirect,
    respond,
    stalled,
    unsized,
)

IMAGE = jpeg()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every socket.connect of the test; any non-loopback one fails the test."""
    seen: list[tuple[Any, ...]] = []
    real_connect = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> None:
        seen.append(tuple(address))
        if not ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback:
            raise AssertionError(f"connected to a non-loopback address: {address}")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return seen


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with loopback_server() as srv:
        yield srv


class FakeDns:
    """An injected resolver: answers by name, optionally changing between calls."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        queue = self.answers[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]


# --- the address checker, range by range, on literal IPs ------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "::1",
        "10.0.0.5",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "fc00::1",
        "fd12:3456::1",
        "169.254.169.254",  # cloud metadata
        "169.254.0.1",
        "fe80::1",
        "100.64.0.1",  # CGNAT
        "100.127.255.254",
        "0.0.0.0",
        "0.1.2.3",
        "::",
        "224.0.0.1",
        "239.255.255.250",
        "ff02::1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.10",  # documentation
        "198.51.100.10",
        "203.0.113.10",
        "2001:db8::1",
        "198.18.0.1",  # benchmarking
        "198.19.255.255",
        "192.0.0.8",
        "::ffff:127.0.0.1",  # IPv4-mapped IPv6
        "::ffff:10.0.0.5",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:a00:5::1",  # 6to4 of 10.0.0.5
        "2001::1",  # Teredo
        "::a00:5",  # IPv4-compatible (deprecated)
        "fec0::1",  # site-local (deprecated)
        "100::1",  # discard-only
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert address_problem(ip, allow_loopback=False) is not None
    with pytest.raises(UnsafeUrlError):
        urlsafety.check_address(ip, allow_loopback=False)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address), allow_loopback=False) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_allow_loopback_admits_loopback(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address), allow_loopback=True) is None


@pytest.mark.parametrize(
    "address", ["10.0.0.5", "192.168.1.1", "169.254.169.254", "fe80::1", "fc00::1", "0.0.0.0"]
)
def test_allow_loopback_admits_nothing_else(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address), allow_loopback=True) is not None


# --- URL syntax ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/a.png", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "only http and https"),
        ("http://user:secret@example.com/a.png", "credentials"),
        ("http:///a.png", "no host"),
        ("http://example.com/" + "a" * 3000, "longer than"),
        ("http://[::1/", "not a valid URL"),
    ],
)
def test_bad_urls_are_refused_without_connecting(
    connects: list[tuple[Any, ...]], url: str, message: str
) -> None:
    with pytest.raises(UnsafeUrlError, match=message):
        fetch(url, max_bytes=1000, timeout=5, allow_loopback=True, resolver=FakeDns({}))
    assert connects == []


# --- refusals before any connection --------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/a.png",
        "https://192.168.0.1/a.png",
        "http://[fe80::1]/a.png",
        "http://[::ffff:169.254.169.254]/latest/meta-data",
        "http://100.64.0.1/",
        "http://0.0.0.0:8000/",
    ],
)
def test_literal_internal_addresses_are_refused_without_connecting(
    connects: list[tuple[Any, ...]], url: str
) -> None:
    with pytest.raises(UnsafeUrlError, match="only public addresses"):
        fetch(url, max_bytes=1000, timeout=5, allow_loopback=True)
    assert connects == []


def test_loopback_is_refused_unless_allowed(
    connects: list[tuple[Any, ...]], server: LoopbackServer
) -> None:
    server.routes["/a.jpg"] = respond(200, IMAGE)
    for url in (server.url("/a.jpg"), server.url("/a.jpg", host="[::1]")):
        with pytest.raises(UnsafeUrlError, match="loopback"):
            fetch(url, max_bytes=10**6, timeout=5, allow_loopback=False)
    # A name that resolves to loopback, answered by the system's hosts file.
    with pytest.raises(UnsafeUrlError, match="loopback"):
        fetch(
            server.url("/a.jpg", host="localhost"), max_bytes=10**6, timeout=5, allow_loopback=False
        )
    assert connects == [] and server.requests == []


def test_hostname_resolving_to_private_is_refused_before_connecting(
    connects: list[tuple[Any, ...]],
) -> None:
    dns = FakeDns({"images.example": [["10.0.0.5"]]})
    with pytest.raises(UnsafeUrlError, match=r"images\.example resolves to 10\.0\.0\.5"):
        fetch(
            "http://images.example/a.png",
            max_bytes=1000,
            timeout=5,
            allow_loopback=False,
            resolver=dns,
        )
    assert dns.calls == ["images.example"]
    assert connects == []


def test_one_internal_address_among_public_ones_is_enough_to_refuse(
    connects: list[tuple[Any, ...]],
) -> None:
    dns = FakeDns({"mixed.example": [["93.184.216.34", "169.254.169.254"]]})
    with pytest.raises(UnsafeUrlError, match=r"169\.254\.169\.254"):
        fetch(
            "https://mixed.example/a.png",
            max_bytes=1000,
            timeout=5,
            allow_loopback=False,
            resolver=dns,
        )
    assert connects == []


def test_monkeypatched_module_resolver_is_used(
    connects: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(urlsafety, "resolve_host", lambda host, port: ["fd00::7"])
    with pytest.raises(UnsafeUrlError, match="fd00::7"):
        check_url("http://internal.example/", allow_loopback=False)
    assert connects == []


def test_unresolvable_name_is_a_fetch_error(connects: list[tuple[Any, ...]]) -> None:
    def no_such_host(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(FetchError, match="cannot resolve"):
        fetch(
            "http://nowhere.example/",
            max_bytes=10,
            timeout=5,
            allow_loopback=False,
            resolver=no_such_host,
        )
    assert connects == []


# --- real fetches from a loopback server ---------------------------------------------


def test_fetch_returns_the_body_and_sends_the_original_host(
    connects: list[tuple[Any, ...]], server: LoopbackServer
) -> None:
    server.routes["/a.jpg?v=1"] = respond(200, IMAGE, {"Content-Type": "image/jpeg"})
    body = fetch(server.url("/a.jpg?v=1"), max_bytes=10**6, timeout=10, allow_loopback=True)
    assert body == IMAGE
    assert [(s.path, s.host) for s in server.requests] == [
        ("/a.jpg?v=1", f"127.0.0.1:{server.port}")
    ]
    assert connects == [("127.0.0.1", server.port)]


def test_redirect_to_metadata_is_refused_without_connecting_there(
    connects: list[tuple[Any, ...]], server: LoopbackServer
) -> None:
    server.routes["/r"] = redirect("http://169.254.169.254/latest/meta-data")
    with pytest.raises(UnsafeUrlError, match=r"169\.254\.169\.254"):
        fetch(server.url("/r"), max_bytes=10**6, timeout=10, allow_loopback=True)
    assert [s.path for s in server.requests] == ["/r"]
    assert connects == [("127.0.0.1", server.port)]  # the first hop only


def test_redirect_to_a_name_resolving_to_private_is_refused(
    connects: list[tuple[Any, ...]], server: LoopbackServer
) -> None:
    dns = FakeDns({"cdn.example": [["192.168.1.20"]]})
    server.routes["/r"] = redirect("http://cdn.example/a.jpg", status=301)
    with pytest.raises(UnsafeUrlError, match=r"cdn\.example resolves to 192\.168\.1\.20"):
        fetch(server.url("/r"), max_bytes=10**6, timeout=10, allow_loopback=True, resolver=dns)
    assert connects == [("127.0.0.1", server.port)]


def test_relative_redirects_are_followed_up_to_the_limit(
    connects: list[tuple[Any, ...]], server: LoopbackServer
) -> None:
    server.routes["/1"] = redirect("/2", status=307)
    server.routes["/2"] = redirect("3", status=308)
    server.routes["/3"] = respond(200, IMAGE)
    assert fetch(server.url("/1"), max_bytes=10**6, timeout=10, allow_loopback=True) == IMAGE
    with pytest.raises(FetchError, match="more than 1 redirects"):
        fetch(server.url("/1"), max_bytes=10**6, timeout=10, allow_loopback=True, max_redirects=1)


def test_dns_rebinding_cannot_move_the_connection(
    connects: list[tuple[Any, ...]], server: LoopbackServer
) -> None:
    """The name is resolved once per hop: the connection goes to the address that was
    checked (loopback, allowed here) although the name answers 10.0.0.5 afterwards."""
    server.routes["/a.jpg"] = respond(200, IMAGE)
    dns = FakeDns({"rebind.example": [["127.0.0.1"], ["10.0.0.5"]]})
    url = server.url("/a.jpg", host="rebind.example")
    assert fetch(url, max_bytes=10**6, timeout=10, allow_loopback=True, resolver=dns) == IMAGE
    assert dns.calls == ["rebind.example"]  # never asked again
    assert connects == [("127.0.0.1", server.port)]
    assert server.requests[0].host == f"rebind.example:{server.port}"  # Host kept


def test_dns_rebinding_on_a_redirect_hop_is_refused(
    connects: list[tuple[Any, ...]], server: LoopbackServer
) -> None:
    """Each hop resolves and checks again: the second answer (private) is refused."""
    server.routes["/r"] = redirect("/a.jpg")
    server.routes["/a.jpg"] = respond(200, IMAGE)
    dns = FakeDns({"rebind.example": [["127.0.0.1"], ["10.0.0.5"]]})
    with pytest.raises(UnsafeUrlError, match=r"10\.0\.0\.5"):
        fetch(
            server.url("/r", host="rebind.example"),
            max_bytes=10**6,
            timeout=10,
            allow_loopback=True,
            resolver=dns,
        )
    assert dns.calls == ["rebind.example", "rebind.example"]
    assert [s.path for s in server.requests] == ["/r"]
    assert connects == [("127.0.0.1", server.port)]


def test_http_errors_are_fetch_errors(server: LoopbackServer) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(server.url("/missing"), max_bytes=10**6, timeout=10, allow_loopback=True)
    server.routes["/r"] = respond(302)  # a redirect without Location
    with pytest.raises(FetchError, match="without a Location"):
        fetch(server.url("/r"), max_bytes=10**6, timeout=10, allow_loopback=True)


def test_compressed_bodies_are_refused(server: LoopbackServer) -> None:
    server.routes["/gz"] = respond(200, gzip.compress(IMAGE), {"Content-Encoding": "gzip"})
    with pytest.raises(FetchError, match="compressed"):
        fetch(server.url("/gz"), max_bytes=10**6, timeout=10, allow_loopback=True)


def test_size_limit_by_content_length_and_while_streaming(server: LoopbackServer) -> None:
    server.routes["/big"] = respond(200, b"x" * 5000)
    server.routes["/unsized"] = unsized(b"x" * 5000)
    server.routes["/exact"] = unsized(b"x" * 4096)
    for path in ("/big", "/unsized"):
        with pytest.raises(FetchError, match="larger than the limit of 4096 bytes"):
            fetch(server.url(path), max_bytes=4096, timeout=10, allow_loopback=True)
    assert fetch(server.url("/exact"), max_bytes=4096, timeout=10, allow_loopback=True) == (
        b"x" * 4096
    )


def test_a_stalled_server_hits_the_time_limit(server: LoopbackServer) -> None:
    server.routes["/stall"] = stalled(server)
    with pytest.raises(FetchError, match=r"took longer than 0\.5 s"):
        fetch(server.url("/stall"), max_bytes=10**6, timeout=0.5, allow_loopback=True)


def test_a_dripping_server_hits_the_total_time_limit(server: LoopbackServer) -> None:
    """Each byte arrives long before any per-read timeout: only a deadline over the
    whole fetch stops this."""
    server.routes["/drip"] = dripping(server)
    with pytest.raises(FetchError, match=r"took longer than 0\.5 s"):
        fetch(server.url("/drip"), max_bytes=10**6, timeout=0.5, allow_loopback=True)


# --- https: connect to the vetted IP, verify the certificate for the hostname -----------


# Shipped with the tests (tests/certs/README.md): the tests run without openssl.
CERTIFICATES = Path(__file__).parent / "certs"


@pytest.fixture(scope="module")
def certificates() -> dict[str, tuple[Path, Path]]:
    return {
        name: (CERTIFICATES / f"{name}.pem", CERTIFICATES / f"{name}.key")
        for name in ("images.example", "other.example")
    }


def _tls_server(cert_and_key: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert_and_key)
    return context


def _client_trusting(certificates: dict[str, tuple[Path, Path]]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for cert, _ in certificates.values():
        context.load_verify_locations(cafile=str(cert))
    return context


def test_https_pins_the_ip_but_verifies_the_hostname(
    connects: list[tuple[Any, ...]], certificates: dict[str, tuple[Path, Path]]
) -> None:
    with loopback_server(tls=_tls_server(certificates["images.example"])) as srv:
        srv.routes["/a.jpg"] = respond(200, IMAGE)
        dns = FakeDns({"images.example": [["127.0.0.1"]]})
        body = fetch(
            srv.url("/a.jpg", host="images.example", scheme="https"),
            max_bytes=10**6, timeout=10, allow_loopback=True, resolver=dns,
            ssl_context=_client_trusting(certificates),
        )  # fmt: skip
        assert body == IMAGE
        assert srv.server_names == ["images.example"]  # SNI: the hostname, not the IP
        assert srv.requests[0].host == f"images.example:{srv.port}"
    assert connects == [("127.0.0.1", srv.port)]


def test_https_certificate_for_another_name_is_refused(
    connects: list[tuple[Any, ...]], certificates: dict[str, tuple[Path, Path]]
) -> None:
    """The vetted IP serves a certificate valid for other.example only: refused, so a
    pinned connection cannot be used to impersonate a host."""
    with loopback_server(tls=_tls_server(certificates["other.example"])) as srv:
        srv.routes["/a.jpg"] = respond(200, IMAGE)
        dns = FakeDns({"images.example": [["127.0.0.1"]]})
        with pytest.raises(FetchError, match="certificate"):
            fetch(
                srv.url("/a.jpg", host="images.example", scheme="https"),
                max_bytes=10**6, timeout=10, allow_loopback=True, resolver=dns,
                ssl_context=_client_trusting(certificates),
            )  # fmt: skip
        assert srv.requests == []


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        ("https://hooks.example/in?token=s3cret", "https://hooks.example/in?…"),
        ("https://user:pw@hooks.example:8443/a#frag", "https://hooks.example:8443/a?…"),
        ("http://[2001:db8::1]/x?k=v", "http://[2001:db8::1]/x?…"),
        ("https://hooks.example/plain", "https://hooks.example/plain"),
    ],
)
def test_urls_in_logs_lose_user_info_query_and_fragment(url: str, logged: str) -> None:
    assert urlsafety.for_logs(url) == logged
