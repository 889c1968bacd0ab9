"""The distillation loop: the student mirror learns the teacher's outputs on fresh inputs.

Each step draws a batch of inputs (seeded draws from the priors in the teacher's metadata, or
rows of ``data``), runs the teacher in onnxruntime (faster than its mirror, and it is the
model as shipped; it runs the next batch on a second thread while torch trains on this one),
and takes one Adam step on the output MSE of the student mirror. The learning rate warms up
linearly over the first 5% of the steps, then decays on a cosine to 1% of ``lr``.

- Masks: a weight's exact zeros (from pruning) are zeroed again after every step (and their
  gradients before it), so unstructured and N:M patterns hold bit for bit.
- Quantization-aware: ``quantize="int8"`` reads each layer weight through fake int8 per output
  channel (``insert_qdq.quantize_symmetric`` with the axes of ``passes/weights.py``), ``"int4"``
  through the int4 blocks ``weight_only_quantize`` would store (float16-rounded block scales,
  int8 per channel where int4 blocks would be larger, biases of 16+ values int8 per tensor);
  gradients pass straight through the rounding and through the scale (``FakeQuant``).
- Best checkpoint: the student is evaluated on a seeded held-out set every ``EVAL_EVERY`` steps
  and the best evaluation's weights are kept (quantization-aware training swings by 1-2 dB
  between evaluations as weights flip across rounding boundaries, whatever the learning rate).
- Deterministic for a seed: numpy and torch seeded, torch and onnxruntime on ``threads``
  threads (torch's previous thread count is restored afterwards).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import torch

from gencompress.distillation.mirror import Mirror

QUANTIZE_AWARE = ("int8", "int4")
CURVE_POINTS = 20  # points of the loss curve in the report


@dataclass(frozen=True)
class FakeQuant:
    """How one weight is read during quantization-aware training.

    Forward: exactly the dequantized weight the quantizer stores (same scale formula, float16
    block scales, round half to even). Backward: straight through the rounding (``_round_ste``)
    but through the scale, so the weight that sets a channel's or block's scale (its peak) learns
    what the scale costs, as LSQ's scale gradient does (``round(w/s) - w/s``). With the gradient
    stopped at the scale, dcgan int4 QAT, 1000 steps at lr 5e-5, swung by 1-3 dB between
    evaluations and ended at 40.4 dB on the held-out set; through the scale it climbed steadily to
    42.8 dB.
    """

    axis: int | None  # per-channel axis (int8) or block axis (int4); None: per tensor
    qmax: int
    block: int = 0  # > 0: blocks of this many values along ``axis``, float16 scales
    group: int = 1  # int8: one scale per this many consecutive channels (insert_qdq's channel_block)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        if self.block:
            return _fake_blockwise(w, self.axis, self.block, self.qmax)
        if self.axis is None:
            peaks = w.abs().amax()
        else:
            other = [d for d in range(w.dim()) if d != self.axis]
            peaks = w.abs().amax(dim=other, keepdim=True) if other else w.abs()
            if self.group > 1:
                shape = peaks.shape
                peaks = peaks.reshape(-1, self.group).amax(dim=1, keepdim=True).expand(-1, self.group).reshape(shape)
        scale = peaks / self.qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return torch.clamp(_round_ste(w / scale), -self.qmax, self.qmax) * scale


def _straight_through(x: torch.Tensor, fn) -> torch.Tensor:
    """``fn(x)`` forward, identity backward. Bit-exact: ``fn(x) - x`` is exact for a rounding to 0
    or to a value within a factor of 2 of ``x`` (Sterbenz), so ``x + (fn(x) - x) == fn(x)``."""
    return x + (fn(x.detach()) - x).detach()


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return _straight_through(x, torch.round)  # half to even, as numpy's rint


def _half_ste(x: torch.Tensor) -> torch.Tensor:
    return _straight_through(x, lambda v: torch.clamp(v, max=float(np.finfo(np.float16).max)).to(torch.float16).to(torch.float32))


def _fake_blockwise(w: torch.Tensor, axis: int, block: int, qmax: int) -> torch.Tensor:
    """``weight_only_quantize.quantize_blockwise`` (float16 block scales) then dequantized, in torch."""
    moved = w.movedim(axis, -1)
    k = moved.shape[-1]
    blocks = math.ceil(k / block)
    padded = torch.nn.functional.pad(moved, (0, blocks * block - k))
    grouped = padded.reshape(*moved.shape[:-1], blocks, block)
    scale = _half_ste(grouped.abs().amax(dim=-1) / qmax)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(_round_ste(grouped / scale[..., None]), -qmax, qmax) * scale[..., None]
    return q.reshape(*moved.shape[:-1], blocks * block)[..., :k].movedim(-1, axis)


def fake_quant_plan(model: ir.Model, mode: str, block_size: int = 64) -> dict[str, FakeQuant]:
    """Weight name -> how the quantizer ``mode`` will store it (only weights the mirror trains)."""
    from gencompress.passes.insert_qdq import MIN_BIAS_VALUES, channel_block, table_weights
    from gencompress.passes.weight_only_quantize import BIAS_INPUT, int4_bytes, int8_bytes
    from gencompress.passes.weights import find_weights

    graph = model.graph
    plan: dict[str, FakeQuant] = {}
    for use in [*find_weights(graph), *table_weights(graph)]:
        if use.value.dtype != ir.DataType.FLOAT or use.name in plan:
            continue
        shape = tuple(use.value.const_value.shape)
        if mode == "int4" and int4_bytes(shape, use.reduce_axis, block_size) < int8_bytes(shape, use.out_axis):
            plan[use.name] = FakeQuant(use.reduce_axis, 7, block_size)
        else:
            plan[use.name] = FakeQuant(use.out_axis, 127, group=channel_block(use.node, use) if mode == "int8" else 1)
        if mode == "int4":  # weight-only stores larger biases as int8 per tensor
            index = BIAS_INPUT.get(use.op_type)
            node = use.node
            if index is not None and index < len(node.inputs) and node.inputs[index] is not None:
                bias = node.inputs[index]
                if bias.name in graph.initializers and bias.const_value is not None and bias.const_value.size >= MIN_BIAS_VALUES:
                    plan.setdefault(bias.name, FakeQuant(None, 127))
    return plan


HOLDOUT_SEED_OFFSET = 2_000_029  # training draws use seed, check's held-back set seed + 1_000_003
HOLDOUT_SIZE = 256
EVAL_EVERY = 50  # steps between held-out evaluations (each costs about 1.3 training steps)
TAIL, TAIL_EVERY = 0.8, 10  # and every 10 steps over the last 20%, where the small learning rate leaves the best weights

WARMUP = 0.05  # share of the steps over which the learning rate ramps up


def learning_rate_factor(step: int, steps: int) -> float:
    """Linear warm-up over ``WARMUP`` of the steps (Adam's first steps move every weight by about
    ``lr`` and would first undo the student), then a cosine decay to 1%."""
    warm = max(1, int(WARMUP * steps))
    if step < warm:
        return (step + 1) / warm
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


class Batches:
    """Seeded training batches: prior draws (``specs``) or random rows of ``data``."""

    def __init__(self, specs, batch: int, seed: int, data: dict | None = None):
        self.specs, self.batch, self.data, self.seed = specs, batch, data, seed
        self.rng = np.random.default_rng(seed)

    def holdout(self, size: int = 256) -> dict[str, np.ndarray]:
        """A fixed seeded set for picking the best checkpoint: prior draws with a seed of its own
        (``seed + HOLDOUT_SEED_OFFSET``, neither the training draws' nor check's held-back seed),
        or ``size`` seeded rows of ``data``."""
        other = Batches(self.specs, size, self.seed + HOLDOUT_SEED_OFFSET, self.data)
        return next(other)

    def __next__(self) -> dict[str, np.ndarray]:
        if self.data is not None:
            n = len(next(iter(self.data.values())))
            rows = self.rng.integers(0, n, size=self.batch)
            return {k: v[rows] for k, v in self.data.items()}
        return {s.name: s.sample(self.batch, self.rng) for s in self.specs}


FEATURE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FEATURE_FADE = 0.8  # the feature-matching weight falls linearly from 1 to 0 over this share of the steps


def matched_features(teacher_proto, student: ir.Model) -> list[str]:
    """Outputs of layer ops (Conv, ConvTranspose, Gemm, MatMul) that the student and the teacher both
    compute under the same name (their shapes are compared on the first batch)."""
    teacher_ops = {out: n.op_type for n in teacher_proto.graph.node for out in n.output[:1]}
    graph_outputs = {v.name for v in student.graph.outputs}
    names = []
    for node in student.graph:
        out = node.outputs[0].name if node.outputs else ""
        if node.op_type in FEATURE_OPS and teacher_ops.get(out) == node.op_type and out not in graph_outputs:
            names.append(out)
    return names


def teacher_session_with(teacher_proto, extra: list[str], threads: int):
    """An onnxruntime session of the teacher that also returns the intermediate tensors ``extra``."""
    import onnx

    from gencompress.runtime_check.sessions import make_session

    proto = onnx.ModelProto()
    proto.CopyFrom(teacher_proto)
    for name in extra:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return make_session(proto, threads=threads, label="teacher")


def train(
    teacher_proto,
    student: ir.Model,
    batches: Batches,
    *,
    steps: int,
    lr: float,
    seed: int,
    threads: int,
    quantize: str | None = None,
    block_size: int = 64,
    features: bool = False,
    keep_best: bool = True,
    eval_every: int = EVAL_EVERY,
    on_step=None,
    on_eval=None,
) -> dict:
    """Train ``student``'s weights in place against ``teacher_proto``; returns the loss curve and
    what was trained.

    ``features``: also match the layer outputs the student shares with the teacher (same name and
    shape: unstructured and N:M students, not channel-pruned ones), each MSE divided by the
    teacher's variance of that tensor, with a weight that fades to 0 at ``FEATURE_FADE`` of the
    steps, so that the last steps fit the graph outputs alone. The loss curve is the output MSE.
    Off by default: on the zoo dcgan at 50% unstructured it gave 36.30 dB after 300 steps
    against 36.15 dB without (within run-to-run noise), and over 2000 steps at lr 1e-3 it was
    behind (held-out 36.40 dB at step 1200 against 37.74 without).
    ``keep_best``: every ``eval_every`` steps, every ``TAIL_EVERY`` over the last 20%, and at the
    start and the end, the student is
    evaluated on a fixed held-out set (``Batches.holdout``); the weights kept are those of the
    evaluation with the lowest output MSE there, so a noisy tail (or a learning rate too high for
    this student) never returns a worse student than an earlier step, or than the one it started
    from. Each evaluation costs about 1.3 training steps (about 6% of a run in all).
    ``on_step(step, loss)`` is called after every step (progress bars); ``on_eval(step, loss)``
    after every held-out evaluation.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        mirror = Mirror(student)
        if quantize:
            mirror.transforms = {n: fq for n, fq in fake_quant_plan(student, quantize, block_size).items() if n in mirror.weight_names}
        masks = {}
        for name, p in mirror.named_weights():
            zero = p.detach() == 0
            if bool(zero.any()):
                masks[name] = zero
        params = [p for _, p in mirror.named_weights()]
        optimizer = torch.optim.Adam(params, lr=lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(s, steps))
        output_names = mirror.output_names
        extra = matched_features(teacher_proto, student) if features else []
        if extra:  # keep those whose shapes agree (a channel-pruned layer has fewer channels)
            probe = next(Batches(batches.specs, 2, 0, batches.data))
            with torch.no_grad():
                mine = mirror(probe, tuple(extra))[len(output_names):]
            theirs = teacher_session_with(teacher_proto, extra, threads).run(extra, probe)
            extra = [n for n, a, b in zip(extra, mine, theirs) if tuple(a.shape) == b.shape]
        teacher_session = teacher_session_with(teacher_proto, extra, threads)
        fetch = [*output_names, *extra]
        scales: list[float] | None = None
        curve, window = [], []
        every = max(1, steps // CURVE_POINTS)
        start = time.perf_counter()

        def draw():  # the next batch and its teacher outputs, drawn in step order
            feeds = next(batches)
            return feeds, teacher_session.run(fetch, feeds)

        evaluations, best = [], None
        if keep_best:  # the student as it starts counts: training never returns a worse one
            # whole batches: a model whose graph fixes the batch (StyleGAN2's fused conv) runs no other size
            held = batches.holdout(max(1, HOLDOUT_SIZE // batches.batch) * batches.batch)
            chunks = [teacher_session.run(output_names, {k: v[i:i + batches.batch] for k, v in held.items()})
                      for i in range(0, len(next(iter(held.values()))), batches.batch)]
            held_targets = [np.concatenate(parts) for parts in zip(*chunks)]
            best = (holdout_loss(mirror, held, held_targets, batches.batch), 0, [p.detach().clone() for p in params])
            evaluations.append([0, best[0]])
        # the teacher (onnxruntime, which releases the GIL) runs the next batch while torch trains
        pool = ThreadPoolExecutor(1)
        pending = pool.submit(draw)
        try:
            for step in range(1, steps + 1):
                feeds, targets = pending.result()
                if step < steps:
                    pending = pool.submit(draw)
                if scales is None:  # each feature's MSE relative to the teacher's variance of it
                    scales = [1.0 / max(float(np.var(t)), 1e-12) for t in targets[len(output_names):]]
                weight = max(0.0, 1.0 - step / (FEATURE_FADE * steps)) if extra else 0.0
                value = _step(mirror, optimizer, scheduler, masks, feeds, targets, len(output_names), extra, scales, weight)
                if not math.isfinite(value):
                    from gencompress.errors import GencompressError

                    raise GencompressError(f"distillation diverged at step {step} (loss {value}); try a smaller --lr")
                window.append(value)
                if step % every == 0 or step == steps:
                    curve.append([step, float(np.mean(window))])
                    window = []
                if keep_best and (step % eval_every == 0 or step == steps or (step > TAIL * steps and step % TAIL_EVERY == 0)):
                    held_loss = holdout_loss(mirror, held, held_targets, batches.batch)
                    evaluations.append([step, held_loss])
                    if held_loss < best[0]:
                        best = (held_loss, step, [p.detach().clone() for p in params])
                    if on_eval is not None:
                        on_eval(step, held_loss)
                if on_step is not None:
                    on_step(step, value)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        wall = time.perf_counter() - start
        if best is not None and best[1] != steps:
            with torch.no_grad():
                for p, kept in zip(params, best[2]):
                    p.copy_(kept)
        mirror.write_back(student)
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "loss_curve": curve,
        "wall_s": wall,
        "weights": len(mirror.weight_names),
        "masked_weights": sorted(masks),
        "quantize_aware": quantize,
        "fake_quantized": len(mirror.transforms),
        "matched_features": extra,
        "holdout_curve": evaluations,
        "best_step": best[1] if best is not None else steps,
    }


def holdout_loss(mirror, feeds, targets, batch: int) -> float:
    """The output MSE on the held-out set (in chunks of ``batch``), as the training loss measures it."""
    n = len(next(iter(feeds.values())))
    total = 0.0
    with torch.no_grad():
        for lo in range(0, n, batch):
            chunk = {k: v[lo:lo + batch] for k, v in feeds.items()}
            values = mirror(chunk)
            rows = len(next(iter(chunk.values())))
            total += rows * sum(float(torch.mean((o - torch.from_numpy(t[lo:lo + batch])) ** 2)) for o, t in zip(values, targets)) / len(values)
    return total / n


def _step(mirror, optimizer, scheduler, masks, feeds, targets, n_outputs, extra, scales, weight) -> float:
    """One Adam step on the output MSE (+ weighted feature MSEs); masked weights' gradients and
    values held at zero. Returns the output MSE."""
    values = mirror(feeds, tuple(extra) if weight > 0 else ())
    mse = [torch.mean((o - torch.from_numpy(t)) ** 2) for o, t in zip(values, targets)]
    loss = sum(mse[:n_outputs]) / n_outputs
    output_loss = float(loss.detach())
    if weight > 0:
        loss = loss + weight * sum(m * s for m, s in zip(mse[n_outputs:], scales)) / len(extra)
    optimizer.zero_grad(set_to_none=False)
    loss.backward()
    for name, zero in masks.items():
        mirror.parameter(name).grad.masked_fill_(zero, 0.0)
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        for name, zero in masks.items():
            mirror.parameter(name).masked_fill_(zero, 0.0)
    return output_loss
