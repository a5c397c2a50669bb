#!/usr/bin/env python3
"""Example RevenProx auth webhook (design §5) for the compose cluster. Standard library only.

POST /verify with {"token", "remote_addr", "headers", "node"}; when WEBHOOK_SECRET is set the body
must carry X-Revenprox-Signature: sha256=<hex HMAC-SHA256 of the body>, else 401.

Tokens (a demo, not a user database):
  demo-<user>   allowed as u-<user>: subscribe chat.> and public.>, publish chat.>
  admin         allowed as admin: subscribe and publish everything (>)
  fail          answers 500, to watch the circuit breaker open
  anything else denied: {"allow": false}

GET /health answers 200. Listens on LISTEN (default 0.0.0.0:9000).
"""
import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ.get("WEBHOOK_SECRET", "").encode()
TTL = int(os.environ.get("TOKEN_TTL", "60"))


def decide(token):
    if token == "admin":
        return 200, {"allow": True, "user": "admin", "ttl": TTL, "subscribe": [">"], "publish": [">"]}
    if token == "fail":
        return 500, {"error": "simulated failure"}
    if token.startswith("demo-") and len(token) > 5:
        user = token[5:]
        return 200, {"allow": True, "user": "u-" + user, "ttl": TTL,
                     "subscribe": ["chat.>", "public.>"], "publish": ["chat.>"]}
    return 200, {"allow": False, "reason": "unknown token"}


class Handler(BaseHTTPRequestHandler):
    server_version = "revenprox-example-auth/1"

    def reply(self, status, body):
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, {"status": "ok"})
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        if self.path != "/verify":
            self.reply(404, {"error": "not found"})
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if SECRET:
            want = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(want, self.headers.get("X-Revenprox-Signature", "")):
                self.reply(401, {"allow": False, "reason": "bad signature"})
                return
        try:
            req = json.loads(body)
            token = req["token"]
        except (ValueError, KeyError, TypeError):
            self.reply(400, {"error": "body must be JSON with a token"})
            return
        status, answer = decide(str(token))
        self.reply(status, answer)

    def log_message(self, fmt, *args):
        # Never log tokens: only the method, path and status reach the log.
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))


def main():
    host, _, port = os.environ.get("LISTEN", "0.0.0.0:9000").rpartition(":")
    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    # The test harness reads the bound port from this line (LISTEN may end in :0).
    print("listening on %s:%d" % server.server_address[:2], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
