"""Interoperability check with Eclipse paho-mqtt 2.x (an independent client implementation).

Usage: paho_core.py HOST PORT_A PORT_B [v311|v31|v5]
PORT_A and PORT_B are two different shards' listeners, so every check crosses shards.
Exits 0 and prints "paho: N checks passed" when every check passes; raises otherwise.
"""
import queue
import socket
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HOST, PORT_A, PORT_B = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
VERSION = {"v311": mqtt.MQTTv311, "v31": mqtt.MQTTv31, "v5": mqtt.MQTTv5}[
    sys.argv[4] if len(sys.argv) > 4 else "v311"
]
TIMEOUT = 5.0
checks = 0


def client(cid, port, clean=True, will=None):
    kwargs = {"protocol": VERSION, "client_id": cid}
    if VERSION != mqtt.MQTTv5:
        kwargs["clean_session"] = clean
    c = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
    c.inbox = queue.Queue()
    c.on_message = lambda cl, ud, msg: cl.inbox.put(msg)
    if will:
        c.will_set(*will)
    c.connected = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props=None: cl.connected.put((flags, rc))
    if VERSION == mqtt.MQTTv5:
        from paho.mqtt.properties import Properties
        from paho.mqtt.packettypes import PacketTypes

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0 if clean else 300
        c.connect(HOST, port, keepalive=30, clean_start=clean, properties=props)
    else:
        c.connect(HOST, port, keepalive=30)
    c.loop_start()
    flags, rc = c.connected.get(timeout=TIMEOUT)
    assert not rc.is_failure, f"CONNACK refused: {rc}"
    return c, flags


def subscribe(c, topic, qos):
    done = queue.Queue()
    c.on_subscribe = lambda cl, ud, mid, rcs, props=None: done.put(rcs)
    c.subscribe(topic, qos)
    rcs = done.get(timeout=TIMEOUT)
    assert not rcs[0].is_failure, f"SUBACK refused {rcs}"
    return rcs


def expect(c, topic, payload, qos=None, retain=None):
    msg = c.inbox.get(timeout=TIMEOUT)
    assert msg.topic == topic, (msg.topic, topic)
    assert msg.payload == payload, (msg.payload, payload)
    if qos is not None:
        assert msg.qos == qos, (msg.qos, qos)
    if retain is not None:
        assert msg.retain == retain, (msg.retain, retain)
    return msg


def check(name):
    global checks
    checks += 1
    print(f"ok {checks} {name}", flush=True)


def stop(*cs):
    for c in cs:
        c.disconnect()
        c.loop_stop()


# QoS 0/1/2 end to end, publisher and subscriber on different shards, downgrade to granted QoS.
sub, _ = client("paho-sub", PORT_A)
pub, _ = client("paho-pub", PORT_B)
subscribe(sub, "paho/qos/#", 2)
for qos in (0, 1, 2):
    info = pub.publish(f"paho/qos/{qos}", f"m{qos}".encode(), qos=qos)
    info.wait_for_publish(TIMEOUT)
    expect(sub, f"paho/qos/{qos}", f"m{qos}".encode(), qos=qos, retain=False)
check("qos 0/1/2 across shards")

low, _ = client("paho-low", PORT_A)
subscribe(low, "paho/low", 0)
pub.publish("paho/low", b"x", qos=2).wait_for_publish(TIMEOUT)
expect(low, "paho/low", b"x", qos=0)
check("downgrade to subscription qos")

# Retained: delivered on subscribe with the retain flag, cleared by an empty payload.
pub.publish("paho/ret/a", b"kept", qos=1, retain=True).wait_for_publish(TIMEOUT)
pub.publish("paho/ret/b", b"soon-gone", qos=1, retain=True).wait_for_publish(TIMEOUT)
pub.publish("paho/ret/b", b"", qos=1, retain=True).wait_for_publish(TIMEOUT)
time.sleep(0.2)
late, _ = client("paho-late", PORT_A)
subscribe(late, "paho/ret/+", 1)
expect(late, "paho/ret/a", b"kept", retain=True)
try:
    extra = late.inbox.get(timeout=0.5)
    raise AssertionError(f"cleared retained message delivered: {extra.topic}")
except queue.Empty:
    pass
check("retained set, delivered with flag, cleared")

# Will: published when the connection drops without DISCONNECT.
watch, _ = client("paho-watch", PORT_B)
subscribe(watch, "paho/will", 1)
dying, _ = client("paho-dying", PORT_A, will=("paho/will", b"dead", 1, False))
dying.loop_stop()
dying.socket().shutdown(socket.SHUT_RDWR)
expect(watch, "paho/will", b"dead")
check("will on abnormal disconnect")

# Persistent session: subscription and QoS 1 messages kept while offline.
dev, _ = client("paho-dev", PORT_A, clean=False)
subscribe(dev, "paho/cmd", 1)
stop(dev)
time.sleep(0.2)
pub.publish("paho/cmd", b"while-away", qos=1).wait_for_publish(TIMEOUT)
dev, flags = client("paho-dev", PORT_B, clean=False)
# MQTT 3.1 has no Session Present flag; the queued message proves the session was kept.
if VERSION != mqtt.MQTTv31:
    assert flags.session_present, "session present expected"
expect(dev, "paho/cmd", b"while-away", qos=1)
check("persistent session across shards")

# Takeover: a second connection with the same client id closes the first.
first, _ = client("paho-same", PORT_A)
gone = queue.Queue()
first.on_disconnect = lambda cl, ud, flags, rc, props=None: gone.put(rc)
second, _ = client("paho-same", PORT_B)
gone.get(timeout=TIMEOUT)
check("takeover closes the old connection")

stop(sub, pub, low, late, watch, dev, second)
print(f"paho: {checks} checks passed")
