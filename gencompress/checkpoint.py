"""Load weights into a module from a state_dict file or safetensors, never executing code."""

from __future__ import annotations

import warnings
from pathlib import Path

from gencompress.errors import GencompressError


def read_state_dict(path) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise GencompressError(f"checkpoint {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise GencompressError(f"checkpoint {path}: not a readable safetensors file ({type(e).__name__})") from None
    try:
        with warnings.catch_warnings():  # torch's unpickler warns (a second stderr line) about a file it then refuses
            warnings.simplefilter("ignore")
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if first.startswith("Weights only load failed"):  # torch's advice (weights_only=False) would run the file's code
            first = "it holds Python objects, not only tensors; save a state_dict of tensors or safetensors"
        raise GencompressError(f"checkpoint {path}: cannot be loaded as weights ({first[:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise GencompressError(f"checkpoint {path}: expected a state_dict (a mapping of names to tensors)")
    return state


def load_checkpoint_into(module, path) -> None:
    """Load a checkpoint strictly; a mismatch names the missing, unexpected and misshapen keys."""
    state = read_state_dict(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    import torch

    not_tensors = [k for k in own if k in state and not isinstance(state[k], torch.Tensor)]
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and k not in not_tensors and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    # a float weight loaded from complex, bool or integer values would be cast silently
    mistyped = [f"{k} {state[k].dtype} vs {own[k].dtype}" for k in own if k in state and k not in not_tensors
                and own[k].is_floating_point() and not state[k].is_floating_point()]
    nonfinite = [k for k in own if k in state and k not in not_tensors and state[k].is_floating_point()
                 and not bool(torch.isfinite(state[k]).all())]
    if not_tensors:
        raise GencompressError(f"checkpoint {path}: {_few([f'{k} is a {type(state[k]).__name__}' for k in not_tensors])}, not a tensor")
    if mistyped:
        raise GencompressError(f"checkpoint {path} does not match {type(module).__name__}: dtype mismatch (checkpoint vs model): {_few(mistyped)}")
    if nonfinite:
        raise GencompressError(f"checkpoint {path}: NaN or Inf in {_few(nonfinite)}")
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if misshapen:
            parts.append(f"shape mismatch (checkpoint vs model): {_few(misshapen)}")
        raise GencompressError(f"checkpoint {path} does not match {type(module).__name__}: " + "; ".join(parts))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:  # what the checks above do not foresee (a module's own load hooks)
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
        raise GencompressError(f"checkpoint {path} does not fit {type(module).__name__}: {first[:200]}") from None


def _few(items, limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
