"""A local Radiant MLHub-compatible hub serving a ROOT folder of STAC datasets.

For tests, benchmarks and demos without the network: ``running_hub`` in tests,
``mlsync hub serve ROOT`` from the command line, ``make_sample`` to create datasets.
"""

from mlsync.localhub.app import create_app
from mlsync.localhub.faults import FaultConfig
from mlsync.localhub.sample import make_sample
from mlsync.localhub.server import running_hub, serve
from mlsync.localhub.store import HubStore

__all__ = ["FaultConfig", "HubStore", "create_app", "make_sample", "running_hub", "serve"]
