"""Avro schemas (one ``.avsc`` per record type) and their Python models."""
