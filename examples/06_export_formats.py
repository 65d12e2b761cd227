"""Exports: one checkpoint, loaded by transformers, llama.cpp and onnxruntime, each held to our logits.

    python examples/06_export_formats.py                        # trains a tiny Llama briefly (1-3 minutes)
    python examples/06_export_formats.py --model names@production --out exports/

`microgpt.export.export_checkpoint` (the library under `microgpt export` and the trainer's export
jobs) writes each format and runs it in its own runtime on parity rows: the report says how far
that runtime's logits are from the float model's. The loaders below are the runtimes' own:
nothing of microgpt is needed to use an export, and `import_hf` brings a transformers directory
back as a microgpt checkpoint.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from microgpt.export import export_checkpoint
from microgpt.export.gguf import open_in_llama_cpp
from microgpt.export.hf_import import import_hf
from microgpt.model_source import checkpoint_path
from microgpt.settings import get_settings
from microgpt.train.loop import train

EXPORTS = [("hf", None), ("gguf", "f32"), ("gguf", "q8_0"), ("gguf", "q4_0"), ("onnx", None)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a checkpoint or registry ref (default: train a tiny Llama)")
    parser.add_argument("--out", type=Path, help="folder for the exports (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="microgpt-example-") as tmp:
        src = checkpoint_path(args.model) if args.model else quick_model(Path(tmp) / "run")
        run(src, args.out or Path(tmp) / "exports")


def quick_model(out: Path) -> Path:
    """llama-tiny's shape (RoPE, RMSNorm, SwiGLU, GQA) at toy size, a char vocabulary, 300 steps."""
    result = train(
        "llama-tiny",
        out_dir=out,
        cache_dir=get_settings().cache,
        data="shakespeare",
        model_overrides={"n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 64, "block_size": 64},
        train_overrides={"max_steps": 300, "batch_size": 16, "lr": 3e-3, "warmup_steps": 20,
                         "eval_interval": 300, "tokenizer": "char"},
    )  # fmt: skip
    return result.checkpoint


def run(src: Path, out: Path) -> None:
    done = {}
    for fmt, quant in EXPORTS:
        name = fmt + (f"-{quant}" if quant else "")
        done[name] = export_checkpoint(src, out / name, fmt, quant=quant)
        report = done[name].parity
        print(f"{name:>9}: {report.summary() if report else 'runtime not installed: not measured'}")
        for note in done[name].notes:
            print(f"           {note}")

    prompt = "ROMEO:"
    # transformers loads the hf export on its own: AutoModelForCausalLM and AutoTokenizer.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir = str(done["hf"].path)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    ids = tokenizer(prompt, return_tensors="pt")
    text = tokenizer.decode(
        model.generate(**ids, max_new_tokens=40, do_sample=False)[0], skip_special_tokens=True
    )
    print(f"transformers greedy: {text!r}")

    # llama.cpp loads the GGUF file with its own tokenizer (from the file's metadata); its `Llama`
    # with the AMX weight buffers off, which crash llama.cpp on such CPUs (see open_in_llama_cpp).
    llm = open_in_llama_cpp(done["gguf-q8_0"].path, n_ctx=64, verbose=False)
    completion = llm.create_completion(prompt, max_tokens=40, temperature=0.0, stream=False)
    assert isinstance(completion, dict)  # stream=False: one response, not an iterator
    print(f"llama.cpp q8_0 greedy: {prompt + completion['choices'][0]['text']!r}")
    llm.close()

    # And back: the transformers directory as a microgpt checkpoint (push, serve or finetune it).
    back = import_hf(done["hf"].path, out / "imported")
    print(f"imported the hf export back as {back}")


if __name__ == "__main__":
    main()
