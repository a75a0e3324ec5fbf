"""The tree of one dataset: local at its directory, or in the object store its target names."""

from __future__ import annotations

from pathlib import Path

from mlsync.objectstore import ObjectStore, ObjectStoreTarget
from mlsync.tree.base import Tree
from mlsync.tree.local import LocalTree
from mlsync.tree.s3 import S3Tree


def tree_for(object_store: ObjectStoreTarget | None, dataset_dir: Path) -> Tree:
    """``dataset_dir`` is the dataset's local directory: its tree, or for an ``s3://`` output
    the local state directory of the tree at ``{location}/{dataset id}`` (its name). The
    store is checked first: an unusable endpoint, credentials or bucket is one line here."""
    if object_store is None:
        return LocalTree(dataset_dir)
    store = ObjectStore(object_store.location.child(dataset_dir.name), object_store.credentials())
    store.check()
    return S3Tree(store, dataset_dir, part_size=object_store.part_size)


__all__ = ["tree_for"]
