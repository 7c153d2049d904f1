"""Cluster mode (SPEC §11): several `loki serve` nodes sharing one event stream on NATS JetStream.

`names.py` says what things are called on NATS, `outbox.py` holds what this node
published until JetStream acknowledged it, `bus.py` is the JetStream-backed
event bus, and `natsserver.py` runs a local `nats-server` for tests and demos.
"""
