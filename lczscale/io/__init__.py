"""The one chunk I/O layer: stores, embedding and label sources, and the output cube."""
