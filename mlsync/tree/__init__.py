"""The output tree (see :mod:`mlsync.tree.base`): the protocol and its local implementation."""

from mlsync.tree.base import ABSENT, ABSENT_NO_PART, FileFacts, PartWriter, ProbeResult, Tree

__all__ = ["ABSENT", "ABSENT_NO_PART", "FileFacts", "PartWriter", "ProbeResult", "Tree"]
