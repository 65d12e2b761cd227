"""Data: where documents come from (`sources`), and later how they become token shards."""
