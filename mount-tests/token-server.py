#!/usr/bin/env python3
"""A registry token server for the mount tests: distribution's `auth: token` flow.

GET /token?service=S&scope=repository:NAME:pull,push answers {"token", "expires_in"}
with a JWT (RS256, signed by `openssl dgst` with KEY, the certificate in `x5c`) that
grants the asked actions to USER:PASSWORD given by Basic auth, and pull alone to
anonymous callers. POST /token with the OAuth2 form (grant_type=refresh_token,
refresh_token=REFRESH, scope space-separated) grants the same to the holder of the
identity token REFRESH (`identitytoken` in auth.json). Every request is appended to
LOG as one line: the scope, the user (`refresh` for an identity token), whether it was
granted, and the caller's User-Agent. With --refuse, every request is answered 401.

usage: token-server.py PORT KEY CERT ISSUER SERVICE USER:PASSWORD LOG [--refuse]
       [--refresh REFRESH]
"""

import base64
import http.server
import json
import subprocess
import sys
import time
import urllib.parse
import uuid

PORT, KEY, CERT, ISSUER, SERVICE, CREDS, LOG = sys.argv[1:8]
REFUSE = "--refuse" in sys.argv[8:]
REFRESH = None
if "--refresh" in sys.argv[8:]:
    REFRESH = sys.argv[sys.argv.index("--refresh") + 1]


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def cert_der():
    pem = open(CERT).read()
    body = "".join(l for l in pem.splitlines() if "-----" not in l)
    return base64.b64decode(body)


X5C = base64.b64encode(cert_der()).decode()


def sign(data):
    return subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", KEY],
        input=data, capture_output=True, check=True,
    ).stdout


def token(sub, access):
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [X5C]}
    claims = {
        "iss": ISSUER, "sub": sub, "aud": SERVICE, "exp": now + 300,
        "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access,
    }
    signing = (b64url(json.dumps(header).encode()) + "." +
               b64url(json.dumps(claims).encode())).encode()
    return signing.decode() + "." + b64url(sign(signing))


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(url.query)
        scopes = q.get("scope", [])
        user = None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            pair = base64.b64decode(auth[6:]).decode(errors="replace")
            if pair == CREDS:
                user = pair.split(":", 1)[0]
        self.answer(url.path, scopes, user)

    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        length = int(self.headers.get("Content-Length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        scopes = " ".join(form.get("scope", [])).split()
        user = None
        if (form.get("grant_type") == ["refresh_token"] and REFRESH is not None
                and form.get("refresh_token") == [REFRESH]
                and form.get("service") == [SERVICE]):
            user = "refresh"
        self.answer(url.path, scopes, user)

    def answer(self, path, scopes, user):
        granted = not REFUSE and path == "/token"
        with open(LOG, "a") as log:
            agent = self.headers.get("User-Agent", "-").split(" ")[0]
            log.write(f"{' '.join(scopes) or '-'} user={user or '-'} granted={granted} agent={agent}\n")
        if not granted:
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"errors":[{"code":"DENIED","message":"no token for you"}]}')
            return
        access = []
        for s in scopes:
            parts = s.split(":")
            if len(parts) != 3 or parts[0] != "repository":
                continue
            actions = [a for a in parts[2].split(",") if user or a == "pull"]
            access.append({"type": "repository", "name": parts[1], "actions": actions})
        body = json.dumps({"token": token(user or "", access), "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("127.0.0.1", int(PORT)), Handler).serve_forever()
