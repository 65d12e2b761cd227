"""The export formats and GGUF quantizations by name: what the CLI, the trainer's job schema and
the dashboard offer, in one place (imported without torch)."""

FORMATS = ("hf", "gguf", "onnx")
QUANTS = ("f32", "f16", "q8_0", "q4_0")
