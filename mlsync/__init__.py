"""mlsync: declarative, resumable sync of geospatial ML datasets to local disk."""

__version__ = "0.1.0"
