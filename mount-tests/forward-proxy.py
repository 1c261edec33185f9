#!/usr/bin/env python3
"""An HTTP forward proxy for the mount tests: what HTTPS_PROXY and HTTP_PROXY name.

CONNECT host:port is tunnelled (https), and an absolute-form request
(GET http://host:port/path) is forwarded (plain http). Host names in MAP resolve to
the address given there, so that a registry on this machine can be reached by a name
that is not loopback (which is never proxied). Every request is appended to LOG as
"<method> <target> <authorization header present: yes|no>".

usage: forward-proxy.py PORT NAME=ADDRESS[,NAME=ADDRESS...] LOG
"""

import http.client
import http.server
import select
import socket
import sys
import urllib.parse

PORT, MAP, LOG = sys.argv[1:4]
NAMES = dict(e.split("=", 1) for e in MAP.split(",") if e)


def resolve(host):
    return NAMES.get(host, host)


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self):
        auth = "yes" if self.headers.get("Authorization") else "no"
        with open(LOG, "a") as log:
            log.write(f"{self.command} {self.path} {auth}\n")

    def do_CONNECT(self):
        self.record()
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((resolve(host), int(port)), timeout=30)
        except OSError:
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        ends = [self.connection, upstream]
        try:
            while True:
                ready, _, _ = select.select(ends, [], [], 60)
                if not ready:
                    break
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (upstream if s is self.connection else self.connection).sendall(data)
        except OSError:
            pass
        finally:
            upstream.close()

    def forward(self):
        self.record()
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(resolve(url.hostname), url.port or 80, timeout=30)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("proxy-connection", "connection", "keep-alive")}
        target = url.path + ("?" + url.query if url.query else "")
        conn.request(self.command, target, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = forward


http.server.ThreadingHTTPServer(("127.0.0.1", int(PORT)), Proxy).serve_forever()
