#!/usr/bin/env python3
"""A reverse proxy in front of a test registry that injects the faults no real
registry makes on purpose: 429 with Retry-After, bytes that do not match their
digest, bodies over a limit.

usage: fault-proxy.py PORT UPSTREAM_HOST:PORT RULES.json LOG [--delay-ms N]

--delay-ms N adds N ms to every request and to every new connection: a round trip
of N ms (for the registry benchmark, where the kernel has no netem).

RULES.json (read at every request, so a test may change it) is a list of
{"path": SUBSTRING, "method": "GET",
 "do": "429" | "corrupt" | "huge" | "hang" | "status" | "rewrite",
 "times": N (429: how many times), "retry_after": SECONDS, "bytes": N (huge),
 "seconds": N (hang: how long before the answer), "status": N (status: answered
 without asking the registry), "from": S, "to": S (rewrite: S replaced in the path
 sent on to the registry)}.
Every request is appended to LOG: "<unix time> <method> <path> <status>".
"""

import http.client
import http.server
import json
import sys
import threading
import time

PORT, UPSTREAM, RULES, LOG = sys.argv[1:5]
DELAY = float(sys.argv[sys.argv.index("--delay-ms") + 1]) / 1000 if "--delay-ms" in sys.argv else 0.0
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
counts = {}
lock = threading.Lock()


def rules():
    try:
        return json.load(open(RULES))
    except (OSError, ValueError):
        return []


local = threading.local()


def upstream():
    # one kept-alive connection to the registry per proxy thread
    c = getattr(local, "conn", None)
    if c is None:
        c = local.conn = http.client.HTTPConnection(UPSTREAM, timeout=60)
    return c


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle(self):
        # a client that drops a kept-alive connection (one that stopped reading a body
        # over its limit) ends it; no trace
        if DELAY:
            time.sleep(DELAY)  # the connection's handshake
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):
            pass

    def record(self, status):
        with lock, open(LOG, "a") as log:
            log.write(f"{time.time():.3f} {self.command} {self.path} {status}\n")

    def reply(self, status, headers, body):
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.record(status)
        if self.command != "HEAD":
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                # the client stopped reading (a body over its limit): as it should
                self.close_connection = True

    def handle_any(self):
        if DELAY:
            time.sleep(DELAY)
        length = int(self.headers.get("Content-Length") or 0)
        sent = self.rfile.read(length) if length else None
        rule = next((r for r in rules()
                     if r["path"] in self.path and r.get("method", "GET") == self.command), None)
        if rule and rule["do"] == "hang":
            time.sleep(rule.get("seconds", 60))
        if rule and rule["do"] == "status":
            self.reply(rule["status"], [("Content-Type", "application/json")],
                       b'{"errors":[{"code":"UNKNOWN","message":"refused by the fault proxy"}]}')
            return
        path = self.path
        if rule and rule["do"] == "rewrite":
            path = path.replace(rule["from"], rule["to"])
        if rule and rule["do"] == "429":
            key = (rule["path"], self.command)
            with lock:
                counts[key] = counts.get(key, 0) + 1
                n = counts[key]
            if n <= rule.get("times", 1):
                self.reply(429, [("Retry-After", str(rule.get("retry_after", 1)))],
                           b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}')
                return
        headers = {}
        for k, v in self.headers.items():
            if k.lower() not in HOP:
                # a header given on several lines (skopeo's Accept) is one list
                headers[k] = f"{headers[k]}, {v}" if k in headers else v
        for attempt in (1, 2):
            try:
                up = upstream()
                up.request(self.command, path, body=sent, headers=headers)
                r = up.getresponse()
                body = r.read()
                break
            except (http.client.HTTPException, OSError):
                local.conn = None  # the registry closed it, or restarted: anew once
                if attempt == 2:
                    self.reply(502, [], b"")
                    return
        out_headers = r.getheaders()
        if rule and rule["do"] == "corrupt" and body:
            body = body[:-2] + (b" }" if body.endswith(b"}") else b"  ")
        if rule and rule["do"] == "huge":
            body = b" " * rule.get("bytes", 5 << 20) + body
        self.reply(r.status, out_headers, body)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_any


http.server.ThreadingHTTPServer(("127.0.0.1", int(PORT)), Proxy).serve_forever()
