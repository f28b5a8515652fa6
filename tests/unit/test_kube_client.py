"""The runner's blocking Kubernetes client against an API server that is overloaded or restarting: what is asked
again (a read after a 429, a 5xx or no answer; a write only after a 429 or 503, which were not processed), for how
long, and that every failure is a KubeError naming the object, never the HTTP library's exception."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from cdi_operator.kube import Kube, KubeError, NotFound, Unanswered
from cdi_operator.kube import client as kube_client

STATUS_PATH = "/apis/cdi.ingest.dev/v1alpha1/namespaces/ns/cdiintegrations/users/status"
OBJECT = {"apiVersion": "cdi.ingest.dev/v1alpha1", "kind": "CdiIntegration", "metadata": {"name": "users"}}


class Scripted(ThreadingHTTPServer):
    """Answers each request with the next of `script` (a status, or "drop" to close without an answer), then 200."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: list[int | str] = []
        self.seen: list[str] = []


class Handler(BaseHTTPRequestHandler):
    server: Scripted

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append(self.command)
        step = self.server.script.pop(0) if self.server.script else 200
        if step == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        body = json.dumps(OBJECT if step == 200 else {"kind": "Status", "code": step}).encode()
        self.send_response(int(step))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if step == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PATCH = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_client, "FIRST_BACKOFF", 0.01)
    monkeypatch.setattr(kube_client, "MAX_BACKOFF", 0.05)


@pytest.fixture
def server() -> Iterator[Scripted]:
    scripted = Scripted()
    thread = threading.Thread(target=scripted.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield scripted
    scripted.shutdown()
    scripted.server_close()


def kube(server: Scripted, retry_seconds: float) -> Kube:
    configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    configuration.retries = 0  # what is asked again is the Kube's to decide, not urllib3's
    return Kube(client.ApiClient(configuration), retry_seconds=retry_seconds)


def patch(api: Kube) -> object:
    return api.patch_status("cdiintegrations", "ns", "users", {"watermark": None}, "7")


def test_a_write_refused_unprocessed_is_sent_again_until_it_lands(server: Scripted) -> None:
    server.script = [429, 503, 429]
    assert patch(kube(server, retry_seconds=10)) == OBJECT
    assert server.seen == ["PATCH"] * 4


@pytest.mark.parametrize("failure", [500, 504, "drop"])
def test_a_write_that_may_have_been_applied_is_not_sent_again(server: Scripted, failure: int | str) -> None:
    server.script = [failure]
    with pytest.raises(KubeError) as raised:
        patch(kube(server, retry_seconds=10))
    assert server.seen == ["PATCH"]
    assert "cdiintegrations.cdi.ingest.dev ns/users status" in raised.value.message
    if failure == "drop":
        assert isinstance(raised.value, Unanswered)
        assert "no answer from the API server" in raised.value.message
    else:
        assert raised.value.status == failure


def test_a_read_is_asked_again_after_any_overload_or_no_answer(server: Scripted) -> None:
    server.script = [500, "drop", 502, 503, 504, 429]
    assert kube(server, retry_seconds=30).get_custom("cdiintegrations", "ns", "users") == OBJECT
    assert server.seen == ["GET"] * 7


def test_it_gives_up_after_retry_seconds_and_the_error_says_what(server: Scripted) -> None:
    server.script = [429] * 100
    with pytest.raises(KubeError) as raised:
        patch(kube(server, retry_seconds=1))
    assert raised.value.status == 429 and raised.value.transient
    assert 10 <= len(server.seen) < 100  # backed off, not hammering


def test_without_retry_seconds_nothing_is_asked_again(server: Scripted) -> None:
    server.script = [503]
    with pytest.raises(KubeError):
        kube(server, retry_seconds=0).get_custom("cdiintegrations", "ns", "users")
    assert server.seen == ["GET"]


def test_what_retrying_cannot_mend_fails_at_once(server: Scripted) -> None:
    server.script = [404]
    with pytest.raises(NotFound) as raised:
        kube(server, retry_seconds=30).get_custom("cdiintegrations", "ns", "users")
    assert not raised.value.transient
    assert server.seen == ["GET"]
