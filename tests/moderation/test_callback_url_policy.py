"""The callback URL policy (https, no user info, public addresses): checked when set and when connecting."""

from __future__ import annotations

import ipaddress
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client

from audit.models import AuditEvent
from moderation import callback_urls, services
from moderation.models import Source
from policies.models import Policy
from reviews import callbacks
from reviews import services as review_services
from reviews.callbacks import CallbackFailed
from reviews.models import CallbackDelivery, Decision
from reviews.services import DecisionIn
from tests.conftest import ApiClient, CasesFactory
from tests.reviews.helpers import CallbackReceiver, refused_url

PUBLIC = ipaddress.ip_address("93.184.215.14")


@pytest.fixture
def production(settings: Any) -> Any:
    """Production's policy: no http, no allow-list (pytest's env allows the loopback for other tests)."""
    settings.CALLBACK_ALLOW_HTTP = False
    settings.CALLBACK_ALLOWED_HOSTS = []
    return settings


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """names -> addresses the resolver answers (literal addresses resolve to themselves)."""
    answers: dict[str, list[str]] = {}
    real = callback_urls.host_addresses

    def resolve(host: str, port: int) -> list[Any]:
        if host in answers:
            return [ipaddress.ip_address(a) for a in answers[host]]
        return real(host, port)

    monkeypatch.setattr(callback_urls, "host_addresses", resolve)
    return answers


def create(url: str) -> Source:
    return services.source_create(name="Platform", slug="platform", callback_url=url).source


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://platform.example/hooks", "must use https"),
        ("http://platform.example/hooks", "must use https"),
        ("https://user:pw@platform.example/hooks", "user name or password"),
        ("https://127.0.0.1/hooks", "loopback address"),
        ("https://127.0.0.1:5432/", "loopback address"),
        ("https://[::1]:6379/", "loopback address"),
        ("https://[::ffff:127.0.0.1]/", "loopback address"),
        ("https://169.254.169.254/latest/meta-data", "link-local address"),
        ("https://[fe80::1]/", "link-local address"),
        ("https://10.1.2.3/hooks", "private address"),
        ("https://192.168.0.10/hooks", "private address"),
        ("https://[fd00::1]/hooks", "private address"),
        ("https://224.0.0.1/hooks", "multicast address"),
        ("https://0.0.0.0/hooks", "unspecified address"),
        ("https://240.0.0.1/hooks", "reserved address"),
        ("https://100.64.0.1/hooks", "non-public address"),
    ],
)
def test_it_refuses_a_callback_url_that_breaks_the_policy_with_the_reason(
    db: None, production: Any, url: str, reason: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        create(url)
    [message] = refused.value.message_dict["callback_url"]
    assert reason in message
    assert not Source.objects.exists()


def test_it_refuses_a_name_that_resolves_to_a_private_address(
    db: None, production: Any, resolver: dict[str, list[str]]
) -> None:
    resolver["internal.example"] = ["10.0.0.7"]
    resolver["split.example"] = [str(PUBLIC), "127.0.0.1"]  # every address is checked, not only the first
    for name in resolver:
        with pytest.raises(ValidationError, match="callback address not allowed"):
            create(f"https://{name}/hooks")


def test_it_accepts_a_public_https_url(db: None, production: Any, resolver: dict[str, list[str]]) -> None:
    resolver["platform.example"] = [str(PUBLIC)]
    assert create("https://platform.example/hooks").callback_url == "https://platform.example/hooks"
    Source.objects.all().delete()
    assert create(f"https://{PUBLIC}:8443/hooks").pk


def test_the_allow_list_names_hosts_and_networks(
    db: None, production: Any, resolver: dict[str, list[str]]
) -> None:
    production.CALLBACK_ALLOWED_HOSTS = ["hooks.internal", "10.20.0.0/16", "::1"]
    resolver["hooks.internal"] = ["10.9.9.9"]
    resolver["platform.internal"] = ["10.20.3.4"]
    for url in ("https://hooks.internal/a", "https://platform.internal/b", "https://[::1]:8443/c"):
        callback_urls.callback_url_check(url)
    with pytest.raises(callback_urls.CallbackAddressRefused):
        callback_urls.callback_url_check("https://10.21.0.1/d")


def test_http_is_allowed_only_by_setting(db: None, production: Any, resolver: dict[str, list[str]]) -> None:
    resolver["platform.example"] = [str(PUBLIC)]
    with pytest.raises(callback_urls.CallbackUrlRefused, match="must use https"):
        callback_urls.callback_url_check("http://platform.example/hooks")
    production.CALLBACK_ALLOW_HTTP = True
    callback_urls.callback_url_check("http://platform.example/hooks")


def test_createsource_refuses_with_the_reason(db: None, production: Any) -> None:
    with pytest.raises(CommandError, match=r"callback_url: .*link-local address"):
        call_command("createsource", "Platform", "--callback-url", "https://169.254.169.254/")


def test_the_admin_refuses_an_internal_callback_url(db: None, production: Any, policy: Policy) -> None:
    source = create("")
    root = User.objects.create_superuser("root", password="not-used-in-tests")
    client = Client()
    client.force_login(root)
    form = {
        "name": source.name,
        "slug": source.slug,
        "rate_limit_per_minute": source.rate_limit_per_minute,
        "is_active": "on",
        "policies": [policy.pk],
    }
    page = client.post(
        f"/admin/moderation/source/{source.pk}/change/", {**form, "callback_url": "https://127.0.0.1:6379/"}
    )
    assert page.status_code == 200  # the form again, with the reason
    assert b"callback address not allowed: 127.0.0.1 is or resolves to a loopback address" in page.content
    source.refresh_from_db()
    assert source.callback_url == ""


# At connection time: the check is repeated on the addresses the connection actually uses.


def decided(source: ApiClient, moderator: User, queued_cases: CasesFactory) -> Decision:
    [case] = queued_cases()
    claimed = review_services.case_claim_next(moderator=moderator)
    assert claimed == case
    return review_services.case_decide(
        case=claimed,
        moderator=moderator,
        decision=DecisionIn(action=Decision.Action.OVERTURN, final_label="safe", rule_ids=[]),
    )


@pytest.fixture(autouse=True)
def no_qa_sampling(request: pytest.FixtureRequest) -> None:
    if "policy" in request.fixturenames:
        policy: Policy = request.getfixturevalue("policy")
        policy.qa_sample_rate = 0
        policy.save()


def test_a_name_rebound_to_the_loopback_after_it_was_checked_is_refused(
    source: ApiClient,
    moderator: User,
    admin: User,
    queued_cases: CasesFactory,
    callback_receiver: CallbackReceiver,
    resolver: dict[str, list[str]],
    settings: Any,
) -> None:
    settings.CALLBACK_ALLOWED_HOSTS = []
    port = callback_receiver.server.server_address[1]
    resolver["platform.example"] = [str(PUBLIC)]
    url = f"http://platform.example:{port}/hooks/decisions"
    callback_urls.callback_url_check(url)  # fine when set
    Source.objects.filter(pk=source.source.pk).update(callback_url=url)
    decision = decided(source, moderator, queued_cases)

    resolver["platform.example"] = ["127.0.0.1"]  # DNS now answers with the loopback
    with pytest.raises(CallbackFailed, match=r"^callback address not allowed$"):
        callbacks.callback_deliver(decision_id=decision.pk)

    assert callback_receiver.received == []
    failed = CallbackDelivery.objects.get(decision=decision)
    assert (failed.status_code, failed.succeeded) == (None, False)
    assert failed.error == "callback address not allowed"
    assert AuditEvent.objects.get(action="callback.failed").payload["error"] == "callback address not allowed"


def test_a_refused_address_reads_the_same_whether_a_port_is_open_or_not(
    source: ApiClient,
    moderator: User,
    admin: User,
    queued_cases: CasesFactory,
    callback_receiver: CallbackReceiver,
    settings: Any,
) -> None:
    settings.CALLBACK_ALLOWED_HOSTS = []
    errors = []
    for url in (callback_receiver.url, refused_url()):  # one port listens, the other does not
        Source.objects.filter(pk=source.source.pk).update(callback_url=url)
        decision = decided(source, moderator, queued_cases)
        with pytest.raises(CallbackFailed):
            callbacks.callback_deliver(decision_id=decision.pk)
        errors.append(CallbackDelivery.objects.get(decision=decision).error)
    assert errors == ["callback address not allowed"] * 2
    assert callback_receiver.received == []
    client = Client()
    client.force_login(admin)
    page = client.get("/callbacks/").content.decode()
    assert page.count("callback address not allowed") == 2
    assert "ConnectError" not in page and "refused" not in page.lower()


def test_it_connects_to_the_checked_address_with_the_url_host_name(
    source: ApiClient,
    moderator: User,
    queued_cases: CasesFactory,
    callback_receiver: CallbackReceiver,
    resolver: dict[str, list[str]],
) -> None:
    port = callback_receiver.server.server_address[1]
    resolver["platform.test"] = ["127.0.0.1"]  # allowed: pytest's CALLBACK_ALLOWED_HOSTS covers 127.0.0.0/8
    Source.objects.filter(pk=source.source.pk).update(callback_url=f"http://platform.test:{port}/hooks")
    decision = decided(source, moderator, queued_cases)
    delivery = callbacks.callback_deliver(decision_id=decision.pk)
    assert delivery is not None and delivery.succeeded
    [received] = callback_receiver.received
    assert received.headers["host"] == f"platform.test:{port}"


def test_a_url_stored_before_the_policy_is_refused_when_sent(
    source: ApiClient,
    moderator: User,
    queued_cases: CasesFactory,
    callback_receiver: CallbackReceiver,
    production: Any,
) -> None:
    production.CALLBACK_ALLOWED_HOSTS = ["127.0.0.1"]
    Source.objects.filter(pk=source.source.pk).update(callback_url=callback_receiver.url)  # http
    decision = decided(source, moderator, queued_cases)
    with pytest.raises(CallbackFailed, match="callback URL not allowed: the callback URL must use https"):
        callbacks.callback_deliver(decision_id=decision.pk)
    assert callback_receiver.received == []


# TLS: the connection goes to the checked address, SNI and the certificate check use the URL's name.


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for platform.test (key and certificate in one PEM file)."""
    directory = tmp_path_factory.mktemp("tls")
    pem = directory / "platform.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=platform.test", "-addext", "subjectAltName=DNS:platform.test",
         "-keyout", str(pem), "-out", str(directory / "c.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    pem.write_text(pem.read_text() + (directory / "c.pem").read_text())
    return pem


@pytest.fixture
def tls_receiver(certificate: Path) -> Iterator[tuple[int, list[str | None]]]:
    """An https receiver on 127.0.0.1 that records the SNI name of each handshake."""
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate)
    context.sni_callback = lambda sock, name, ctx: names.append(name)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], names
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_tls_is_verified_against_the_url_host_name(
    source: ApiClient,
    moderator: User,
    queued_cases: CasesFactory,
    tls_receiver: tuple[int, list[str | None]],
    certificate: Path,
    resolver: dict[str, list[str]],
    production: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, names = tls_receiver
    production.CALLBACK_ALLOWED_HOSTS = ["127.0.0.1"]
    resolver["platform.test"] = resolver["elsewhere.test"] = ["127.0.0.1"]

    # Not signed by a public authority: refused by the production client.
    Source.objects.filter(pk=source.source.pk).update(callback_url=f"https://platform.test:{port}/hooks")
    first = decided(source, moderator, queued_cases)
    with pytest.raises(CallbackFailed, match=r"ConnectError: .*CERTIFICATE_VERIFY_FAILED"):
        callbacks.callback_deliver(decision_id=first.pk)

    # Trusting the platform's certificate: delivered, SNI platform.test, though the socket went to 127.0.0.1.
    trusting = httpx.Client(
        transport=callbacks._CheckedTransport(ssl.create_default_context(cafile=str(certificate))),
        trust_env=False,
    )
    monkeypatch.setattr(callbacks, "_http_client", lambda pid: trusting)
    delivery = callbacks.callback_deliver(decision_id=first.pk)
    assert delivery is not None and delivery.succeeded
    assert names[-1] == "platform.test"

    # The same address under another name: the certificate does not match the name, refused.
    Source.objects.filter(pk=source.source.pk).update(callback_url=f"https://elsewhere.test:{port}/hooks")
    second = decided(source, moderator, queued_cases)
    with pytest.raises(
        CallbackFailed, match=r"ConnectError: .*(Hostname mismatch|CERTIFICATE_VERIFY_FAILED)"
    ):
        callbacks.callback_deliver(decision_id=second.pk)
