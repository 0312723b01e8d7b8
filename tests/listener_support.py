"""
What the tests of the event listener without a broker share: the
configuration its handler decodes events with, an event's body, and the
listener's Kafka settings toward an address where nothing listens.  The
fakes they drive it with (consumer, messages, clock, invalidator) are in
L{apicache.testing}.

Not a test module: test modules import from here, never from each other.
"""

from __future__ import annotations

import json

from apicache.config import KafkaConfig, parse_config
from apicache.harness.launchers import free_port

CONFIG = parse_config(
    {
        "server": {"allow_anonymous": True},
        "upstream": {"base_url": "http://127.0.0.1:1/api"},
        "routes": [{"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header"}],
        "events": [{"types": ["object.update"], "route": "object", "id_field": "objectid"}],
    },
    "test.toml",
    {},
)


def event(objectid: str) -> bytes:
    """
    Return the body of an C{object.update} event for C{objectid}.
    """
    return json.dumps({"type": "object.update", "objectid": objectid}).encode()


def kafka_config(mode: str = "broadcast") -> KafkaConfig:
    """
    Return the listener's Kafka settings: topic C{t}, SASL PLAIN as
    C{client-id}, toward a loopback port where nothing listens.
    """
    return KafkaConfig(
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        topics=("t",),
        mode=mode,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="client-id",
    )
