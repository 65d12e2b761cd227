"""Data: from a source to token shards to training batches. One concept per module:

    sources    where text comes from (files, directories, globs, JSONL, lists), read as a stream
    builtin    named data sets (names, names-32k, shakespeare, pystdlib, chat) and the verified download cache
    conversations  OpenAI `messages` JSONL: checked, rendered with the chat template (with the replies marked)
    tasks      the built-in conversation tasks: seeded generators, train/validation/test splits, scorers
    prepare    a source tokenized once into shards + manifest, reused until its inputs change
    manifest   what a prepared directory holds; the tokenizer and vocabulary checks
    shards     the shard files: written with bounded memory, read lazily with numpy.memmap
    batches    (x, y) batches as a pure function of (seed, step, rank)
    cli        `microgpt data prepare|ls|chat`

    microgpt data prepare shakespeare
    python -m microgpt.bench.prepare      # throughput and peak memory on a 1 GiB corpus

Importing this package imports nothing else; `batches` is the only module that needs torch.
"""
