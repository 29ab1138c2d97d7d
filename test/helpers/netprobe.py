"""Listeners and clients for the end-to-end tests (python3 stdlib only).

Node cannot read SO_ORIGINAL_DST, so the servers live here. Run as `python3 -I -S -c <this file> <command> ...`.

  serve --name NAME --listen tcp:HOST:PORT [--listen udp:HOST:PORT ...] [--lifetime SECONDS]
      Binds every listener, prints one line `READY` on stdout, then answers until stdin closes (the test
      runner went away) or the lifetime ends. Each TCP connection gets one JSON line
      {"name", "origDst", "local", "peer"} and is closed; origDst is read with SO_ORIGINAL_DST
      (IPv6: IP6T_SO_ORIGINAL_DST) and is null when the connection was not NATed. Each UDP datagram is
      answered with {"name", "local", "peer"}. HOST may be bracketed for IPv6: tcp:[::]:8080.

  connect tcp|udp HOST PORT [--timeout SECONDS]
      Connects (TCP) or sends one datagram (UDP), prints the JSON line the server sent and exits 0; on
      failure prints {"error": "..."} and exits 1.
"""

import json
import os
import socket
import struct
import sys
import threading

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h


def split_endpoint(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def format_endpoint(family, host, port):
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def original_destination(conn, family):
    try:
        if family == socket.AF_INET:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack_from("!H", raw, 2)[0]
            host = socket.inet_ntop(socket.AF_INET, raw[4:8])
        else:
            raw = conn.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    except OSError:
        return None  # ENOENT: no conntrack NAT entry, the connection was not redirected
    return format_endpoint(family, host, port)


def reply(name, family, local, peer, **extra):
    body = {"name": name, "local": format_endpoint(family, *local[:2]), "peer": format_endpoint(family, *peer[:2])}
    body.update(extra)
    return (json.dumps(body) + "\n").encode()


def serve_tcp(name, sock, family):
    while True:
        conn, peer = sock.accept()
        with conn:
            try:
                conn.sendall(reply(name, family, conn.getsockname(), peer, origDst=original_destination(conn, family)))
            except OSError:
                pass


def serve_udp(name, sock, family):
    while True:
        _data, peer = sock.recvfrom(2048)
        try:
            sock.sendto(reply(name, family, sock.getsockname(), peer), peer)
        except OSError:
            pass


def open_listener(spec):
    proto, _, endpoint = spec.partition(":")
    host, port = split_endpoint(endpoint)
    family = family_of(host)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    if proto == "tcp":
        sock.listen(64)
    return proto, sock, family


def serve(args):
    name = args[args.index("--name") + 1]
    lifetime = float(args[args.index("--lifetime") + 1]) if "--lifetime" in args else 300.0
    specs = [args[i + 1] for i, a in enumerate(args) if a == "--listen"]
    for proto, sock, family in map(open_listener, specs):
        worker = serve_tcp if proto == "tcp" else serve_udp
        threading.Thread(target=worker, args=(name, sock, family), daemon=True).start()
    print("READY", flush=True)
    # Exit with the test runner (stdin closes) or after the lifetime, whichever comes first.
    watchdog = threading.Thread(target=lambda: sys.stdin.read(), daemon=True)
    watchdog.start()
    watchdog.join(lifetime)
    os._exit(0)


def connect(args):
    proto, host, port = args[0], args[1], int(args[2])
    timeout = float(args[args.index("--timeout") + 1]) if "--timeout" in args else 3.0
    family = family_of(host)
    try:
        if proto == "tcp":
            with socket.create_connection((host, port), timeout=timeout) as sock:
                sock.settimeout(timeout)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        else:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.settimeout(timeout)
                sock.sendto(b"ping\n", (host, port))
                data, _ = sock.recvfrom(4096)
        line = data.decode().strip()
        json.loads(line)
    except (OSError, ValueError) as error:
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
        sys.exit(1)
    print(line, flush=True)


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    {"serve": serve, "connect": connect}[command](rest)
