"""nldsl against other implementations at matched configurations, and the speed targets, in one run.

Every comparison times both sides in interleaved rounds (`harness.alternate`) and keeps medians, so
its ratio is measured side by side. Peers are used only as installed packages:

- `titans_layer`: the Titans LMM memory layer of specs/titans_lmm.nl against titans-pytorch's
  `NeuralMemory` (same width, heads, memory depth 2 with expansion 2, chunk 16; forward + backward
  + AdamW step on a squared-output loss). As configured by default, `NeuralMemory` takes every
  chunk's surprise (the gradient of its inner loss) at the weights its call starts from, all chunks
  at once: it does not run the chunk recurrence, where each chunk's gradient is taken at the weights
  the chunks before it wrote (Titans §3.2, and nldsl's chunk rule). Its `batch_size = chunk` runs
  that recurrence; that peer is timed beside it, and the run checks which weights each one takes its
  surprises at (`peer_surprise_difference`). nldsl's layer is also timed with `readout =
  chunk_start`, which reads a chunk's queries at one set of weights, as `NeuralMemory` does.
- `titans_mac`: specs/titans_mac.nl against titans-pytorch's `MemoryAsContextTransformer` (same
  width, depth, segment, persistent tokens, memory chunk), full training steps. Not matched:
  titans-pytorch keeps its defaults of 4 hyper-connection residual streams and a NeuralMemory of
  one head of width 128 (nldsl's memory has 4 heads of 32), so it has 35% more parameters.
- `hope_nested_learning`: specs/hope.nl against nested-learning's `hope_selfmod` HOPE with its
  in-context updates on, trained as its own loop does (a differentiable read pass, backward, the
  optimizer step, then the self-modifying and CMS update pass with the teach signal). Both steps'
  FLOPs are counted and this machine's matmul peak measured in the same run, which gives the
  ratio's ceiling: nested-learning's time over nldsl's FLOPs at that peak (nldsl's counted with
  the fused write off, whose custom op the counter cannot see). The ratio is taken with
  nested-learning at nldsl's chunk sizes and momentum (the same update rule); nested-learning at
  its own defaults (chunk size 1: a write per token) is timed beside it and reported apart, and so
  is nldsl's HOPE with memories of nested-learning's shape (`MATCHED_MEMORY`: one head as wide as
  the model, hidden width equal to it, where the shipped spec has 4 heads with hidden 2 × d/4).
- `delta_ops`: the exact delta kernel (nldsl/runtime/delta.py) against flash-linear-attention's
  pure-torch reference ops for the delta rule and the gated delta rule, forward + backward, with
  the largest output difference (both compute the same recurrence).
- `floor`: the Transformer++ spec against the hand-written Transformer++ of bench/transformer_pp.py.
- `hope_transformer`: HOPE against Transformer++ at equal parameter count (a 4-layer Transformer++
  matches the 2-layer HOPE of the spec), T = 2048, both at batch 2 and 8; the ratio takes each
  model's fastest.
- `memory_reference`: the chunk-parallel memory level against its per-token reference (the
  inputs and level of bench/memory_speed.py), T = 2048.
- `fused_write`: HOPE's chunk-compiled training step with the fused memory-write kernel on and
  off (the PyTorch chunk step it replaces), at width 128, T = 2048 and width 256, T = 512.

Both HOPE comparisons time nldsl's step eager, chunk-compiled, and chunk-compiled with
`train.chunks_per_call = GROUPED_CHUNKS` (the same model and arithmetic, fewer compiled calls), and
take the fastest of the three.

    python -m bench peers                        # all of them
    python -m bench peers --only titans_layer delta_ops
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from bench.harness import (
    DEFAULT_THREADS,
    TrainStep,
    alternate,
    build,
    count_flops,
    largest_products,
    log,
    machine,
    matmul_peak,
    parameter_count,
    random_tokens,
    read_result,
    stamp,
    write_result,
)
from bench.transformer_pp import TransformerConfig, TransformerPP
from nldsl.runtime import fused
from nldsl.runtime import layers as L

NAME = "peers"


def _error(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:400] if str(error).strip() else ''}"


def titans_memory_layer(width: int, heads: int, chunk: int, length: int,
                        readout: str | None = None) -> tuple[torch.nn.Module, Callable]:
    """specs/titans_lmm.nl's memory layer at these sizes, and the loss `titans_layer` times on it.

    The loss reads the layer's output for a pre-normed input (as NeuralMemory norms its own) and
    returns its mean square: the layer alone, without the block's MLP or the model's head.
    `readout` overrides the level's (the spec's is `causal`).
    """
    overrides = [f"dim={width}", f"heads={heads}", f"model.block.lmm.level.period={chunk}"]
    if readout is not None:
        overrides.append(f"model.block.lmm.level.readout={readout}")
    model, _ = build("specs/titans_lmm.nl", overrides, seq_len=length)
    layer = model.blocks[0].lmm

    def loss(x: torch.Tensor) -> torch.Tensor:
        out, _ = layer(L.rms_norm(x, layer.norm, 1e-6), None)
        return out.square().mean()

    return layer, loss


def neural_memory(width: int, heads: int, chunk: int, batch_size: int | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """titans-pytorch's `NeuralMemory` as `titans_layer` times it: an MLP memory of depth 2, expansion 2.

    `batch_size` is its own argument: None (its default) takes every chunk's surprise at the weights
    the call starts from; `chunk` updates the weights after every chunk, so that each chunk's
    surprise is taken at the weights the chunks before it wrote, as the Titans chunk rule does."""
    from titans_pytorch import NeuralMemory

    memory = NeuralMemory(dim=width, chunk_size=chunk, heads=heads, dim_head=width // heads, batch_size=batch_size,
                          default_model_kwargs={"depth": 2, "expansion_factor": 2.0}).to(dtype)
    with torch.no_grad():  # its per-head initial memory weights come as one expanded tensor; AdamW
        for param in memory.parameters():  # writes in place, so give every head its own storage
            if 0 in param.stride():
                param.data = param.data.contiguous()
    return memory


def peer_surprise_difference(batch_size: int | None, width: int = 64, heads: int = 2, chunk: int = 16,
                             chunks: int = 4) -> float:
    """How far `NeuralMemory`'s inner losses inside one call over `chunks` chunks are from the same
    tokens' losses at the weights the call starts from, largest over the chunks after the first.

    Its keys and values are per-token projections, so a token's loss at the starting weights does
    not depend on the tokens before it: a fresh call on the chunk alone gives it. 0 means that every
    chunk's surprise is taken at the starting weights (no chunk recurrence); a difference of the
    order of the loss itself means each chunk sees the weights the chunks before it wrote. float64.
    """
    torch.manual_seed(0)
    memory = neural_memory(width, heads, chunk, batch_size, torch.float64)
    x = torch.randn(1, chunks * chunk, width, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, _, (losses, _) = memory(x, return_surprises=True)
        differences = []
        for index in range(1, chunks):
            _, _, (alone, _) = memory(x[:, index * chunk:(index + 1) * chunk], return_surprises=True)
            inside = losses[..., index * chunk:(index + 1) * chunk]
            differences.append(((inside - alone).abs().max() / alone.abs().max()).item())
    return max(differences)


def titans_layer(width: int = 256, heads: int = 4, chunk: int = 16, length: int = 1024, batch: int = 2,
                 rounds: int = 7) -> dict:
    """Our Titans LMM layer vs titans-pytorch NeuralMemory, forward + backward + AdamW step.

    Two peers (module docstring): `titans_pytorch`, as configured by default (the issue's target
    reads against it), and `titans_pytorch_chunk_recurrence` (`batch_size = chunk`), which takes each
    chunk's surprise at the weights the chunks before it wrote, as nldsl's layer does.

    nldsl's layer is timed eager and compiled with the spec's readout (`causal`: each query reads the
    weights written up to its own token), and compiled with `readout = chunk_start`
    (`nldsl_compiled_chunk_start`), which reads every query of a chunk at the weights the chunks
    before it wrote: the granularity at which NeuralMemory's `retrieve_memories` reads. The target
    follows the spec's readout; the chunk-start ratio is reported beside it."""
    ours, our_loss = titans_memory_layer(width, heads, chunk, length)
    chunk_start, chunk_start_loss = titans_memory_layer(width, heads, chunk, length, readout="chunk_start")
    peers = {"titans_pytorch": neural_memory(width, heads, chunk),
             "titans_pytorch_chunk_recurrence": neural_memory(width, heads, chunk, batch_size=chunk)}
    x = torch.randn(batch, length, width, generator=torch.Generator().manual_seed(0))
    ours_optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=True)
    compiled_loss = torch.compile(our_loss, fullgraph=True)
    chunk_start_optimizer = torch.optim.AdamW(chunk_start.parameters(), lr=1e-4, fused=True)
    compiled_chunk_start_loss = torch.compile(chunk_start_loss, fullgraph=True)

    def step(loss_fn, optimizer):
        def run():
            loss = loss_fn(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return run

    def peer_step(memory: torch.nn.Module):
        def their_loss(x):
            retrieved, _ = memory(x)
            return retrieved.square().mean()
        return step(their_loss, torch.optim.AdamW(memory.parameters(), lr=1e-4, fused=True))

    seconds = alternate({"nldsl_eager": step(our_loss, ours_optimizer),
                         "nldsl_compiled": step(compiled_loss, ours_optimizer),
                         "nldsl_compiled_chunk_start": step(compiled_chunk_start_loss, chunk_start_optimizer),
                         **{name: peer_step(memory) for name, memory in peers.items()}}, rounds=rounds, warmup=2)
    torch._dynamo.reset()
    tokens = batch * length
    ours_modes = [name for name in seconds if name.startswith("nldsl")]
    return {"config": {"width": width, "heads": heads, "chunk": chunk, "length": length, "batch": batch,
                       "memory": "mlp depth 2, expansion 2",
                       "readout": {"nldsl_eager": "causal", "nldsl_compiled": "causal",
                                   "nldsl_compiled_chunk_start": "chunk_start"},
                       "titans_pytorch_chunk_recurrence": f"NeuralMemory(batch_size={chunk})"},
            "parameters": {"nldsl": parameter_count(ours), "titans_pytorch": parameter_count(peers["titans_pytorch"])},
            "tokens_per_second": {name: tokens / s for name, s in seconds.items()},
            "speedup_vs_titans_pytorch": {name: seconds["titans_pytorch"] / seconds[name] for name in ours_modes},
            "speedup_vs_titans_pytorch_chunk_recurrence": {
                name: seconds["titans_pytorch_chunk_recurrence"] / seconds[name] for name in ours_modes},
            "peer_surprise_difference": {
                "titans_pytorch": peer_surprise_difference(None, chunk=chunk),
                "titans_pytorch_chunk_recurrence": peer_surprise_difference(chunk, chunk=chunk)}}


def titans_mac(width: int = 128, layers: int = 2, heads: int = 4, segment: int = 64, chunk: int = 16,
               length: int = 512, batch: int = 2, rounds: int = 2) -> dict:
    """specs/titans_mac.nl vs titans-pytorch MemoryAsContextTransformer, full training steps (eager)."""
    from titans_pytorch import MemoryAsContextTransformer

    # every size the peer is given, nldsl's spec is given too (the defaults are the spec's own)
    model, optimizer = build("specs/titans_mac.nl", [f"dim={width}", f"heads={heads}", f"model.layers={layers}",
                                                     f"model.block.mac.segment={segment}",
                                                     f"model.block.mac.lmm.level.period={chunk}"], seq_len=length)
    tokens, targets = random_tokens(batch, length, model.spec.model.vocab)
    ours = TrainStep(model, optimizer)
    theirs = MemoryAsContextTransformer(
        num_tokens=model.spec.model.vocab, dim=width, depth=layers, segment_len=segment, heads=heads,
        dim_head=width // heads, num_persist_mem_tokens=4, num_longterm_mem_tokens=0,
        neural_memory_segment_len=chunk, neural_memory_layers=tuple(range(1, layers + 1)),
        neural_memory_kwargs={"default_model_kwargs": {"depth": 2, "expansion_factor": 2.0}})
    their_optimizer = torch.optim.AdamW(theirs.parameters(), lr=3e-3, fused=True)
    sequence = torch.cat([tokens, tokens[:, :1]], dim=1)  # it takes T + 1 tokens and shifts itself

    def their_step():
        loss = theirs(sequence, return_loss=True)
        their_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        their_optimizer.step()

    seconds = alternate({"nldsl_eager": lambda: ours(tokens, targets), "titans_pytorch": their_step},
                        rounds=rounds)
    return {"config": {"width": width, "layers": layers, "heads": heads, "segment": segment, "chunk": chunk,
                       "length": length, "batch": batch},
            "parameters": {"nldsl": parameter_count(model), "titans_pytorch": parameter_count(theirs)},
            "tokens_per_second": {name: batch * length / s for name, s in seconds.items()},
            "speedup_vs_titans_pytorch": seconds["titans_pytorch"] / seconds["nldsl_eager"]}


def _arithmetic(step) -> tuple[float, list[dict]]:
    """FLOPs and largest products of one call of `step`, counted in one pass (a peer's step takes seconds)."""
    counted: list[float] = []
    products = largest_products(lambda: counted.append(count_flops(step)[0]))
    return counted[0], products


# HOPE's chunk-compiled step is also timed with `train.chunks_per_call` at this value (its chunk loops
# run this many chunks per compiled call); the faster nldsl step gives the ratio. 8: at width 128,
# T 2048 it ran 1.055x faster than 4 (1,926 vs 1,825 tok/s, interleaved, other jobs on the machine),
# and 16 no faster than 8 (2,078 vs 2,071 tok/s, 2026-12-06) for a first compilation of some 4 minutes
GROUPED_CHUNKS = 8

# specs/hope.nl with memories of nested-learning's shape: one head as wide as the model, hidden width = input
MATCHED_MEMORY = ["heads=1", "model.block.titans.memory.state=residual_mlp(expansion = 1)",
                  "model.block.titans.projections.state=residual_mlp(expansion = 1)"]


def hope_nested_learning(width: int = 256, layers: int = 2, heads: int = 4, length: int = 512, batch: int = 2,
                         rounds: int = 3) -> dict:
    """specs/hope.nl vs nested-learning's hope_selfmod, in-context updates on in both."""
    from nested_learning.levels import LevelSpec
    from nested_learning.model import HOPEModel, ModelConfig
    from nested_learning.training import compute_teach_signal

    model, optimizer = build("specs/hope.nl", [f"dim={width}", f"heads={heads}", f"model.layers={layers}"],
                             seq_len=length)
    tokens, targets = random_tokens(batch, length, model.spec.model.vocab)
    ours, ours_chunks = TrainStep(model, optimizer), TrainStep(model, optimizer, compiled="chunks")
    ours_grouped = TrainStep(model, optimizer, compiled="chunks", chunks_per_call=GROUPED_CHUNKS)
    # nested-learning's memories have no heads and a hidden layer as wide as their input (dim → dim →
    # dim, identity skip); the shipped spec's are 4 heads of dim/4 with hidden 2·dim/4, a third of the
    # state. The same model with memories of nested-learning's shape, timed beside the shipped one:
    matched, matched_optimizer = build("specs/hope.nl", [f"dim={width}", f"model.layers={layers}", *MATCHED_MEMORY],
                                       seq_len=length)
    ours_matched = TrainStep(matched, matched_optimizer, compiled="chunks")

    def their_step(**config_changes) -> tuple[torch.nn.Module, Callable[[], None]]:
        config = ModelConfig(
            vocab_size=model.spec.model.vocab, dim=width, num_layers=layers, heads=heads,
            titan_level=LevelSpec("titan", 16),
            cms_levels=[LevelSpec("fast", 16), LevelSpec("mid", 64), LevelSpec("slow", 4096)],
            block_variant="hope_selfmod", qk_l2_norm=True, **config_changes)
        theirs = HOPEModel(config)
        their_optimizer = torch.optim.AdamW(theirs.parameters(), lr=3e-3, fused=True)

        def step():
            # the order of nested-learning's own training loop with train.use_fast_state and online updates
            fast_state = theirs.init_fast_state()
            logits = theirs(tokens, fast_state=fast_state)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                     tokens[:, 1:].reshape(-1))
            their_optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm=1.0)
            their_optimizer.step()
            with torch.no_grad():
                teach = compute_teach_signal(theirs, logits, tokens)
                theirs(tokens, teach_signal=teach, fast_state=fast_state)
        return theirs, step

    # The comparison: nested-learning with nldsl's chunk sizes and momentum, the same update rule.
    theirs, matched_step = their_step(self_mod_chunk_size=8, self_mod_chunk_size_memory=16, self_mod_momentum=0.9)
    # Beside it, not instead of it: nested-learning at its own defaults (chunk size 1, a write per
    # token, no momentum), the configuration the "about 40 tokens/s" describes.
    _, default_step = their_step()

    seconds = alternate({"nldsl_chunks": lambda: ours_chunks(tokens, targets),
                         "nldsl_chunks_grouped": lambda: ours_grouped(tokens, targets),
                         "nldsl_chunks_matched_memory": lambda: ours_matched(tokens, targets),
                         "nested_learning": matched_step, "nested_learning_defaults": default_step},
                        rounds=rounds, warmup=2)  # the first chunk-compiled step compiles
    # nldsl's eager step after them, in rounds of its own, as in hope_transformer (where, interleaved,
    # it left the compiled step after it some 13% slower)
    seconds["nldsl_eager"] = alternate({"nldsl_eager": lambda: ours(tokens, targets)}, rounds=rounds,
                                       warmup=1)["nldsl_eager"]
    torch._dynamo.reset()
    best = min(seconds["nldsl_eager"], seconds["nldsl_chunks"], seconds["nldsl_chunks_grouped"])
    # What bounds the ratio: each side's arithmetic, counted on the eager step with the fused write off:
    # the counter sees aten's products, and the kernel (a custom op) computes the same ones unseen.
    with fused.fused_writes(False):
        arithmetic = {"nldsl": _arithmetic(lambda: ours(tokens, targets)),
                      "nldsl_matched_memory": _arithmetic(lambda: TrainStep(matched, matched_optimizer)(tokens,
                                                                                                         targets)),
                      "nested_learning": _arithmetic(matched_step)}
    flops = {side: counted for side, (counted, _) in arithmetic.items()}
    products = {side: largest for side, (_, largest) in arithmetic.items()}
    peak = matmul_peak()
    counted_as = {"nested_learning": "nested_learning", "nldsl_chunks_matched_memory": "nldsl_matched_memory"}
    return {"config": {"width": width, "layers": layers, "heads": heads, "length": length, "batch": batch,
                       "chunks": "memory 16, projections 8, CMS 16/64/4096", "grouped_chunks_per_call": GROUPED_CHUNKS,
                       "matched_memory": " ".join(MATCHED_MEMORY)},
            "parameters": {"nldsl": parameter_count(model), "nldsl_matched_memory": parameter_count(matched),
                           "nested_learning": parameter_count(theirs)},
            "tokens_per_second": {name: batch * length / s for name, s in seconds.items()},
            "speedup_vs_nested_learning": seconds["nested_learning"] / best,
            "speedup_vs_nested_learning_defaults": seconds["nested_learning_defaults"] / best,
            "speedup_matched_memory_vs_nested_learning":
                seconds["nested_learning"] / seconds["nldsl_chunks_matched_memory"],
            "flops_per_step": flops, "matmul_peak": peak, "largest_products": products,
            "achieved_flops": {name: flops[counted_as.get(name, "nldsl")] / s
                               for name, s in seconds.items() if name != "nested_learning_defaults"},
            # the ratio if nldsl's step ran every counted FLOP at the matmul peak and nothing else
            "speedup_ceiling": seconds["nested_learning"] * peak / flops["nldsl"],
            "speedup_ceiling_matched_memory": seconds["nested_learning"] * peak / flops["nldsl_matched_memory"]}


def fla_naive(module: str):
    """An fla reference module: imported normally, or from its file when fla's package __init__ needs
    triton (absent on this CPU machine); the reference files themselves import only torch and einops."""
    try:
        return importlib.import_module(f"fla.ops.{module}.naive")
    except ImportError as error:
        spec = importlib.util.find_spec("fla")
        if spec is None or not spec.submodule_search_locations:
            raise
        path = Path(next(iter(spec.submodule_search_locations))) / "ops" / module / "naive.py"
        loaded_spec = importlib.util.spec_from_file_location(f"fla_naive_{module}", path)
        assert loaded_spec is not None and loaded_spec.loader is not None
        loaded = importlib.util.module_from_spec(loaded_spec)
        loaded_spec.loader.exec_module(loaded)
        loaded.import_note = f"loaded from {path.name} directly: {_error(error)}"
        return loaded


def delta_ops(batch: int = 2, heads: int = 4, length: int = 2048, dim: int = 64, rounds: int = 2) -> dict:
    """nldsl's exact delta kernel vs fla's naive delta rule / gated delta rule, forward + backward."""
    from nldsl.runtime.delta import generalized_delta_chunked

    delta = fla_naive("delta_rule")
    gated = fla_naive("gated_delta_rule")
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, length, dim, generator=generator)
    k = torch.nn.functional.normalize(torch.randn(batch, heads, length, dim, generator=generator), dim=-1)
    v = torch.randn(batch, heads, length, dim, generator=generator)
    beta = torch.sigmoid(torch.randn(batch, heads, length, generator=generator))
    log_alpha = torch.nn.functional.logsigmoid(4.0 + torch.randn(batch, heads, length, generator=generator))
    leaves = [t.requires_grad_() for t in (q, k, v, beta, log_alpha)]
    scale = dim ** -0.5

    def ours(gated_rule: bool):
        def run():
            alpha = log_alpha.exp() if gated_rule else None
            a = -beta.unsqueeze(-1) * k * (alpha.unsqueeze(-1) if gated_rule else 1.0)  # decay before write
            x = beta.unsqueeze(-1) * v
            state = q.new_zeros(batch, heads, dim, dim)
            return generalized_delta_chunked(q * scale, k, a, x, alpha, state, block=64)[0]
        return run

    def to_bthd(t):
        return t.transpose(1, 2)

    contenders = {
        "delta_nldsl": ours(False),
        "delta_fla_recurrent": lambda: delta.delta_rule_recurrence(q, k, v, beta)[0],
        "delta_fla_chunkwise": lambda: delta.delta_rule_chunkwise(q, k, v, beta, chunk_size=64)[0],
        "gated_nldsl": ours(True),
        "gated_fla_recurrent": lambda: to_bthd(gated.naive_recurrent_gated_delta_rule(
            to_bthd(q), to_bthd(k), to_bthd(v), to_bthd(beta), to_bthd(log_alpha))[0]),
        "gated_fla_chunk": lambda: to_bthd(gated.naive_chunk_gated_delta_rule(
            to_bthd(q), to_bthd(k), to_bthd(v), to_bthd(log_alpha), to_bthd(beta), chunk_size=64)[0]),
    }
    outputs = {name: fn().detach() for name, fn in contenders.items()}
    difference = {
        name: ((outputs[name] - outputs[("gated" if name.startswith("gated") else "delta") + "_nldsl"]).abs().max()
               / outputs[name].abs().max()).item()
        for name in outputs if "fla" in name}

    def forward_backward(fn):
        def run():
            grads = torch.autograd.grad(fn().square().sum(), leaves, allow_unused=True)
            return grads
        return run

    seconds = alternate({name: forward_backward(fn) for name, fn in contenders.items()}, rounds=rounds)
    note = " ".join(dict.fromkeys(getattr(m, "import_note", "") for m in (delta, gated))).strip()  # once if equal
    return {"config": {"batch": batch, "heads": heads, "length": length, "dim": dim, "block": 64},
            "tokens_per_second": {name: batch * length / s for name, s in seconds.items()},
            "max_relative_output_difference": difference,
            "import_note": note or None}


def floor(width: int = 256, layers: int = 2, heads: int = 4, length: int = 2048, batch: int = 2,
          rounds: int = 3) -> dict:
    """The Transformer++ spec vs the hand-written Transformer++, eager and compiled, same config."""
    model, optimizer = build("specs/transformer.nl", [f"dim={width}", f"heads={heads}", f"model.layers={layers}"],
                             seq_len=length)
    tokens, targets = random_tokens(batch, length, model.spec.model.vocab)
    hand = TransformerPP(TransformerConfig(dim=width, layers=layers, heads=heads, max_len=length))
    hand_optimizer = torch.optim.AdamW(hand.parameters(), lr=3e-3, weight_decay=0.1, fused=True)
    steps = {
        "spec_eager": TrainStep(model, optimizer),
        "spec_compiled": TrainStep(model, optimizer, compiled=True),
        "hand_eager": TrainStep(hand, hand_optimizer),
        "hand_compiled": TrainStep(hand, hand_optimizer, compiled=True),
    }
    seconds = alternate({name: (lambda s=s: s(tokens, targets)) for name, s in steps.items()}, rounds=rounds,
                        warmup=2)
    torch._dynamo.reset()
    return {"config": {"width": width, "layers": layers, "heads": heads, "length": length, "batch": batch},
            "parameters": {"spec": parameter_count(model), "hand": parameter_count(hand)},
            "tokens_per_second": {name: batch * length / s for name, s in seconds.items()}}


# Batches `hope_transformer` times both models at. HOPE's per-chunk costs are per call, not per
# sequence, so its tokens/s grow with the batch, while Transformer++'s step is large products already
# at batch 2: in a one-off run (2026-12-07, 3 interleaved rounds, one thread) HOPE's grouped step went
# from 1,362 to 1,786 tok/s between batch 2 and 8 and the compiled Transformer++ from 5,486 to 5,455.
HOPE_TRANSFORMER_BATCHES = (2, 8)


def hope_transformer(length: int = 2048, batches: tuple[int, ...] = HOPE_TRANSFORMER_BATCHES, rounds: int = 8,
                     transformer_layers: int = 4) -> dict:
    """HOPE (in-context updates on) vs Transformer++ at equal parameter count, T = 2048.

    Both models at every batch of `batches`; the ratio takes each model's fastest step (the suite's
    "batch chosen to fill the machine"), and the ratio at each batch is kept beside it. 8 interleaved
    rounds (4 before 2026-12-05): two runs of 4 on an idle machine read 0.303× and 0.263× (batch 2
    alone, before 2026-12-07). The eager HOPE step, timed after them (below), was one of the
    interleaved contenders until 2026-12-06."""
    hope, hope_optimizer = build("specs/hope.nl", seq_len=length)
    transformer, transformer_optimizer = build("specs/transformer.nl", [f"model.layers={transformer_layers}"],
                                               seq_len=length)
    steps = {
        "hope_chunks": TrainStep(hope, hope_optimizer, compiled="chunks"),
        "hope_chunks_grouped": TrainStep(hope, hope_optimizer, compiled="chunks", chunks_per_call=GROUPED_CHUNKS),
        "transformer_eager": TrainStep(transformer, transformer_optimizer),
        "transformer_compiled": TrainStep(transformer, transformer_optimizer, compiled=True),
    }
    data = {batch: random_tokens(batch, length, hope.spec.model.vocab) for batch in batches}
    contenders, batch_of = {}, {}  # by contender's label: its step at one batch, and that batch
    for batch, (tokens, targets) in data.items():
        for name, s in steps.items():
            contenders[f"{name}, batch {batch}"] = lambda s=s, tokens=tokens, targets=targets: s(tokens, targets)
            batch_of[f"{name}, batch {batch}"] = batch
    seconds = alternate(contenders, rounds=rounds, warmup=2)
    # HOPE's eager step is timed after the others, in rounds of its own: interleaved with them it left
    # the grouped chunk-compiled step that followed it some 13% slower (1,753 against 2,007 tok/s in
    # two one-off runs of 6 interleaved rounds, with and without it, 2026-12-06), an effect of sharing
    # one process that no training run has (a run trains in one mode)
    eager = TrainStep(hope, hope_optimizer)
    for batch, (tokens, targets) in data.items():
        name = f"hope_eager, batch {batch}"
        batch_of[name] = batch
        seconds[name] = alternate({name: lambda tokens=tokens, targets=targets: eager(tokens, targets)},
                                  rounds=2, warmup=1)[name]
    torch._dynamo.reset()
    # the ratio depends on the machine: Transformer++'s step is mostly large matrix products, HOPE's runs
    # at a third of the matmul peak or less, so a machine with faster products favours Transformer++
    # (0.307× where the peak read 165 GFLOP/s, 0.425× where it read 88.5); the peak is kept beside it
    peak = matmul_peak()
    speeds = {name: batch_of[name] * length / s for name, s in seconds.items()}

    def best(model: str, batch: int | None = None) -> float:
        return max(v for name, v in speeds.items() if name.startswith(model) and batch in (None, batch_of[name]))

    return {"config": {"length": length, "batches": list(batches), "transformer_layers": transformer_layers,
                       "grouped_chunks_per_call": GROUPED_CHUNKS},
            "parameters": {"hope": parameter_count(hope), "transformer": parameter_count(transformer)},
            "tokens_per_second": speeds, "matmul_peak": peak,
            "hope_over_transformer": best("hope") / best("transformer"),
            "hope_over_transformer_by_batch": {f"batch {batch}": best("hope", batch) / best("transformer", batch)
                                               for batch in batches}}


def memory_reference(length: int = 2048, rounds: int = 2) -> dict:
    """Chunk-parallel memory level, eager and with its chunk body compiled, vs its per-token reference
    (bench/memory_speed.py's level)."""
    from bench.memory_speed import make_inputs, time_forward_backward
    from nldsl.runtime.chunked import compiled_chunks
    from nldsl.runtime.memory import LevelConfig, memory_level
    from nldsl.runtime.reference import memory_level_reference

    cfg = LevelConfig("residual_mlp", 64, 64, hidden=128, objective="l2", dgd=True, momentum=True, chunk_size=16)
    inputs = make_inputs(cfg, 2, 4, length, "cpu", torch.float32)

    def compiled_chunk_body() -> float:
        with compiled_chunks():
            return time_forward_backward(memory_level, cfg, inputs, 2, "cpu")

    fast = {"chunk_parallel": lambda: time_forward_backward(memory_level, cfg, inputs, 2, "cpu"),
            "chunk_parallel_compiled": compiled_chunk_body}
    for fn in fast.values():  # the 20 s reference needs no warm-up; the fast paths' first calls compile
        fn()
        fn()
    seconds = alternate({
        **fast, "per_token_reference": lambda: time_forward_backward(memory_level_reference, cfg, inputs, 2, "cpu"),
    }, rounds=rounds, warmup=0)
    torch._dynamo.reset()
    return {"config": {"length": length, "batch": 2, "heads": 4, "width": 64, "chunk": 16,
                       "level": "residual mlp (expansion 2), l2 + DGD + momentum"},
            "seconds": seconds,
            "speedup": seconds["per_token_reference"] / min(seconds[name] for name in fast),
            "speedup_eager": seconds["per_token_reference"] / seconds["chunk_parallel"]}


def fused_write(configs: tuple[tuple[int, int], ...] = ((128, 2048), (256, 512)), batch: int = 2,
                rounds: int = 4) -> dict:
    """HOPE's chunk-compiled training step with the fused memory-write kernel (nldsl/runtime/fused.py) on
    and off, at the spec's width (T 2048, the hope_transformer point) and at the nested-learning point."""
    from nldsl.runtime import fused

    speeds, ratios = {}, {}
    for width, length in configs:
        model, optimizer = build("specs/hope.nl", [f"dim={width}"], seq_len=length)
        tokens, targets = random_tokens(batch, length, model.spec.model.vocab)
        step = TrainStep(model, optimizer, compiled="chunks")

        def with_kernel(enable: bool, step=step, tokens=tokens, targets=targets):
            def run():
                with fused.fused_writes(enable):
                    return step(tokens, targets)
            return run

        point = f"width {width}, T {length}"
        seconds = alternate({"kernel": with_kernel(True), "pytorch": with_kernel(False)}, rounds=rounds, warmup=2)
        torch._dynamo.reset()
        speeds.update({f"{point}, {name}": batch * length / s for name, s in seconds.items()})
        ratios[point] = seconds["pytorch"] / seconds["kernel"]
    return {"config": {"spec": "specs/hope.nl", "batch": batch, "compile": "chunks"},
            "tokens_per_second": speeds, "speedup": ratios}


COMPARISONS = {
    "titans_layer": titans_layer,
    "titans_mac": titans_mac,
    "hope_nested_learning": hope_nested_learning,
    "delta_ops": delta_ops,
    "floor": floor,
    "hope_transformer": hope_transformer,
    "memory_reference": memory_reference,
    "fused_write": fused_write,
}


# The peers, by the module they import: the pip package (pyproject.toml's `bench` extra) that provides it.
PEER_PACKAGES = {"titans_pytorch": "titans-pytorch==0.5.5", "nested_learning": "nested-learning==0.2.0",
                 "fla": "fla-core==0.6.0"}


def missing_package(error: BaseException) -> str | None:
    """One line for a comparison that could not import what it needs (no traceback: the fix is an install)."""
    if not isinstance(error, ModuleNotFoundError) or not error.name:
        return None
    module = error.name.split(".")[0]
    if module in PEER_PACKAGES:
        return (f"{module} is not installed: pip install '{PEER_PACKAGES[module]}' "
                "(or every peer: pip install -e '.[bench]')")
    return f"the Python module {module} is not installed (the peers' packages: pip install -e '.[bench]')"


def key_of(name: str) -> str:
    """A comparison's key in the results: the suite's default is one thread per process; other counts sit
    beside it."""
    threads = torch.get_num_threads()
    return name if threads == DEFAULT_THREADS else f"{name} ({threads} threads)"


def run(only: list[str] | None, fresh: bool) -> dict:
    names = list(dict.fromkeys(only or COMPARISONS))
    result = read_result(NAME, fresh) or {"machine": machine(), "comparisons": {}}
    failures = result.setdefault("failures", {})
    if not isinstance(failures, dict):  # an odd field is no reason to stop; the comparisons are what matter
        failures = result["failures"] = {}
    if fresh:  # only the comparisons run now: the others stay
        for name in names:
            result["comparisons"].pop(key_of(name), None)
            failures.pop(key_of(name), None)
    for name in names:
        log(f"peers {name} ...")
        key = key_of(name)
        try:
            outcome = COMPARISONS[name]()
        except Exception as error:  # a peer that cannot run is reported with its error text
            missing = missing_package(error)
            failure = {"error": missing or _error(error), "when": machine()["time"], **stamp()}
            if missing is None:
                failure["traceback"] = traceback.format_exc().splitlines()[-6:]
            if key in result["comparisons"] and "error" not in result["comparisons"][key]:
                # a failure never replaces a measurement: it is kept beside it, and said
                failures[key] = failure
                log(f"peers {name}: FAILED, {failure['error']} (the earlier measurement is kept)")
            else:
                result["comparisons"][key] = failure
                failures.pop(key, None)
                log(f"peers {name}: FAILED, {failure['error']}")
            write_result(NAME, result)
            continue
        outcome.update(stamp())  # when, and on how many threads (the file's `machine` is its first run's)
        # the machine's fp32 matmul peak beside every ratio (a comparison that reads it during its rounds
        # keeps its own): the ratios move with it, nldsl's matmul-bound steps more than the peers' Python loops
        outcome.setdefault("matmul_peak", matmul_peak())
        result["comparisons"][key] = outcome
        failures.pop(key, None)
        write_result(NAME, result)
        log(f"peers {name}: {outcome}")
    return result


def main(args) -> int:
    """0 when every comparison asked for ran; 1 when any failed now (a stored measurement kept beside a
    failure does not make the run a success: a script that checks the status must see it)."""
    names = list(dict.fromkeys(args.only or COMPARISONS))
    result = run(names, args.fresh)
    failed = [name for name in names
              if key_of(name) in result["failures"] or "error" in result["comparisons"].get(key_of(name), {})]
    if failed:
        log(f"peers: {len(failed)} of {len(names)} comparisons failed: {', '.join(failed)}")
        return 1
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("--only", nargs="+", choices=list(COMPARISONS), metavar="COMPARISON",
                        help=f"comparisons to run, of: {', '.join(COMPARISONS)} (default: all)")
    parser.add_argument("--fresh", action="store_true",
                        help="discard the stored results of the comparisons run now (the others stay), so a "
                             "failure shows instead of an earlier measurement")


if __name__ == "__main__":
    sys.exit("run it as: python -m bench peers")
