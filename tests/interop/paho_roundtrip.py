#!/usr/bin/env python3
"""An independent MQTT client for Tern's transport tests: paho-mqtt 2.x connects (TCP, TLS,
WebSocket or secure WebSocket), subscribes, publishes to its own subscription and waits for the
message. Prints "OK <payload>" and exits 0, or prints the failure and exits 1. Bounded in time.

Usage: paho_roundtrip.py --port N [--transport tcp|websockets] [--path /mqtt]
                         [--cafile ca.pem [--cert c.pem --key k.pem]] [--protocol 4|5]
"""
import argparse
import sys
import threading

import paho.mqtt.client as mqtt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--transport", default="tcp", choices=["tcp", "websockets"])
    ap.add_argument("--path", default="/mqtt")
    ap.add_argument("--cafile")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--protocol", type=int, default=4, choices=[4, 5])
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()

    protocol = mqtt.MQTTv5 if args.protocol == 5 else mqtt.MQTTv311
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"paho-{args.transport}-{args.port}",
        protocol=protocol,
        transport=args.transport,
    )
    if args.transport == "websockets":
        client.ws_set_options(path=args.path)
    if args.cafile:
        client.tls_set(ca_certs=args.cafile, certfile=args.cert, keyfile=args.key)

    topic = f"paho/{args.transport}/roundtrip"
    payload = f"hello over {args.transport}{' tls' if args.cafile else ''}"
    done = threading.Event()
    result = {"error": None, "payload": None}

    def on_connect(c, _userdata, _flags, reason_code, _props):
        if reason_code.is_failure:
            result["error"] = f"CONNACK refused: {reason_code}"
            done.set()
            return
        c.subscribe(topic, qos=1)

    def on_subscribe(c, _userdata, _mid, reason_codes, _props):
        if any(rc.is_failure for rc in reason_codes):
            result["error"] = f"SUBACK refused: {reason_codes}"
            done.set()
            return
        c.publish(topic, payload, qos=1)

    def on_message(_c, _userdata, msg):
        result["payload"] = msg.payload.decode()
        done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(args.host, args.port, keepalive=30)
    except Exception as e:  # noqa: BLE001 - report any connection failure
        print(f"FAIL connect: {e!r}")
        return 1
    client.loop_start()
    finished = done.wait(args.timeout)
    client.disconnect()
    client.loop_stop()
    if not finished:
        print("FAIL timeout waiting for the round trip")
        return 1
    if result["error"]:
        print(f"FAIL {result['error']}")
        return 1
    if result["payload"] != payload:
        print(f"FAIL wrong payload {result['payload']!r}")
        return 1
    print(f"OK {result['payload']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
