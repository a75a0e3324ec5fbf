"""The reference client's ``radiant_mlhub.session`` names, for code ported to mlsync.

``get_session()`` returns a :class:`Session`, a ``requests.Session`` for the MLHub API (built
in :mod:`mlsync.hub.http`, where all of mlsync's HTTP lives): ``session.get("datasets")``,
``Session(api_key=...)``, ``Session.from_env()``, ``Session.from_config(profile)`` and
``session.paginate(url)`` work as they did.
"""

from mlsync.client import get_session
from mlsync.hub.config import ANONYMOUS_PROFILE
from mlsync.hub.http import Session

__all__ = ["ANONYMOUS_PROFILE", "Session", "get_session"]
