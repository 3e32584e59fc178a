"""`fluidity control-plane`: the Lambda handlers behind a local HTTP front.

Stands in for API Gateway on a laptop or in tests: POST /wake, GET /status and
POST /kill are turned into API Gateway proxy events, handed to the very handlers the
Lambdas run (in a thread, since boto3 blocks), and their proxy responses written back.
Like an API Gateway method with an API key, every request needs `x-api-key`.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

from twisted.internet import threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from lambdas import kill, status, wake

log = Logger(namespace="fluidity.control_plane")

ROUTES = {"/wake": wake.handler, "/status": status.handler, "/kill": kill.handler}
MAX_BODY = 64 * 1024


def proxy_event(request, path: str, body: bytes) -> dict:
    """The API Gateway (REST, v1) proxy event for this request."""
    headers = {
        name.decode("latin-1"): values[-1].decode("latin-1")
        for name, values in request.requestHeaders.getAllRawHeaders()
    }
    query = {k.decode("latin-1"): v[-1].decode("latin-1") for k, v in request.args.items()} or None
    return {
        "resource": path,
        "path": path,
        "httpMethod": request.method.decode("latin-1"),
        "headers": headers,
        "queryStringParameters": query,
        "body": body.decode("utf-8", "replace") if body else None,
        "isBase64Encoded": False,
        "requestContext": {"stage": "local", "identity": {"sourceIp": request.getClientAddress().host}},
    }


class ControlPlane(resource.Resource):
    isLeaf = True

    def __init__(self, reactor, api_key: str) -> None:
        super().__init__()
        if not api_key:
            raise ValueError("an API key is required")
        self.reactor = reactor
        self.api_key = api_key.encode()

    def render(self, request):
        given = (request.getHeader("x-api-key") or "").encode()
        if not hmac.compare_digest(given, self.api_key):
            return self._answer(request, 403, {"message": "Forbidden"})
        path = request.path.decode("latin-1").rstrip("/") or "/"
        handler = ROUTES.get(path)
        if handler is None:
            return self._answer(request, 404, {"message": f"no such route: {path} (try /wake, /status, /kill)"})
        body = request.content.read(MAX_BODY + 1) if request.content else b""
        if len(body) > MAX_BODY:
            return self._answer(request, 413, {"message": "request body too large"})
        event = proxy_event(request, path, body)
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), handler, event, None)
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def answered(reply: dict) -> None:
            # Who called: the address the request came from (a proxy's, when the agent is behind one).
            log.info(
                "{method} {path} from {caller} -> {code}",
                method=event["httpMethod"],
                path=path,
                caller=event["requestContext"]["identity"]["sourceIp"],
                code=reply["statusCode"],
            )
            if not gone:
                request.setResponseCode(reply["statusCode"])
                for name, value in (reply.get("headers") or {}).items():
                    request.setHeader(name, value)
                request.write(reply["body"].encode())
                request.finish()

        def failed(failure) -> None:  # the handlers never raise; this is the last net
            log.failure("handler raised", failure)
            if not gone:
                request.write(self._answer(request, 500, {"error": "internal error"}))
                request.finish()

        d.addCallbacks(answered, failed)
        return server.NOT_DONE_YET

    @staticmethod
    def _answer(request, code: int, body: dict) -> bytes:
        request.setResponseCode(code)
        request.setHeader("Content-Type", "application/json")
        request.setHeader("Cache-Control", "no-store")
        return json.dumps(body).encode()


def tls_options(cert_file: str, key_file: str):
    """Server TLS from a PEM certificate and its key; ValueError says which file is wrong."""
    from twisted.internet import ssl

    try:
        cert_pem, key_pem = Path(cert_file).read_bytes(), Path(key_file).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {e.filename}: {e.strerror}") from None
    try:
        return ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem).options()
    except Exception as e:
        raise ValueError(
            f"{cert_file} and {key_file} are not a PEM certificate and its key ({type(e).__name__})"
        ) from None


def make_site(reactor, api_key: str) -> server.Site:
    site = server.Site(ControlPlane(reactor, api_key))
    site.displayTracebacks = False
    site.noisy = False
    return site
