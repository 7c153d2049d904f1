"""The wire types, re-exported from the SDK's distribution where they are defined.

`loki_client.models` owns every event and API Struct (SPEC §9: the SDK installs
alone and the server depends on it); the server's modules keep importing them
from here.
"""

from loki_client.models import *  # noqa: F403
from loki_client.models import __all__ as __all__
