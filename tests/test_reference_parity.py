"""The pure-Python reference (`microgpt.reference`) and the torch GPT agree.

Both sides run in float64 from the same weights, so they differ only by rounding
order (summation order, SDPA's blocking, Adam's algebra), which is around 1e-15
relative. Losses, gradients, weights after Adam steps and KV-cache logits are checked
to 1e-9 relative. That is far above rounding noise and far below any real mistake in
the math. Entries that are zero in exact arithmetic get an absolute floor of 1e-13.
"""

from __future__ import annotations

import ast
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from microgpt import reference
from microgpt.config import GPTConfig
from microgpt.kv_cache import KVCache
from microgpt.model import GPT
from microgpt.reference import Adam, ReferenceGPT, main, train

RTOL, ATOL = 1e-9, 1e-13  # see the module docstring
LR, BETAS, EPS, STEPS = 0.01, (0.85, 0.99), 1e-8, 6

# microgpt.py's shape, shrunk: 7 tokens with BOS = 6, an 8-token context.
MICRO = dict(
    vocab_size=7,
    block_size=8,
    n_layer=1,
    n_head=2,
    n_embd=8,
    norm="rmsnorm",
    norm_gain=False,
    embed_norm=True,
    final_norm=False,
    mlp="relu",
    tie_embeddings=False,
    bias=False,
    init_std=0.08,
    scale_residual_init=False,
)
VARIANTS = {
    "micro": {},
    "relu2": {"mlp": "relu2"},
    "gelu": {"mlp": "gelu", "init_std": 0.5},  # a wide init reaches GELU's curved part
    "tied": {"tie_embeddings": True},
    "two-layers": {"n_layer": 2, "scale_residual_init": True},
    "final-norm-with-gains": {"final_norm": True, "norm_gain": True},
    "nanogpt-layernorm": {
        "norm": "layernorm",
        "norm_gain": True,
        "embed_norm": False,
        "final_norm": True,
        "mlp": "gelu",
        "tie_embeddings": True,
    },
    "gqa": {"n_head": 4, "n_kv_head": 2, "mlp_hidden": 12},
}
BOS = 6
DOCS = [
    [BOS, 0, 1, 2, BOS],
    [BOS, 3, 4, BOS],
    [BOS, 5, 0, 3, 1, 1, BOS],
    [BOS, 1, 2, 3, 4, 5, 0, 1, 2, 3, BOS],  # longer than the context: 8 positions are scored
]


def config(name: str) -> dict:
    return {**MICRO, **VARIANTS[name]}


def torch_twin(ref: ReferenceGPT) -> GPT:
    """The torch model in float64 with the reference's weights."""
    model = GPT(GPTConfig(**ref.config)).double()
    state = {k: torch.tensor(v, dtype=torch.float64) for k, v in ref.state_dict().items()}
    if ref.config["tie_embeddings"]:  # torch lists the tied head under both names
        state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state, strict=True)
    return model


def torch_loss(model: GPT, tokens: list[int]) -> torch.Tensor:
    """`model(idx, targets).loss` over the positions the reference scores (microgpt's window)."""
    n = min(model.config.block_size, len(tokens) - 1)
    idx, targets = torch.tensor(tokens[:n])[None], torch.tensor(tokens[1 : n + 1])[None]
    return model(idx, targets).loss


def assert_matches(reference_values: list | float, actual: torch.Tensor, what: str) -> None:
    expected = torch.tensor(reference_values, dtype=torch.float64)
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("name", VARIANTS)
def test_losses_gradients_and_adam_steps_match_torch(name: str) -> None:
    ref = ReferenceGPT(config(name), seed=0)
    model = torch_twin(ref)
    assert set(ref.grads()) == {n for n, _ in model.named_parameters()}  # tied head: once
    ref_opt = Adam(ref.parameters(), LR, BETAS, EPS, num_steps=STEPS)
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS)
    for step in range(STEPS):
        tokens = DOCS[step % len(DOCS)]
        loss = ref.loss(tokens)
        loss.backward()
        opt.zero_grad()
        expected = torch_loss(model, tokens)
        expected.backward()
        assert_matches(loss.data, expected.detach(), f"step {step} loss")
        grads = ref.grads()
        for pname, p in model.named_parameters():
            assert_matches(grads[pname], p.grad, f"step {step} grad of {pname}")
        for group in opt.param_groups:  # microgpt's linear decay, as the reference's num_steps
            group["lr"] = LR * (1 - step / STEPS)
        opt.step()
        ref_opt.step()
    weights = ref.state_dict()
    for pname, p in model.named_parameters():
        assert_matches(weights[pname], p.detach(), f"{pname} after {STEPS} Adam steps")


@pytest.mark.parametrize("name", ["micro", "tied", "two-layers", "nanogpt-layernorm", "gqa"])
def test_kv_cache_decoding_matches_torch(name: str) -> None:
    ref = ReferenceGPT(config(name), seed=1)
    model = torch_twin(ref)
    tokens = [BOS, 2, 0, 5, 5, 1, 3, 4]  # fills the whole 8-token context
    cache, ref_cache = KVCache(model.config, 1, dtype=torch.float64), ref.new_cache()
    with torch.no_grad():
        full = model(torch.tensor(tokens)[None]).logits[0]  # (T, V), no cache
        for pos, token in enumerate(tokens):
            step = model(torch.tensor([[token]]), kv_cache=cache).logits[0, -1]
            cache.advance(1)
            ref_logits = [v.data for v in ref.forward(token, ref_cache)]
            assert_matches(ref_logits, step, f"cached logits at position {pos}")
            assert_matches(ref_logits, full[pos], f"full-forward logits at position {pos}")
    assert_matches(ref.logits(tokens), full, "ReferenceGPT.logits")
    with pytest.raises(ValueError, match="context"):
        ref.forward(BOS, ref_cache)


def test_torch_weights_load_into_the_reference() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**config("tied"))).double()
    ref = ReferenceGPT(config("tied"), seed=0)
    ref.load_state_dict({k: v.tolist() for k, v in model.state_dict().items()})
    assert_matches(ref.loss(DOCS[2]).data, torch_loss(model, DOCS[2]).detach(), "loss")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"position": "rope"}, "position"),
        ({"bias": True}, "bias"),
        ({"qk_norm": True}, "qk_norm"),
        ({"mlp": "swiglu"}, "mlp"),
        ({"dropout": 0.1}, "dropout"),
        ({"n_embed": 8}, "n_embed"),
        ({"n_kv_head": 3}, "n_kv_head"),
    ],
)
def test_unsupported_config_names_the_field(override: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ReferenceGPT({**MICRO, **override})


def test_gelu_derivative_is_exact() -> None:
    for x in (-2.5, -0.3, 0.0, 0.7, 3.0):
        v = reference.Value(x)
        v.gelu().backward()
        h = 1e-6
        gelu = lambda t: 0.5 * t * (1 + math.erf(t / math.sqrt(2)))  # noqa: E731
        assert v.grad == pytest.approx((gelu(x + h) - gelu(x - h)) / (2 * h), rel=1e-8, abs=1e-10)


def name_like(n: int, seed: int = 0) -> list[str]:
    """Deterministic consonant-vowel names: a language a tiny model learns in a few steps."""
    rng = random.Random(seed)
    syllable = lambda: rng.choice("bdklmnrst") + rng.choice("aeiou")  # noqa: E731
    return ["".join(syllable() for _ in range(rng.randint(1, 3))) for _ in range(n)]


def test_training_lowers_the_loss() -> None:
    docs = name_like(200)
    result = train(docs, 80, 0, config={"n_embd": 8, "n_head": 2, "block_size": 8}, log=None)
    vocab = len(result.chars) + 1
    assert len(result.losses) == 80
    assert result.losses[0] == pytest.approx(math.log(vocab), abs=0.2)  # near uniform at init
    assert sum(result.losses[-20:]) / 20 < math.log(vocab) - 0.6
    samples = result.samples(5, seed=0)
    assert len(samples) == 5 and all(set(s) <= set(result.chars) for s in samples)


def test_cli_trains_and_samples(tmp_path: Path) -> None:
    data = tmp_path / "names.txt"
    data.write_text("\n".join(name_like(40)) + "\n\n  \n", encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "microgpt.reference", "--data", str(data), "--steps", "30", "--samples", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line for line in lines if line.startswith("step")][-1].startswith("step   30 /   30")
    assert sum(line.startswith("sample") for line in lines) == 3


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path: Path, capsys) -> None:
    assert main(["--data", str(tmp_path / "missing.txt")]) == 2
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    assert main(["--data", str(tmp_path / "empty.txt")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors)


def test_reference_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(reference.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.add(node.module.split(".")[0])
    outside = imported - set(sys.stdlib_module_names)
    assert imported and not outside, f"reference.py imports non-stdlib modules: {outside}"
