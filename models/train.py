"""Train a zoo generator on the bundled digits and save its checkpoint (the `train` verb).

Only the exported module's weights are saved (the GAN generator, the VAE decoder), so
``ZOO[name].generator()`` loads them strictly. Training is seeded and deterministic on a
given machine and takes a few minutes at most on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gencompress.errors import GencompressError
from gencompress.models import data, get_zoo_entry
from gencompress.output import progress as progress_bar

# Enough for clean samples from every model; each run stays under ~3 min on 2 cores.
DEFAULT_STEPS = {"dcgan": 3000, "vae": 8000, "rvae": 10000, "cgan": 3000}
BATCH = 64
THREADS = 2  # fixed: CPU kernels may split reductions by thread count


def train(name: str, out=None, seed: int = 0, steps: int | None = None, progress: bool = True) -> dict:
    """Train zoo model ``name`` and write its generator weights to ``out`` (default: the zoo checkpoint)."""
    from gencompress.arguments import MAX_STEPS, in_range, seed_value

    entry = get_zoo_entry(name)
    seed = seed_value(seed)
    steps = DEFAULT_STEPS[name] if steps is None else int(in_range(steps, "--steps", 1, MAX_STEPS))
    out = Path(out) if out is not None else entry.checkpoint
    if out.suffix != ".safetensors":
        raise GencompressError(f"--out {out}: the checkpoint is written as safetensors; name it *.safetensors")
    if not out.parent.is_dir():
        raise GencompressError(f"--out {out}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK) or out.is_dir():  # fail now, not after minutes of training
        raise GencompressError(f"--out {out}: cannot write there")

    with _deterministic(seed):
        start = time.perf_counter()
        bar = progress_bar(range(steps), desc=f"train {name}", unit="step") if progress else range(steps)
        generator, losses = TRAINERS[name](entry.options, bar)
        seconds = time.perf_counter() - start
    _save(generator.state_dict(), out)
    return {
        "model": name,
        "checkpoint": str(out),
        "bytes": out.stat().st_size,
        "seed": seed,
        "steps": steps,
        "seconds": round(seconds, 1),
        "final_losses": {k: round(v, 4) for k, v in losses.items()},
    }


@contextlib.contextmanager
def _deterministic(seed: int):
    """Seed torch, pin the thread count and ask for deterministic kernels; restore afterwards."""
    threads = torch.get_num_threads()
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    rng = torch.get_rng_state()
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.set_rng_state(rng)


def _save(state: dict, out: Path) -> None:
    """Write safetensors atomically: a temp file in the target folder, then rename."""
    from safetensors.torch import save

    from gencompress.onnx_io import atomic_path

    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    with atomic_path(out) as tmp:
        tmp.write_bytes(save(tensors))


def _batch_index(n: int) -> torch.Tensor:
    return torch.randint(n, (BATCH,))


# --- GANs -------------------------------------------------------------------------------


def _train_gan(G, D, real, labels, make_z, bar, conditional: bool, ema_decay: float = 0.999):
    """Non-saturating GAN loss, Adam(2e-4, betas (0.5, 0.999)), one-sided label smoothing (0.9).

    Returns an exponential moving average of the generator's weights, which smooths out the
    step-to-step wobble of GAN training, with its BatchNorm statistics recomputed.
    """

    def g(z, label):
        return G(z, label) if conditional else G(z)

    def d(image, label):
        return D(image, label) if conditional else D(image)

    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ema = copy.deepcopy(G).requires_grad_(False)
    G.train(), D.train()
    n = len(real)
    for step in bar:
        i = _batch_index(n)
        x, y = real[i], labels[i]
        fake_y = torch.randint(10, (BATCH,))
        fake = g(make_z(BATCH), fake_y)

        real_logit, fake_logit = d(x, y), d(fake.detach(), fake_y)
        loss_d = F.binary_cross_entropy_with_logits(real_logit, torch.full_like(real_logit, 0.9)) + F.softplus(fake_logit).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        loss_g = F.softplus(-d(fake, fake_y)).mean()  # -log D(G(z))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        decay = min(ema_decay, (1 + step) / (10 + step))  # short memory early: forget the random init
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), G.parameters()):
                pe.lerp_(p, 1 - decay)
    _recalibrate_batchnorm(ema, lambda: (make_z(256), torch.randint(10, (256,))) if conditional else (make_z(256),))
    return ema, {"d": loss_d.item(), "g": loss_g.item()}


@torch.no_grad()
def _recalibrate_batchnorm(G, make_inputs, batches: int = 20):
    """Replace BatchNorm running stats (an EMA over a moving generator) by exact averages over
    fresh prior samples from the final weights, so eval-mode outputs match train-mode ones."""
    norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    G.train()
    for _ in range(batches):
        G(*make_inputs())
    for m in norms:
        m.momentum = 0.1
    G.eval()


def _dcgan(options, bar):
    from gencompress.models.dcgan import DCGANDiscriminator, DCGANGenerator

    G, D = DCGANGenerator(**options), DCGANDiscriminator()
    nz = options.get("nz", 100)
    return _train_gan(G, D, data.images("tanh"), data.labels(), lambda b: torch.randn(b, nz, 1, 1), bar, False)


def _cgan(options, bar):
    from gencompress.models.cgan import ConditionalDiscriminator, ConditionalGenerator

    G, D = ConditionalGenerator(**options), ConditionalDiscriminator(classes=options.get("classes", 10))
    nz = options.get("nz", 100)
    return _train_gan(G, D, data.images("tanh"), data.labels(), lambda b: torch.randn(b, nz), bar, True)


# --- VAEs -------------------------------------------------------------------------------


def _train_vae(model, real, bar):
    """ELBO with a Bernoulli (BCE) likelihood, summed over pixels, averaged over the batch."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    n = len(real)
    for _ in bar:
        x = real[_batch_index(n)]
        recon, mu, logvar = model(x)
        rec = F.binary_cross_entropy(recon, x, reduction="sum") / len(x)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
        loss = rec + kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.decoder.eval(), {"reconstruction": rec.item(), "kl": kl.item()}


def _vae(options, bar):
    from gencompress.models.vae import VAE

    return _train_vae(VAE(**options), data.images("sigmoid"), bar)


def _rvae(options, bar):
    from gencompress.models.rvae import RecurrentVAE

    return _train_vae(RecurrentVAE(**options), data.sequences(), bar)


TRAINERS = {"dcgan": _dcgan, "vae": _vae, "rvae": _rvae, "cgan": _cgan}
