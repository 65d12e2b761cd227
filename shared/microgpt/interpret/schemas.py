"""JSON results of `microgpt.interpret`: what the CLI writes, the API returns and the dashboard draws.

Plain pydantic models of lists and numbers (no tensors), indexed the way TransformerLens
prints them: [layer][head][query][key], [layer][position]. A position's "next token" is the
token after it in the text, so the last position has none (its fields are None).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenCandidate(_Report):
    token: str
    id: int
    prob: float


class TokensReport(_Report):
    """Per-position loss and the model's top-k guesses for the next token."""

    tokens: list[str]  # each id decoded on its own
    ids: list[int]
    loss: list[float | None]  # cross-entropy (nats) of the true next token; None at the last position
    surprisal: list[float | None]  # the same in bits, what the dashboard colours by
    top_k: list[list[TokenCandidate]]  # per position, most likely next tokens first
    mean_loss: float | None  # over positions that have a next token


class AttentionReport(_Report):
    tokens: list[str]
    patterns: list[list[list[list[float]]]]  # [layer][head][query][key], rows sum to 1
    entropy: list[list[float]]  # [layer][head] mean entropy (nats) of the query rows


class LensReport(_Report):
    """The logit lens: each layer's residual stream through the final norm and the unembedding."""

    tokens: list[str]
    layers: list[str]  # "embed", "0", "1", ...: the stream before block 0, then after each block
    top_token: list[list[str]]  # [layer][position]
    top_prob: list[list[float]]
    true_rank: list[list[int | None]]  # rank (0 = top) of the true next token; None at the last position
    true_prob: list[list[float | None]]


class AttributionReport(_Report):
    """Direct logit attribution to `target` at `position`: what each component writes
    into the residual stream, through the final norm's scale (frozen at the real run) and the unembedding."""

    tokens: list[str]
    target: str
    target_id: int
    position: int
    embed: float  # token (+ learned position) embedding
    heads: list[list[float]]  # [layer][head]
    mlps: list[float]  # [layer]
    bias: float  # attention/MLP biases and the final norm's offset, so the parts sum to `total`
    total: float  # the target's logit (minus the mean logit for LayerNorm's centring)


class PatchReport(_Report):
    """Activation patching from the clean run into the corrupted one.

    recovered = (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted), where LD is the
    logit of `answer` minus that of `foil` at the last position: 1 means the patch
    restores the clean behaviour, 0 that it changes nothing.
    """

    clean_tokens: list[str]
    corrupted_tokens: list[str]
    answer: str
    foil: str
    clean_logit_diff: float
    corrupted_logit_diff: float
    residual: list[list[float]]  # [layer][position]: the residual stream entering block `layer`
    heads: list[list[float]]  # [layer][head]: one head's output at every position


class HeadsReport(_Report):
    """Head detector scores on repeated random token sequences: mean attention to the
    previous token, to the earlier copy of the current token, and to the token after it."""

    seq_len: int
    batch: int
    previous_token: list[list[float]]  # [layer][head]
    duplicate_token: list[list[float]]
    induction: list[list[float]]
    chance: float  # the induction score of uniform attention, for comparison


class EmbeddingPoint(_Report):
    token: str
    id: int
    x: float
    y: float


class EmbeddingsReport(_Report):
    points: list[EmbeddingPoint]
    explained_variance: list[float]  # of the two components, as fractions of the total


class InterpretResult(_Report):
    """`POST /v1/interpret`'s answer: the model id served and one report per analysis asked
    for (the others None), what `InferenceClient.interpret` returns."""

    model: str
    tokens: TokensReport | None = None
    attention: AttentionReport | None = None
    lens: LensReport | None = None
    attribution: AttributionReport | None = None
    patch: PatchReport | None = None
    heads: HeadsReport | None = None
    embeddings: EmbeddingsReport | None = None
