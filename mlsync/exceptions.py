"""The reference client's ``radiant_mlhub.exceptions`` names, for code ported to mlsync.

The classes are mlsync's own (drawn in :mod:`mlsync.errors`); this module only gathers the
four names radiant-mlhub 0.5.5 defined, so ``from mlsync.exceptions import ...`` works where
``from radiant_mlhub.exceptions import ...`` did. All four are caught by
``except MLHubException``, as they were.
"""

from mlsync.errors import APIKeyNotFound, AuthenticationError, EntityDoesNotExist, MLHubException

__all__ = ["APIKeyNotFound", "AuthenticationError", "EntityDoesNotExist", "MLHubException"]
