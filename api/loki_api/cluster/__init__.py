"""Cluster mode (SPEC §11): several `loki serve` nodes sharing one event stream on NATS JetStream.

Events: `bus.py` is the JetStream-backed event bus; `outbox.py` holds what this
node published until it is stored; `wire.py` and `consumer.py` are the event
path past nats-py's per-message work; `replay.py` reads old ranges of the
stream; `positions.py` carries session output positions on the events.
Sessions: `registry.py` (KV buckets), `forward.py` (placement, control and task
routes across nodes). Names and setup: `names.py`, `node.py`, and
`natsserver.py`, a local `nats-server` for tests and demos.
"""
