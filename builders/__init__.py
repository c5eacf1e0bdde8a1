"""Builders: sources of captioned images -> ICD shards, split as img2dataset splits reader (sources/),
resizer, writer (shard_builder) and distributor; recipes in ``manifests/``."""
