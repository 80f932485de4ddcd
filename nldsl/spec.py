"""The checked spec: frozen pydantic models, one per section kind and per value kind.

These classes are the language's vocabulary. The checker (checker.py) turns a parsed file into
them, the documentation (docs/language.md) describes their fields, and `did you mean` suggestions
come from their field names. Field descriptions carry the paper symbol where there is one.

Values written as calls in a spec (`mlp(depth = 2)`, `learned(max = 0.1)`) are "kinded" models:
their `kind` is the call's name; a bare name (`linear`) is the call with no arguments; a number
given to a gate is a `constant`.
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Activation = Literal["silu", "gelu", "relu", "tanh"]


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Kinded(Strict):
    """A value written as a call; `POSITIONAL` names the fields positional arguments fill."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ()
    kind: str


# States ---------------------------------------------------------------------------------------

class LinearState(Kinded):
    """`M(x) = W x`: a matrix memory (linear attention, DeltaNet, momentum)."""

    kind: Literal["linear"] = "linear"


class MLPState(Kinded):
    """`M(x) = W_L σ(… σ(W_1 x))`: a deep memory (Titans LMM, TTT-MLP, CMS blocks)."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("depth",)
    kind: Literal["mlp"] = "mlp"
    depth: int = Field(2, ge=1, le=8, description="number of weight matrices")
    expansion: float = Field(4.0, gt=0, le=64, description="hidden width as a multiple of the input width")
    activation: Activation = "silu"


class ResidualMLPState(Kinded):
    """`M(x) = x + W_2 σ(W_1 x)`: the 2-layer residual memory of HOPE (Eq. 89)."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("expansion",)
    kind: Literal["residual_mlp"] = "residual_mlp"
    expansion: float = Field(2.0, gt=0, le=64, description="hidden width as a multiple of the input width")
    activation: Activation = "silu"


State = Annotated[LinearState | MLPState | ResidualMLPState, Field(discriminator="kind")]


# Gates (η, α, β) ------------------------------------------------------------------------------

# A sigmoid gate starts at most this close to 0 or to its bound: its logit would start past ±13.8,
# where its gradient is below 1e-6 and it could not learn (compiler/lower.logit, checked as E0302).
SIGMOID_START_EDGE = 1e-6


class ConstantGate(Kinded):
    POSITIONAL: ClassVar[tuple[str, ...]] = ("value",)
    kind: Literal["constant"] = "constant"
    value: float = Field(ge=0)


class PerHeadGate(Kinded):
    """One learned value per head (a parameter, not data dependent)."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("init",)
    kind: Literal["per_head"] = "per_head"
    init: float = Field(ge=0, description="initial value")


class LearnedGate(Kinded):
    """Per token and head: `max · sigmoid(x W + b)` from the layer input."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("max",)
    kind: Literal["learned"] = "learned"
    max: float = Field(1.0, gt=0, description="upper bound of the gate")
    init: float | None = Field(None, gt=0, description="value at initialisation (sets the bias); default: "
                               "max times lr 0.5, retention 0.999, momentum 0.9")


class GeneratedGate(Kinded):
    """Produced by an in-context memory (`selfmod` only, Eq. 84)."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("max",)
    kind: Literal["generated"] = "generated"
    max: float = Field(1.0, gt=0, description="upper bound of the gate")


Gate = Annotated[ConstantGate | PerHeadGate | LearnedGate | GeneratedGate, Field(discriminator="kind")]


class NewtonSchulz(Kinded):
    """Orthogonalise each update with Muon's quintic Newton–Schulz iteration (Eq. 42–44, 52)."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("steps",)
    kind: Literal["newton_schulz"] = "newton_schulz"
    steps: int = Field(5, ge=1, le=20)


class Steps(Kinded):
    """A period counted in outer training steps instead of tokens."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("count",)
    kind: Literal["steps"] = "steps"
    count: int = Field(ge=1)


# Levels ---------------------------------------------------------------------------------------

class LevelSpec(Strict):
    """One in-context associative memory: state, objective, rule, gates, period (docs/semantics.md §1)."""

    name: str
    state: State = Field(default_factory=LinearState, description="what the level stores")
    objective: Literal["dot", "l2", "surprise", "reconstruction"] = Field(
        "l2", description="inner loss ℓ: dot (Hebbian), l2 (delta rule), surprise (next-token loss), reconstruction")
    values: Literal["given", "generated"] = Field(
        "given", description="targets v̂: the value stream, or the memory's own prediction M(v) (Eq. 83)")
    rule: Literal["gd", "dgd"] = Field("gd", description="inner optimizer: gd, or dgd (delta GD, Eq. 57/88)")
    dgd_layers: Literal["first", "all"] = Field(
        "first", description="which weights DGD's k kᵀ term acts on in an MLP memory")
    lr: Gate = Field(default_factory=lambda: ConstantGate(value=0.1), description="η: inner learning rate")
    retention: Gate | None = Field(None, description="α: retention / forget gate / weight decay (none = 1)")
    momentum: Gate | None = Field(None, description="β: momentum decay; none = no momentum (Titans surprise)")
    orthogonalize: NewtonSchulz | None = Field(None, description="Newton–Schulz on each chunk's update")
    clip: float | None = Field(
        None, gt=0, description="bound on each token's inner-gradient norm: its write's η_t is scaled by "
        "min(1, clip/‖∇ℓ_t‖) (per head); none = unbounded")
    period: Annotated[int, Field(ge=1)] | Steps = Field(
        1, description="C: tokens per chunk; gradients in a chunk use its start state")
    readout: Literal["causal", "exclusive", "chunk_start"] = Field(
        "causal", description="which state a token reads: after its write, before it, or the chunk's start")
    update: Literal["in_context", "outer"] = Field(
        "in_context", description="in_context: learns in the forward pass; outer: only the outer optimizer")
    grad_through_writes: bool = Field(True, description="differentiate the outer loss through inner updates")
    retention_order: Literal["with_write", "before_write"] = Field(
        "with_write", description="take the inner gradient at θ_{t−1} (with_write) or at α_t θ_{t−1} "
        "(before_write: Gated DeltaNet's decay-then-write)")
    init: Literal["learned", "zeros"] = Field("learned", description="initial state: meta-learned or zero")

    @property
    def period_tokens(self) -> int | None:
        return self.period if isinstance(self.period, int) else None

    def learns_in_context(self, seq_len: int) -> bool:
        """Whether a cms level learns in the forward pass: `update = in_context` and a period that fits a
        training sequence. Otherwise it is a plain MLP that only the outer optimizer changes, on the
        continuum clock (docs/semantics.md §3.7, §4)."""
        return self.update == "in_context" and isinstance(self.period, int) and self.period <= seq_len


OPTIMIZER_FLOWS = ("gradients", "squared_gradients")  # the gradient streams an optimizer level can learn from
# Names an optimizer level cannot take: a flow's (`flow = gradients` and `update = gradients` would read
# either), and `step`, the optimizer's step counter in each parameter's state (nldsl/runtime/optim.py).
RESERVED_OPTIMIZER_LEVEL_NAMES = (*OPTIMIZER_FLOWS, "step")


class OptimizerLevelSpec(Strict):
    """A level of an optimizer: a memory of the gradient stream (Nested Learning §4).

    Combinations the runtime rejects (`OptimizerLevelConfig`) are checker errors, in
    semantics.check_optimizer_flows: an `mlp` state has no momentum buffer for `nesterov`,
    `bias_correction` or `init = first_flow`, and `bias_correction` needs `retention < 1`.
    """

    name: str
    flow: str = Field("gradients", description="gradients, squared_gradients, or another level's output")
    state: Literal["linear", "mlp"] = Field("linear", description="linear: momentum; mlp: deep momentum (DMGD)")
    hidden: int = Field(8, ge=1, le=256, description="hidden width of an mlp state")
    objective: Literal["dot", "l2"] = Field("dot", description="dot: momentum; l2: delta momentum")
    lr: float = Field(1.0, ge=0, description="η: scale of each write")
    retention: float = Field(1.0, ge=0, le=1, description="α: decay of the old state (momentum factor)")
    period: int = Field(1, ge=1, description="steps between writes; the flow is summed in between")
    orthogonalize: NewtonSchulz | None = Field(None, description="Newton–Schulz on the output (Muon)")
    nesterov: bool = Field(False, description="output α·m + η·x (Nesterov look-ahead)")
    bias_correction: bool = Field(False, description="divide the output by 1 − α^t (Adam)")
    readout: Literal["causal", "exclusive"] = Field(
        "causal", description="read the state after this step's write, or before it (M3's slow memory)")
    init: Literal["zeros", "first_flow"] = Field(
        "zeros", description="start at zero, or store the first flow as is (torch SGD's first momentum buffer)")


# Layers of a block ----------------------------------------------------------------------------

class AttentionSpec(Strict):
    """Causal softmax attention (non-parametric memory with period 1)."""

    kind: Literal["attention"] = "attention"
    name: str | None = None
    heads: int = Field(4, ge=1)
    window: int = Field(0, ge=0, description="sliding window in tokens; 0 = full causal attention")
    rope: bool = Field(True, description="rotary position embedding")
    rope_base: float = Field(10000.0, gt=1)
    persistent: int = Field(0, ge=0, description="learned persistent memory tokens (Titans)")
    qk_norm: bool = Field(False, description="RMS-normalise queries and keys per head")


class MemorySpec(Strict):
    """An associative-memory layer: projections, then one level per head (Titans, DeltaNet, …)."""

    kind: Literal["memory"] = "memory"
    name: str | None = None
    heads: int = Field(4, ge=1)
    activation: Literal["silu", "none"] = Field("silu", description="applied to q, k, v after projection")
    conv: int = Field(4, ge=0, le=64, description="causal depthwise convolution width on q, k, v; 0 = none")
    qk_norm: Literal["l2", "none"] = Field("l2", description="normalise queries and keys")
    value_norm: Literal["l2", "none"] = Field("none", description="normalise values")
    output_norm: bool = Field(True, description="RMS norm of each head's output")
    output_gate: bool = Field(True, description="multiply the output by sigmoid(x W_g)")
    level: LevelSpec

    @property
    def projected(self) -> str:
        """The projections the layer makes: q, k and v, or only q and k when its level's objective,
        `reconstruction` (½‖M(k) − k‖²), reads no values (a W_v would get no gradient)."""
        return "qk" if self.level.objective == "reconstruction" else "qkv"


class SelfModSpec(Strict):
    """Self-modifying Titans (HOPE, Eq. 83–93): projections are in-context memories too."""

    kind: Literal["selfmod"] = "selfmod"
    name: str | None = None
    heads: int = Field(4, ge=1)
    adaptive: tuple[Literal["k", "v", "q", "eta", "alpha"], ...] = Field(
        ("k", "v", "eta", "alpha"), description="projections that are in-context memories (q static by default)")
    conv: int = Field(4, ge=0, le=64, description="causal depthwise convolution width on q, k, v")
    qk_norm: Literal["l2", "none"] = "l2"
    value_norm: Literal["l2", "none"] = Field(
        "l2", description="normalise values: self-generated targets M(v) are otherwise unbounded")
    output_norm: bool = True
    output_gate: bool = True
    memory: LevelSpec
    projections: LevelSpec

    def kv_eta_cut_off(self, seq_len: int) -> bool:
        """Whether k, v and η reach the loss only through detached writes, so that nothing that makes
        them (M_k, M_v, M_η, or W_k, W_v and a learned lr, and the convolutions of k and v) gets a
        gradient. The main memory detaches its writes, and the projection memories' writes, made
        with the same k, v and η, carry them nowhere: they are detached too, or no memory whose
        output reaches the loss is among them (q's is read out, α's is the retention, never
        detached), or nothing reads them in training (`projections_read`)."""
        if self.memory.grad_through_writes:
            return False
        carrying = self.projections.grad_through_writes and self.projections_read(seq_len)
        return not (carrying and {"q", "alpha"} & set(self.adaptive))

    def longest_call_reading_no_projection_write(self) -> int:
        """The longest call in which no write of the projection memories is read: one period (they
        read at `chunk_start`, E0601 otherwise, so the write at a chunk's end is for the next chunk);
        the longest there is where they never learn in context."""
        projections = self.projections
        if projections.update != "in_context" or not isinstance(projections.period, int):
            return sys.maxsize - 1
        return projections.period

    def projections_read(self, seq_len: int) -> bool:
        """Whether a write of the projection memories is read within a training sequence: they write
        at chunk ends for the next chunk (`readout = chunk_start`), so a period of `seq_len` or more
        leaves every write unread (a longer one makes none)."""
        projections = self.projections
        return projections.learns_in_context(seq_len) and (
            projections.readout != "chunk_start" or projections.period < seq_len)


class MLPSpec(Strict):
    """A feed-forward block: a CMS level that never updates in context."""

    kind: Literal["mlp"] = "mlp"
    name: str | None = None
    activation: Literal["swiglu", "gelu"] = "swiglu"
    expansion: float = Field(4.0, gt=0, le=64)


class CMSSpec(Strict):
    """Continuum Memory System (Eq. 70–74): MLP levels updated at different periods."""

    kind: Literal["cms"] = "cms"
    name: str | None = None
    variant: Literal["sequential", "independent", "nested"] = "sequential"
    levels: tuple[LevelSpec, ...]

    def inert_levels(self, seq_len: int) -> tuple[str, ...]:
        """The slower levels of a nested chain that never move, so that nothing reads them: all of
        them when the fastest level does not learn in context (the chain is its MLP), else those
        whose period passes `seq_len` (docs/semantics.md §3.7)."""
        if self.variant != "nested":
            return ()
        fastest_learns = self.levels[0].learns_in_context(seq_len)
        return tuple(level.name for level in self.levels[1:]
                     if not fastest_learns or not level.learns_in_context(seq_len))


class ParallelSpec(Strict):
    """Branches on the same input, combined by a sum or a gate (Titans MAG)."""

    kind: Literal["parallel"] = "parallel"
    name: str | None = None
    combine: Literal["sum", "gate"] = "gate"
    branches: tuple[Sublayer, ...]


class ContextSpec(Strict):
    """Memory as context (Titans MAC): segments attend over [persistent | memory readout | segment]."""

    kind: Literal["context"] = "context"
    name: str | None = None
    segment: int = Field(64, ge=1, description="segment length in tokens")
    memory: MemorySpec
    attention: AttentionSpec


Sublayer = Annotated[
    AttentionSpec | MemorySpec | SelfModSpec | MLPSpec | CMSSpec | ParallelSpec | ContextSpec,
    Field(discriminator="kind"),
]
ParallelSpec.model_rebuild()


class BlockSpec(Strict):
    """A residual block: each sublayer is applied as `x + sublayer(norm(x))`."""

    name: str | None = None
    sublayers: tuple[Sublayer, ...]
    norm: Literal["rms", "none"] = "rms"


class ModelSpec(Strict):
    name: str | None = None
    vocab: int = Field(256, ge=2, description="vocabulary size (256: bytes)")
    dim: int = Field(ge=1, description="model width d")
    layers: int = Field(1, ge=1, le=256, description="how many times the block repeats")
    block: BlockSpec
    tie_embeddings: bool = True
    # ≥ 1e-12: RMSNorm's backward at a zero row scales by ε^−1.5, which float32 overflows below ~1e-26
    norm_eps: float = Field(1e-6, ge=1e-12, le=1.0)


# Optimizers and training ----------------------------------------------------------------------

Expression = Any  # a tuple tree: ("level", name) | ("const", x) | (op, a, b) | (function, a) | ("neg", a)
UPDATE_FUNCTIONS = ("sqrt", "abs", "sign")  # an update's element-wise functions of one operand


class NamedConstant(tuple):
    """A `("const", x)` node that the spec wrote as a named constant: equal to the plain node, but
    its text (`update_text`) is the name, so an expression shown back to the user (a graph's update,
    a help that mends it) still reads the constant rather than its value."""

    name: str

    def __new__(cls, value: float, name: str) -> NamedConstant:
        node = super().__new__(cls, ("const", value))
        node.name = name
        return node

    def __getnewargs__(self) -> tuple[float, str]:  # copies and pickles rebuild it from its value and name
        return self[1], self.name


class OptimizerSpec(Strict):
    """An outer optimizer written as levels over the gradient stream."""

    kind: Literal["spec"] = "spec"
    name: str | None = None
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_scale: Literal["none", "muon"] = "none"
    matrices_only: bool = Field(False, description="apply to 2-D weights only; the rest use adamw")
    levels: tuple[OptimizerLevelSpec, ...]
    update: Expression = Field(description="the step direction as an expression over level outputs")


M3_SLOW_PERIOD = 10  # outer steps between two writes of the built-in m3's slow momentum (Algorithm 1's f)


class BuiltinOptimizer(Kinded):
    """A named optimizer with its usual hyper-parameters: `adamw(lr = 3e-4)`."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("lr",)
    kind: Literal["adamw", "sgd", "muon", "m3"]
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)


class BytesTokenizer(Kinded):
    kind: Literal["bytes"] = "bytes"


BPE_VOCAB_RANGE = (260, 65536)


class BPETokenizer(Kinded):
    POSITIONAL: ClassVar[tuple[str, ...]] = ("vocab",)
    kind: Literal["bpe"] = "bpe"
    vocab: int = Field(1024, ge=BPE_VOCAB_RANGE[0], le=BPE_VOCAB_RANGE[1])


Tokenizer = Annotated[BytesTokenizer | BPETokenizer, Field(discriminator="kind")]


class TrainSpec(Strict):
    optimizer: Annotated[OptimizerSpec | BuiltinOptimizer, Field(discriminator="kind")] = Field(
        default_factory=lambda: BuiltinOptimizer(kind="adamw", lr=1e-3, weight_decay=0.1))
    steps: int = Field(200, ge=1)
    batch: int = Field(8, ge=1, description="sequences per step (global)")
    seq_len: int = Field(256, ge=2, description="tokens per sequence")
    warmup: int = Field(20, ge=0, description="linear warm-up steps")
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    clip: float = Field(1.0, ge=0, description="gradient-norm clipping; 0 = off")
    seed: int = Field(0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool | Literal["chunks", "blocks"] = Field(
        True, description="torch.compile the training step: true = as one graph, blocks = each block (one graph "
                          "every block reuses), chunks = each chunk body")
    recompute: int = Field(
        0, ge=0, description="the backward pass keeps one in-context state per N chunks and recomputes the "
                             "chunks between; 0 = keep every chunk's state")
    chunks_per_call: int = Field(
        1, ge=1, description="chunk bodies per compiled call under compile = chunks (each chunk loop unrolled "
                             "that many times: fewer calls, a longer first compilation); no effect otherwise")
    tokenizer: Tokenizer = Field(default_factory=BytesTokenizer)
    eval_every: int = Field(100, ge=0)
    eval_batches: int = Field(8, ge=1)
    checkpoint_every: int = Field(100, ge=0)
    keep_checkpoints: int = Field(3, ge=1)
    log_every: int = Field(10, ge=1)

    def clock_steps(self, level: LevelSpec) -> int:
        """Outer steps between two updates of a level the continuum clock drives (docs/semantics.md
        §4): its `steps(n)`, or its period in tokens over the tokens of one step, rounded up."""
        if isinstance(level.period, Steps):
            return level.period.count
        return max(1, math.ceil(level.period / (self.batch * self.seq_len)))


class Spec(Strict):
    """A whole checked file: the model (if any), training, and the named optimizers it defines."""

    path: str
    sha256: str  # of the file's text, the texts of the files it imports, and the overrides
    model: ModelSpec | None = None
    train: TrainSpec = Field(default_factory=TrainSpec)
    optimizers: tuple[OptimizerSpec, ...] = ()


KINDED_VALUES: dict[str, type[Kinded]] = {
    cls.model_fields["kind"].default: cls
    for cls in (LinearState, MLPState, ResidualMLPState, ConstantGate, PerHeadGate, LearnedGate,
                GeneratedGate, NewtonSchulz, Steps, BytesTokenizer, BPETokenizer)
}
BUILTIN_OPTIMIZERS: tuple[str, ...] = get_args(BuiltinOptimizer.model_fields["kind"].annotation)
for _name in BUILTIN_OPTIMIZERS:
    KINDED_VALUES[_name] = BuiltinOptimizer

SUBLAYER_SPECS: dict[str, type[Strict]] = {
    "attention": AttentionSpec, "memory": MemorySpec, "selfmod": SelfModSpec, "mlp": MLPSpec,
    "cms": CMSSpec, "parallel": ParallelSpec, "context": ContextSpec,
}
