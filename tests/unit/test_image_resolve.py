"""Tag -> digest pinning against a registry stand-in on loopback (the only address tests may reach)."""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pdstack.image_resolve import ImageNotInRegistry, resolve

DIGEST = "sha256:" + "ab" * 32


class Registry(BaseHTTPRequestHandler):
    def do_HEAD(self):
        if self.path == "/v2/pdstack/simulator/manifests/0.1.0" and "manifest" in self.headers.get("Accept", ""):
            self.send_response(200)
            self.send_header("Docker-Content-Digest", DIGEST)
        else:
            self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def registry():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_tag_is_pinned_to_the_digest_the_registry_serves(registry):
    assert resolve(f"{registry}/pdstack/simulator:0.1.0") == (f"{registry}/pdstack/simulator@{DIGEST}", None)


def test_a_tag_the_registry_does_not_have_is_an_error_before_any_host_pulls(registry):
    with pytest.raises(ImageNotInRegistry) as err:
        resolve(f"{registry}/pdstack/simulator:nope")
    assert str(err.value) == (f"{registry} has no pdstack/simulator:nope (HTTP 404): push the image, or fix the tag "
                              "in pdstack:image")


def test_an_unreachable_registry_keeps_the_tag(registry):
    ref, problem = resolve("127.0.0.1:9/pdstack/simulator:0.1.0", timeout=1)  # port 9: nothing listens
    assert ref.endswith(":0.1.0") and "could not ask 127.0.0.1:9" in problem


def test_digest_references_and_docker_hub_names_are_not_looked_up():
    pinned = "quay.io/a/b@" + DIGEST
    assert resolve(pinned) == (pinned, None)
    ref, problem = resolve("ubuntu:22.04")
    assert ref == "ubuntu:22.04" and "Docker Hub" in problem
