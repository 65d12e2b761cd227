"""microgpt: train, version, quantize and serve small GPT language models.

Importing the package does no work (no device probing, no settings, no logging);
entry points do that. The modules are small and each holds one concept:
`config` (typed configs), `model` (the GPT), `kv_cache`, `sampling`, `generate`,
`zoo` (presets), `checkpoint` (safetensors + JSON), `reference` (pure Python).
"""

__version__ = "0.1.0"
