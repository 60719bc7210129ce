#!/usr/bin/env python3
"""Memory attacks of issue 9 against a running Tern release build, on 127.0.0.1 only.

Starts the broker given with --broker on a free port with a throw-away tern.toml, runs one
scenario, and prints the broker's RSS before, at its peak and after, plus (for `stall`) the
round trips of an honest probe client meanwhile. Every loop is bounded in count and time.

Scenarios (issue 9, "Done when" and "Memory that the limits do not see"):
  stall         a subscriber that stops reading (keep alive 0) while a publisher offers
                300 000 x 1 KiB at QoS 0; target: <= 4 MiB RSS growth, probe RTT < 10 ms
  will-props    40 v5 CONNECTs whose will carries 180 000 empty user properties, held open
  retain-props  30 v5 retained PUBLISHes with 180 000 empty user properties each
  retain-pin    2 000 retained 1-byte payloads, each sent in one write with 60 KiB of padding
                (so each arrives in its own large read buffer)
  sub-repeat    5 000 retained messages, then one ~240 KB SUBSCRIBE repeating `r/#`; does the
                broker keep answering another client?

`stall --layout same|cross` places the publisher on the stalled subscriber's shard or on another
one (the broker's admin listener is enabled to read `tern_connections_current` per shard, and
the publisher reconnects, at most 20 times, until it lands where asked); `any` (the default)
takes the kernel's SO_REUSEPORT choice, which differs from run to run.

`--check` makes it a regression check: exit status 1 unless the peak growth is at most
`--limit-mib` (default 4, the issue's target) and, for `stall`, the probe's p99 is under 10 ms.

Usage: scripts/memory-attacks.py --broker target/release/tern --scenario stall [--shards 2]
       [--layout same|cross] [--check [--limit-mib 4]] [--set 'limits.memory_budget_bytes=67108864'] ...
"""

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


# --- MQTT encoding (just what the scenarios send) ---------------------------------------------

def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text):
    b = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(b)) + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect(client_id, v5=False, keep_alive=60, will=None, clean=True):
    """will: (topic, payload, properties-bytes) or None."""
    flags = 0x02 if clean else 0
    if will:
        flags |= 0x04
    body = s("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack(">H", keep_alive)
    if v5:
        body += varint(0)
    body += s(client_id)
    if will:
        topic, payload, props = will
        if v5:
            body += varint(len(props)) + props
        body += s(topic) + s(payload)
    return packet(0x10, body)


def subscribe(pid, filters, v5=False, qos=0):
    body = struct.pack(">H", pid)
    if v5:
        body += varint(0)
    for f in filters:
        body += s(f) + bytes([qos])
    return packet(0x82, body)


def publish(topic, payload, v5=False, retain=False, props=b""):
    body = s(topic)
    if v5:
        body += varint(len(props)) + props
    body += payload
    return packet(0x30 | (1 if retain else 0), body)


def empty_user_properties(n):
    return b"\x26\x00\x00\x00\x00" * n


PINGREQ = b"\xc0\x00"


# --- plumbing --------------------------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    """Samples the broker's RSS every 20 ms, keeping the peak."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, False

    def run(self):
        while not self.stop:
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return
            time.sleep(0.02)


def dial(port, timeout=5.0):
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_packet(sock, buf):
    """One packet from sock (buf: bytearray of leftovers); None on EOF/timeout."""
    while True:
        if len(buf) >= 2:
            mult, length, i = 1, 0, 1
            while i < len(buf) and i <= 4:
                b = buf[i]
                length += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    break
            else:
                i = None
            if i is not None and len(buf) >= i + length:
                pkt = bytes(buf[: i + length])
                del buf[: i + length]
                return pkt
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, OSError):
            return None
        if not chunk:
            return None
        buf.extend(chunk)


def mqtt_client(port, cid, v5=False, keep_alive=60, will=None):
    sock = dial(port)
    sock.sendall(connect(cid, v5, keep_alive, will))
    buf = bytearray()
    ack = read_packet(sock, buf)
    return sock, buf, ack


class Probe(threading.Thread):
    """An honest client: publishes to its own topic every 10 ms and times the echo."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.rtts, self.lost, self.stop = port, [], 0, False

    def run(self):
        sock, buf, _ = mqtt_client(self.port, "probe")
        sock.sendall(subscribe(1, ["probe/rtt"]))
        read_packet(sock, buf)  # SUBACK
        sock.settimeout(1.0)
        deadline = time.time() + 120
        while not self.stop and time.time() < deadline:
            t0 = time.perf_counter()
            sock.sendall(publish("probe/rtt", b"x"))
            if read_packet(sock, buf) is None:
                self.lost += 1
            else:
                self.rtts.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.01)
        sock.close()


def shard_connections(admin_port, total, timeout=5.0):
    """Connections per shard from /metrics once they add up to `total` (the gauges are
    reported once a second); None if they do not within `timeout`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=2) as r:
            text = r.read().decode()
        counts = {}
        for line in text.splitlines():
            if line.startswith("tern_connections_current{shard="):
                shard = int(line.split('"')[1])
                counts[shard] = int(float(line.split()[-1]))
        per = [counts[k] for k in sorted(counts)]
        if sum(per) == total:
            return per
        time.sleep(0.1)
    return None


def new_shard(before, after):
    """The shard whose connection count grew by one between two samples."""
    grown = [i for i, (a, b) in enumerate(zip(before, after)) if b == a + 1]
    return grown[0] if len(grown) == 1 else None


def start_broker(binary, shards, settings, admin_port=None):
    port = free_port()
    sections = {"limits": {}}
    if admin_port:
        sections["admin"] = {"bind": f'"127.0.0.1:{admin_port}"'}
    for kv in settings:
        key, value = kv.split("=", 1)
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = value
    text = f'[[listener]]\nbind = "127.0.0.1:{port}"\n'
    for section, values in sections.items():
        text += f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(text)
    cfg.close()
    proc = subprocess.Popen([binary, "--config", cfg.name, "--shards", str(shards)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            dial(port, 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("broker did not start")


# --- scenarios -------------------------------------------------------------------------------

def stall(port, args):
    placed = args.layout != "any"
    if placed:
        base = shard_connections(args.admin_port, 1)  # the probe
    sub = dial(port)
    sub.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sub.sendall(connect("stalled", keep_alive=0))
    sub.sendall(subscribe(1, ["stall/#"]))
    time.sleep(0.2)  # CONNACK and SUBACK arrive; from now on `sub` reads nothing
    if placed:
        with_sub = shard_connections(args.admin_port, 2)
        sub_shard = new_shard(base, with_sub) if base and with_sub else None
        if sub_shard is None:
            sys.exit("layout: cannot tell the subscriber's shard from /metrics")
    for attempt in range(20):
        pub, _, _ = mqtt_client(port, "flooder")
        if not placed:
            break
        with_pub = shard_connections(args.admin_port, 3)
        pub_shard = new_shard(with_sub, with_pub) if with_pub else None
        if pub_shard is not None and (pub_shard == sub_shard) == (args.layout == "same"):
            print(f"layout {args.layout}: subscriber on shard {sub_shard}, publisher on shard "
                  f"{pub_shard} (attempt {attempt + 1})")
            break
        pub.close()
        if shard_connections(args.admin_port, 2) is None:
            sys.exit("layout: the publisher's connection did not end")
    else:
        sys.exit(f"layout {args.layout}: not reached in 20 attempts")
    burst = publish("stall/x", b"\x00" * 1024) * 1000
    count = args.messages
    t0 = time.time()
    # Flow control pauses this publisher while the stalled subscriber is congested, until the
    # slow-consumer policy (default: disconnect after 30 s) lets it go on: wait that out.
    pub.settimeout(60)
    sent = 0
    for _ in range(count // 1000):
        try:
            pub.sendall(burst)
        except (TimeoutError, socket.timeout):
            print(f"publisher: paused by the broker for 60 s after {sent} x 1 KiB")
            break
        sent += 1000
        if time.time() - t0 > 120:
            print("publisher: stopped at 120 s")
            break
    pub.sendall(PINGREQ)
    pub.settimeout(30)
    read_packet(pub, bytearray())  # PINGRESP: the broker has read everything
    print(f"publisher: {count} x 1 KiB QoS 0 offered in {time.time() - t0:.1f} s")
    return [sub, pub]


def will_props(port, args):
    keep = []
    props = empty_user_properties(180_000)
    refused = 0
    for i in range(40):
        sock, _, ack = mqtt_client(port, f"w{i}", v5=True,
                                   will=("will/x", b"gone", props))
        if ack is None or ack[3] != 0:
            refused += 1
        keep.append(sock)
    print(f"will-props: 40 CONNECTs with 180 000 user properties in the will, {refused} refused")
    return keep


def retain_props(port, args):
    sock, buf, _ = mqtt_client(port, "rp", v5=True)
    props = empty_user_properties(180_000)
    for i in range(30):
        try:
            sock.sendall(publish(f"rp/{i}", b"v", v5=True, retain=True, props=props))
        except (BrokenPipeError, ConnectionResetError):
            print(f"retain-props: the broker closed the connection after {i} PUBLISHes")
            return [sock]
    sock.sendall(PINGREQ)
    sock.settimeout(60)
    read_packet(sock, buf)
    print("retain-props: 30 retained PUBLISHes with 180 000 user properties each")
    return [sock]


def retain_pin(port, args):
    sock, buf, _ = mqtt_client(port, "pin")
    padding = publish("nobody/listens", b"\x00" * 60_000)
    for i in range(2000):
        sock.sendall(publish(f"pin/{i}", b"1", retain=True) + padding)
        if i % 50 == 0:  # let each write arrive as its own read
            sock.sendall(PINGREQ)
            sock.settimeout(30)
            read_packet(sock, buf)
    sock.sendall(PINGREQ)
    read_packet(sock, buf)
    print("retain-pin: 2 000 retained 1-byte payloads, each read with 60 KiB of padding")
    return [sock]


def sub_repeat(port, args):
    sock, buf, _ = mqtt_client(port, "filler")
    for i in range(5000):
        sock.sendall(publish(f"r/{i}", b"v" * 16, retain=True))
    sock.sendall(PINGREQ)
    sock.settimeout(30)
    read_packet(sock, buf)
    attacker, abuf, _ = mqtt_client(port, "attacker")
    repeats = 240_000 // 6
    attacker.sendall(subscribe(1, ["r/#"] * repeats))
    print(f"sub-repeat: 5 000 retained, one SUBSCRIBE with {repeats} x 'r/#' sent")
    t0 = time.time()
    answered = None
    while time.time() - t0 < 30:
        try:
            probe, pbuf, ack = mqtt_client(port, "honest")
            probe.settimeout(1)
            probe.sendall(PINGREQ)
            if ack is not None and read_packet(probe, pbuf) is not None:
                answered = time.time() - t0
                probe.close()
                break
            probe.close()
        except OSError:
            pass
    if answered is None:
        print("sub-repeat: another client got no answer within 30 s")
    else:
        print(f"sub-repeat: another client connected and got PINGRESP after {answered:.2f} s")
    attacker.settimeout(5)
    first = read_packet(attacker, abuf)
    if first is not None and first[0] == 0x90:
        i = 1
        while first[i] & 0x80:
            i += 1
        codes = first[i + 3:]
        print(f"sub-repeat: SUBACK with {len(codes)} codes, first {codes[0]:#04x}")
    return [sock, attacker]


SCENARIOS = {
    "stall": stall,
    "will-props": will_props,
    "retain-props": retain_props,
    "retain-pin": retain_pin,
    "sub-repeat": sub_repeat,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--scenario", required=True, choices=SCENARIOS)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--wait", type=float, default=1.0,
                    help="seconds between the attack and the final RSS sample (max 60)")
    ap.add_argument("--set", action="append", default=[], help="section.key=value for tern.toml")
    ap.add_argument("--layout", choices=["any", "same", "cross"], default="any",
                    help="stall: publisher on the subscriber's shard, on another, or either")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 unless peak RSS growth <= --limit-mib (and, for stall, the probe "
                         "p99 < 10 ms): a regression check")
    ap.add_argument("--limit-mib", type=float, default=4.0)
    args = ap.parse_args()
    args.admin_port = free_port() if args.layout != "any" else None
    if args.layout == "cross" and args.shards < 2:
        sys.exit("--layout cross needs --shards 2 or more")
    proc, port = start_broker(args.broker, args.shards, args.set, args.admin_port)
    try:
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        sampler = Sampler(proc.pid)
        sampler.start()
        probe = Probe(port) if args.scenario == "stall" else None
        if probe:
            probe.start()
            time.sleep(0.3)
        keep = SCENARIOS[args.scenario](port, args)
        time.sleep(min(max(args.wait, 0.0), 60.0))
        after = rss_kib(proc.pid)
        sampler.stop = True
        if probe:
            probe.stop = True
            probe.join(5)
        peak = max(sampler.peak, after)
        print(f"RSS KiB: before {before}  peak {peak}  after {after}  "
              f"growth {(after - before) / 1024:.1f} MiB (peak {(peak - before) / 1024:.1f} MiB)")
        if probe and probe.rtts:
            r = sorted(probe.rtts)
            p99 = r[min(len(r) - 1, int(len(r) * 0.99))]
            print(f"probe RTT ms: n={len(r)} p50={statistics.median(r):.2f} p99={p99:.2f} "
                  f"max={r[-1]:.2f} lost={probe.lost}")
        for k in keep:
            k.close()
        alive = proc.poll() is None
        print(f"broker alive at the end: {alive}")
        if args.check:
            failures = []
            if (peak - before) / 1024 > args.limit_mib:
                failures.append(f"peak growth {(peak - before) / 1024:.1f} MiB > {args.limit_mib}")
            if probe and (not probe.rtts or p99 >= 10.0):
                failures.append("probe p99 not under 10 ms")
            if not alive:
                failures.append("broker died")
            if failures:
                print("CHECK FAILED: " + "; ".join(failures))
                sys.exit(1)
            print("check passed")
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
