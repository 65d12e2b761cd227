"""A scalar-autograd GPT in pure Python: the ground truth for `microgpt.model.GPT`.

In the spirit of Karpathy's microgpt.py, every number is a `Value` that remembers its
children and its local derivative with respect to each of them. `backward()` applies
the chain rule in reverse topological order. The file uses only the standard library
(no torch, no numpy, nothing from microgpt), so you can read it in one sitting and check
it by hand.

Design choices:
- The math, parameter names and shapes are those of `microgpt.model.GPT`
  (`wte.weight`, `blocks.0.attn.qkv.weight` with rows [q; k; v], ...). `state_dict()`
  and `load_state_dict()` move weights between the two as nested lists, and
  tests/test_reference_parity.py checks that losses, gradients, Adam steps and
  KV-cache decoding agree to 1e-9 in float64. A field the reference cannot express
  (rope, biases, qk-norm, SwiGLU, dropout) raises ValueError naming that field.
- Tokens go through one at a time with a key/value cache, as in microgpt.py. Training
  and decoding share that code path, and causality holds by construction.
- A matrix-vector product makes one graph node per output (`Value.dot`), not a chain
  of scalar adds. The derivatives are the same and it runs a few times faster.

Run microgpt.py's recipe (1 layer, 16 dims, 4 heads, Adam, one document per step):

    python -m microgpt.reference --data names.txt --steps 1000 --samples 20
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


class Value:
    """A scalar, its gradient, and how it was made: children and d(self)/d(child)."""

    __slots__ = ("data", "grad", "_children", "_local_grads")

    def __init__(self, data: float, children: tuple = (), local_grads: tuple = ()) -> None:
        self.data = float(data)
        self.grad = 0.0
        self._children = children
        self._local_grads = local_grads

    def __add__(self, other: Value | float) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data + other.data, (self, other), (1.0, 1.0))

    def __mul__(self, other: Value | float) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data * other.data, (self, other), (other.data, self.data))

    def __pow__(self, k: float) -> Value:  # constant exponents only
        return Value(self.data**k, (self,), (k * self.data ** (k - 1),))

    __radd__ = __add__
    __rmul__ = __mul__

    def __neg__(self) -> Value:
        return self * -1.0

    def __sub__(self, other: Value | float) -> Value:
        return self + (-other)

    def __rsub__(self, other: float) -> Value:
        return other + (-self)

    def __truediv__(self, other: Value | float) -> Value:
        return self * other**-1

    def __rtruediv__(self, other: float) -> Value:
        return other * self**-1

    def exp(self) -> Value:
        e = math.exp(self.data)
        return Value(e, (self,), (e,))

    def log(self) -> Value:
        return Value(math.log(self.data), (self,), (1.0 / self.data,))

    def relu(self) -> Value:
        return Value(max(self.data, 0.0), (self,), (float(self.data > 0),))

    def gelu(self) -> Value:
        """Exact GELU x * Phi(x), whose derivative is Phi(x) + x * phi(x)."""
        x = self.data
        cdf = 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))
        pdf = math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return Value(x * cdf, (self,), (cdf + x * pdf,))

    @staticmethod
    def sum(xs: Iterable[Value]) -> Value:
        xs = tuple(xs)
        return Value(sum(x.data for x in xs), xs, (1.0,) * len(xs))

    @staticmethod
    def dot(a: Sequence[Value], b: Sequence[Value]) -> Value:
        """sum(a[i] * b[i]) as one node: d/da[i] = b[i] and d/db[i] = a[i]."""
        data = sum(x.data * y.data for x, y in zip(a, b, strict=True))
        return Value(data, (*a, *b), (*(y.data for y in b), *(x.data for x in a)))

    def backward(self) -> None:
        """Accumulate d(self)/d(node) into every node's .grad (parameters keep summing)."""
        order, seen, stack = [], set(), [(self, False)]
        while stack:  # iterative post-order DFS: children land in `order` before parents
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
            elif node not in seen:
                seen.add(node)
                stack.append((node, True))
                stack.extend((child, False) for child in node._children)
        self.grad = 1.0
        for node in reversed(order):
            for child, local in zip(node._children, node._local_grads, strict=True):
                child.grad += local * node.grad


def linear(w: list[list[Value]], x: list[Value]) -> list[Value]:
    """y = W x, with the rows of W as outputs (torch's nn.Linear layout)."""
    return [Value.dot(row, x) for row in w]


def softmax(xs: list[Value]) -> list[Value]:
    top = max(x.data for x in xs)  # a constant shift: no gradient, no overflow
    exps = [(x - top).exp() for x in xs]
    inv_total = Value.sum(exps) ** -1
    return [e * inv_total for e in exps]


def cross_entropy(logits: list[Value], target: int) -> Value:
    """-log softmax(logits)[target], as logsumexp(logits) - logits[target]."""
    top = max(x.data for x in logits)
    return Value.sum((x - top).exp() for x in logits).log() + top - logits[target]


# GPTConfig's defaults, so a `GPTConfig.model_dump()` can be passed through unchanged.
_DEFAULTS = dict(
    n_kv_head=None,
    mlp_hidden=None,
    position="learned",
    rope_base=10000.0,
    norm="layernorm",
    norm_gain=True,
    norm_eps=1e-5,
    embed_norm=False,
    final_norm=True,
    mlp="gelu",
    qk_norm=False,
    tie_embeddings=True,
    bias=False,
    dropout=0.0,
    init_std=0.02,
    scale_residual_init=True,
)
_SIZES = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
_SUPPORTED = dict(
    position=("learned",),
    norm=("rmsnorm", "layernorm"),
    mlp=("relu", "relu2", "gelu"),
    qk_norm=(False,),
    bias=(False,),
    dropout=(0.0,),
)
# microgpt.py's exact shape; `train` fills in vocab_size from the data.
MICROGPT_CONFIG = dict(
    vocab_size=27,
    block_size=16,
    n_layer=1,
    n_head=4,
    n_embd=16,
    norm="rmsnorm",
    norm_gain=False,
    embed_norm=True,
    final_norm=False,
    mlp="relu",
    tie_embeddings=False,
    init_std=0.08,
    scale_residual_init=False,
)


def check_config(config: dict) -> dict:
    """The config with defaults filled in; anything the reference cannot express raises."""
    for name in config:
        if name not in _DEFAULTS and name not in _SIZES:
            raise ValueError(f"unknown config field {name!r}")
    cfg = {**_DEFAULTS, **config}
    for name in _SIZES:
        if name not in cfg or cfg[name] < 1:
            raise ValueError(f"{name} must be given and >= 1, got {cfg.get(name)}")
    for name, allowed in _SUPPORTED.items():
        if cfg[name] not in allowed:
            raise ValueError(f"{name}={cfg[name]!r} is not supported by the reference: {allowed}")
    kv_heads = cfg["n_kv_head"] or cfg["n_head"]
    if cfg["n_embd"] % cfg["n_head"] or cfg["n_head"] % kv_heads:
        raise ValueError("n_head must divide n_embd and n_kv_head must divide n_head")
    return cfg


class KVCache:
    """Keys and values of the tokens seen so far: keys[layer][position] is one vector."""

    def __init__(self, n_layer: int) -> None:
        self.keys: list[list[list[Value]]] = [[] for _ in range(n_layer)]
        self.values: list[list[list[Value]]] = [[] for _ in range(n_layer)]

    def __len__(self) -> int:
        return len(self.keys[0])


class ReferenceGPT:
    """microgpt.model.GPT in scalars; `params` maps torch's parameter names to Values."""

    def __init__(self, config: dict, seed: int | random.Random = 0) -> None:
        self.config = cfg = check_config(config)
        rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        C, L = cfg["n_embd"], cfg["n_layer"]
        self.head_size, self.kv_heads = C // cfg["n_head"], cfg["n_kv_head"] or cfg["n_head"]
        hidden = cfg["mlp_hidden"] or 4 * C
        std = cfg["init_std"]
        residual_std = std / math.sqrt(2 * L) if cfg["scale_residual_init"] else std

        def matrix(rows: int, cols: int, std: float = std) -> list[list[Value]]:
            return [[Value(rng.gauss(0.0, std)) for _ in range(cols)] for _ in range(rows)]

        # Drawn in microgpt.py's order: wte, wpe, lm_head, then each layer's q, k, v, o, fc, proj.
        p: dict[str, list] = {  # matrices (list of rows) and, for norm gains, vectors
            "wte.weight": matrix(cfg["vocab_size"], C),
            "wpe.weight": matrix(cfg["block_size"], C),
        }
        if not cfg["tie_embeddings"]:
            p["lm_head.weight"] = matrix(cfg["vocab_size"], C)
        for i in range(L):
            p[f"blocks.{i}.attn.qkv.weight"] = matrix(C + 2 * self.kv_heads * self.head_size, C)
            p[f"blocks.{i}.attn.proj.weight"] = matrix(C, C, residual_std)
            p[f"blocks.{i}.mlp.fc.weight"] = matrix(hidden, C)
            p[f"blocks.{i}.mlp.proj.weight"] = matrix(C, hidden, residual_std)
        if cfg["norm_gain"]:
            norms = ["embed_norm"] if cfg["embed_norm"] else []
            norms += [f"blocks.{i}.{n}" for i in range(L) for n in ("attn_norm", "mlp_norm")]
            norms += ["norm_f"] if cfg["final_norm"] else []
            p.update({f"{n}.weight": [Value(1.0) for _ in range(C)] for n in norms})
        self.params = p
        self.lm_head = p["wte.weight"] if cfg["tie_embeddings"] else p["lm_head.weight"]

    def parameters(self) -> list[Value]:
        """Every parameter scalar once (a tied head is the embedding), in `params` order."""
        return [v for param in self.params.values() for row in _rows(param) for v in row]

    def state_dict(self) -> dict[str, list]:
        return {name: _tree(param, "data") for name, param in self.params.items()}

    def grads(self) -> dict[str, list]:
        return {name: _tree(param, "grad") for name, param in self.params.items()}

    def load_state_dict(self, state: dict[str, Sequence]) -> None:
        """Copy weights in; torch's state_dict (nested lists) also lists a tied head, ignored."""
        known = set(self.params) | ({"lm_head.weight"} if self.config["tie_embeddings"] else set())
        missing, extra = set(self.params) - set(state), set(state) - known
        if missing or extra:
            raise ValueError(f"state_dict: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, param in self.params.items():
            rows, new = _rows(param), state[name] if isinstance(param[0], list) else [state[name]]
            if [len(row) for row in new] != [len(row) for row in rows]:
                raise ValueError(f"{name}: expected {len(rows)} rows of {len(rows[0])} values")
            for row, new_row in zip(rows, new, strict=True):
                for v, x in zip(row, new_row, strict=True):
                    v.data = float(x)

    def zero_grad(self) -> None:
        for v in self.parameters():
            v.grad = 0.0

    def new_cache(self) -> KVCache:
        return KVCache(self.config["n_layer"])

    def forward(self, token: int, cache: KVCache) -> list[Value]:
        """Next-token logits for `token` at position len(cache); appends its keys and values."""
        cfg, p, pos = self.config, self.params, len(cache)
        if pos >= cfg["block_size"]:
            raise ValueError(f"position {pos} is past the context of {cfg['block_size']}")
        if not 0 <= token < cfg["vocab_size"]:
            raise ValueError(f"token {token} is outside the vocabulary of {cfg['vocab_size']}")
        x = [t + q for t, q in zip(p["wte.weight"][token], p["wpe.weight"][pos], strict=True)]
        if cfg["embed_norm"]:
            x = self._norm(x, "embed_norm")
        for i in range(cfg["n_layer"]):
            a = self._attention(self._norm(x, f"blocks.{i}.attn_norm"), i, cache)
            x = [xi + ai for xi, ai in zip(x, a, strict=True)]
            h = linear(p[f"blocks.{i}.mlp.fc.weight"], self._norm(x, f"blocks.{i}.mlp_norm"))
            m = linear(p[f"blocks.{i}.mlp.proj.weight"], self._activation(h))
            x = [xi + mi for xi, mi in zip(x, m, strict=True)]
        if cfg["final_norm"]:
            x = self._norm(x, "norm_f")
        return linear(self.lm_head, x)

    def _norm(self, x: list[Value], name: str) -> list[Value]:
        """RMSNorm; LayerNorm is RMSNorm of the centred vector (biased variance, as torch)."""
        if self.config["norm"] == "layernorm":
            mean = Value.sum(x) * (1.0 / len(x))
            x = [xi - mean for xi in x]
        scale = (Value.dot(x, x) * (1.0 / len(x)) + self.config["norm_eps"]) ** -0.5
        y = [xi * scale for xi in x]
        if self.config["norm_gain"]:
            y = [yi * g for yi, g in zip(y, self.params[f"{name}.weight"], strict=True)]
        return y

    def _attention(self, x: list[Value], layer: int, cache: KVCache) -> list[Value]:
        hs, n_head, kv_heads = self.head_size, self.config["n_head"], self.kv_heads
        qkv = linear(self.params[f"blocks.{layer}.attn.qkv.weight"], x)  # rows [q; k; v]
        q, k, v = qkv[: n_head * hs], qkv[n_head * hs : -kv_heads * hs], qkv[-kv_heads * hs :]
        keys, values = cache.keys[layer], cache.values[layer]
        keys.append(k)
        values.append(v)
        out = []
        for h in range(n_head):
            g = h // (n_head // kv_heads)  # the key/value head this query head reads (GQA)
            q_h, kv = q[h * hs : (h + 1) * hs], slice(g * hs, (g + 1) * hs)
            weights = softmax([Value.dot(q_h, key[kv]) * (1.0 / math.sqrt(hs)) for key in keys])
            out += [Value.dot(weights, [val[g * hs + j] for val in values]) for j in range(hs)]
        return linear(self.params[f"blocks.{layer}.attn.proj.weight"], out)

    def _activation(self, h: list[Value]) -> list[Value]:
        kind = self.config["mlp"]
        if kind == "gelu":
            return [x.gelu() for x in h]
        return [x.relu() ** 2 for x in h] if kind == "relu2" else [x.relu() for x in h]

    def loss(self, tokens: Sequence[int]) -> Value:
        """Mean next-token cross-entropy over the first min(block_size, len - 1) positions."""
        n = min(self.config["block_size"], len(tokens) - 1)
        if n < 1:
            raise ValueError("a document needs at least two tokens")
        cache = self.new_cache()
        losses = [cross_entropy(self.forward(tokens[t], cache), tokens[t + 1]) for t in range(n)]
        return Value.sum(losses) * (1.0 / n)

    def logits(self, tokens: Sequence[int]) -> list[list[float]]:
        """Logits at every position, decoded through the KV cache."""
        cache = self.new_cache()
        return [[v.data for v in self.forward(t, cache)] for t in tokens]

    def sample(
        self,
        bos: int,
        *,
        rng: random.Random,
        temperature: float = 1.0,
        max_tokens: int | None = None,
    ) -> list[int]:
        """Token ids drawn after `bos` until `bos` comes again or the context is full."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        cache, token, out = self.new_cache(), bos, []
        for _ in range(min(self.config["block_size"], max_tokens or self.config["block_size"])):
            logits = [v.data / temperature for v in self.forward(token, cache)]
            top = max(logits)
            token = rng.choices(range(len(logits)), weights=[math.exp(x - top) for x in logits])[0]
            if token == bos:
                break
            out.append(token)
        return out


def _rows(param: list) -> list[list[Value]]:
    return param if isinstance(param[0], list) else [param]


def _tree(param: list, attr: str) -> list:
    if isinstance(param[0], list):
        return [[getattr(v, attr) for v in row] for row in param]
    return [getattr(v, attr) for v in param]


class Adam:
    """torch.optim.Adam without weight decay; `num_steps` adds microgpt's linear decay to 0."""

    def __init__(
        self,
        params: list[Value],
        lr: float = 0.01,
        betas: tuple[float, float] = (0.85, 0.99),
        eps: float = 1e-8,
        num_steps: int | None = None,
    ) -> None:
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.num_steps = num_steps
        self.m, self.v, self.t = [0.0] * len(params), [0.0] * len(params), 0

    def step(self) -> None:
        """One update from the gradients in .grad, which are then zeroed."""
        (b1, b2), lr = self.betas, self.lr
        if self.num_steps:
            lr *= 1 - self.t / self.num_steps
        self.t += 1
        correction1, correction2 = 1 - b1**self.t, 1 - b2**self.t
        for i, p in enumerate(self.params):
            self.m[i] = b1 * self.m[i] + (1 - b1) * p.grad
            self.v[i] = b2 * self.v[i] + (1 - b2) * p.grad**2
            m_hat, v_hat = self.m[i] / correction1, self.v[i] / correction2
            p.data -= lr * m_hat / (math.sqrt(v_hat) + self.eps)
            p.grad = 0.0


@dataclass
class TrainResult:
    model: ReferenceGPT
    chars: list[str]  # token i is chars[i]; token len(chars) is BOS, at both ends of a document
    losses: list[float]  # one per step

    def samples(self, n: int, *, temperature: float = 0.5, seed: int = 42) -> list[str]:
        rng, bos = random.Random(seed), len(self.chars)
        draws = (self.model.sample(bos, rng=rng, temperature=temperature) for _ in range(n))
        return ["".join(self.chars[t] for t in ids) for ids in draws]


def train(
    docs: Sequence[str],
    steps: int = 1000,
    seed: int = 42,
    *,
    config: dict | None = None,
    lr: float = 0.01,
    betas: tuple[float, float] = (0.85, 0.99),
    eps: float = 1e-8,
    log: Callable[[str], object] | None = print,
    log_every: int = 50,
) -> TrainResult:
    """microgpt.py's loop: shuffled documents, one per step, Adam with linear decay to 0."""
    docs = [d.strip() for d in docs if d.strip()]
    if not docs:
        raise ValueError("no documents to train on (every line is empty)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rng = random.Random(seed)
    rng.shuffle(docs)
    chars = sorted(set("".join(docs)))
    stoi, bos = {c: i for i, c in enumerate(chars)}, len(chars)
    model = ReferenceGPT({**MICROGPT_CONFIG, **(config or {}), "vocab_size": bos + 1}, rng)
    optimizer = Adam(model.parameters(), lr, betas, eps, num_steps=steps)
    losses = []
    for step in range(steps):
        loss = model.loss([bos, *(stoi[c] for c in docs[step % len(docs)]), bos])
        loss.backward()
        optimizer.step()
        losses.append(loss.data)
        if log and (step == 0 or (step + 1) % log_every == 0 or step + 1 == steps):
            log(f"step {step + 1:4d} / {steps:4d} | loss {loss.data:.4f}")
    return TrainResult(model, chars, losses)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m microgpt.reference",
        description="Train microgpt.py's GPT in pure Python on a file of documents, then sample.",
    )
    parser.add_argument("--data", type=Path, required=True, help="text file, one document a line")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.5)
    args = parser.parse_args(argv)
    try:
        if not args.data.is_file():
            raise ValueError(f"no such file: {args.data}")
        if args.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {args.temperature}")
        docs = args.data.read_text(encoding="utf-8").splitlines()
        result = train(docs, args.steps, args.seed)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    texts = result.samples(args.samples, temperature=args.temperature, seed=args.seed)
    for i, text in enumerate(texts):
        print(f"sample {i + 1:2d}: {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
