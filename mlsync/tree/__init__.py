"""The output tree: the protocol and its records in :mod:`mlsync.tree.base`, the local
implementation in :mod:`mlsync.tree.local`."""
