"""Model formats: detection from bytes, loading, saving (atomic, self-contained) and lineage."""
