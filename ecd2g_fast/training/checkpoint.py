"""The one owner of the checkpoint format: atomic save, load, resume check, models from files.

A checkpoint is a ``torch.save`` dict, read back with ``weights_only=True``:

=================  ==========================================================================
``format``         :data:`FORMAT`
``circuit``        the circuit's constructor arguments (``CircuitConfig``; ``HammingConfig`` for
                   the Hamming circuit's models)
``config``         the :class:`~ecd2g_fast.training.TrainConfig`, as JSON
``model_config``   the network's constructor arguments with defaults filled in
``world_size``     processes that trained it; ``amp``: whether bf16 autocast was on
``step``           completed steps; ``losses``: ``(step,)`` float64, the loss of every step
``model``          the last iterate's state dict; ``ema_model``: the weight average's, or None
``optimizer``      the optimiser's state dict
``generator``      the trainer's generator state; ``torch_rng``/``cuda_rng``: the global ones
``metadata``       what the caller attached (the experiment runner: its run id)
``sources``        the data sources' states (callables with ``state_dict()``), else None
``checksum``       SHA-256 of everything above (:func:`tensor_checksum`), verified on load
=================  ==========================================================================

Loading is safe with untrusted files as far as torch allows (``weights_only=True``), verifies the
checksum (a file changed after it was written is refused with a message naming it), checks that
the weights are finite, and builds a network only after checking that no size in its stored
configuration exceeds what the stored weights could describe (a crafted configuration cannot make
it allocate far more than the file holds).
"""

from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .._atomic import atomic_write
from ..circuit import Circuit
from ..distributed import resolve_device
from ..fields import Field
from ..hamming import HammingCircuit
from .config import CIRCUIT_MODELS, MODELS, TrainConfig

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = [
    "FORMAT",
    "atomic_save",
    "load_checkpoint",
    "load_field",
    "load_model",
    "restore",
    "save",
    "tensor_checksum",
]

#: Version of the checkpoint layout (module docstring).
FORMAT = 2


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` of ``obj`` to ``path``, atomically (:func:`ecd2g_fast._atomic.atomic_write`)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def _leaves(obj: object, prefix: str = ""):
    """``(key path, value)`` of every leaf of nested dicts/lists/tuples, in a fixed order."""
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from _leaves(obj[key], f"{prefix}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _leaves(item, f"{prefix}/{i}")
    else:
        yield prefix, obj


def tensor_checksum(state: dict) -> str:
    """SHA-256 (hex) of everything in ``state`` but its ``"checksum"``: every tensor's key path,
    dtype, shape and bytes, and every other value's key path and ``repr``."""
    digest = hashlib.sha256()
    for key, value in _leaves({k: v for k, v in state.items() if k != "checksum"}):
        if isinstance(value, torch.Tensor):
            digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
            t = value.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (Adam's step) too
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            digest.update(f"{key}={value!r}|".encode())
    return digest.hexdigest()


def save(trainer: Trainer, path: Path) -> None:
    """Write ``trainer``'s complete state to ``path`` (atomically), with its checksum."""
    dev = trainer.device
    state = {
        "format": FORMAT,
        "circuit": asdict(trainer.circuit.config),
        "config": trainer.config.to_json(),
        "model_config": trainer.net.config(),
        "world_size": trainer.ctx.world_size,
        "amp": trainer.use_amp,
        "step": trainer.step_count,
        "losses": torch.tensor(trainer.losses, dtype=torch.float64),
        "model": trainer.net.state_dict(),
        "ema_model": None if trainer.ema_net is None else trainer.ema_net.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "generator": trainer.gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
        "metadata": dict(trainer.metadata),
        "sources": [source.state_dict() for source in trainer.sources],
    }
    state["checksum"] = tensor_checksum(state)
    atomic_save(state, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint (tensors on the CPU); the keys are in the module docstring.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a readable checkpoint of this format; a checksum that does not match the
            stored tensors (the file changed after it was written); non-finite weights.
    """
    name = repr(os.fspath(path))
    if Path(path).is_dir():
        raise ValueError(f"{name} is a folder, not a training checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated or foreign file: torch raises several types
        raise ValueError(f"{name} is not a readable training checkpoint: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{name} is not an ecd2g_fast training checkpoint (format {FORMAT})")
    if ckpt.get("checksum") != tensor_checksum(ckpt):
        raise ValueError(f"{name} is corrupted: its contents do not match the checksum written with them")
    for key in ("model", "ema_model"):
        weights = ckpt.get(key) or {}
        bad = [k for k, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise ValueError(f"{name} holds non-finite weights in {key}: {', '.join(bad[:3])}")
    return ckpt


def _with_defaults(model: str, model_config: dict, names) -> dict:
    """``model_config`` with the constructor defaults of ``model``'s class for the arguments among
    ``names`` it lacks: a checkpoint written before an argument existed was made with its default."""
    parameters = inspect.signature(MODELS[model].__init__).parameters
    defaults = {
        name: parameters[name].default
        for name in names
        if name in parameters and parameters[name].default is not inspect.Parameter.empty
    }
    return {**defaults, **model_config}


def restore(trainer: Trainer, path: Path) -> None:
    """Load ``path`` into ``trainer``, after checking that it holds the same run.

    Raises:
        ValueError: another circuit, model or resume setting (the message lists them), or more
            steps than ``trainer.config.steps``; an unreadable file.
    """
    ckpt = load_checkpoint(path)
    saved = {
        "circuit": ckpt["circuit"],
        "model_config": _with_defaults(trainer.config.model, ckpt["model_config"], trainer.net.config()),
        **TrainConfig.from_json(ckpt["config"]).resume_key(),
    }
    wanted = {
        "circuit": asdict(trainer.circuit.config),
        "model_config": trainer.net.config(),
        **trainer.config.resume_key(),
    }
    wanted.pop("model_kwargs"), saved.pop("model_kwargs")  # compared as model_config, defaults filled in
    diff = [k for k in wanted if saved.get(k) != wanted[k]]
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} != {wanted[k]!r}" for k in diff)
        raise ValueError(f"checkpoint_path {os.fspath(path)!r} holds a different run ({details})")
    if int(ckpt["step"]) > trainer.config.steps:
        raise ValueError(
            f"steps={trainer.config.steps} is smaller than the checkpoint's step {int(ckpt['step'])}"
        )
    trainer.step_count = trainer.last_saved = int(ckpt["step"])
    trainer.net.load_state_dict(ckpt["model"])
    if trainer.ema_net is not None:
        trainer.ema_net.load_state_dict(ckpt["ema_model"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    for group in trainer.optimizer.param_groups:
        group["foreach"] = True
    trainer.gen.set_state(ckpt["generator"])
    torch.set_rng_state(ckpt["torch_rng"])
    if trainer.device.type == "cuda" and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng"], trainer.device)
    trainer.losses = ckpt["losses"].tolist()
    for source, state in zip(trainer.sources, ckpt.get("sources") or (None, None)):
        source.load_state_dict(state)


def load_model(path: str | os.PathLike, device: str | torch.device | None = None) -> nn.Module:
    """The trained network stored in a checkpoint, in eval mode on ``device``.

    The model :func:`ecd2g_fast.train` returned: the moving average of the weights when the
    checkpoint holds one, else the last iterate.

    Args:
        path: a checkpoint written by training.
        device: ``"cpu"``, ``"cuda"``, ...; None: CUDA when available, else the CPU.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a checkpoint of this format.
    """
    ckpt = load_checkpoint(path)
    weights = ckpt["ema_model"] if ckpt.get("ema_model") is not None else ckpt["model"]
    _check_sizes(ckpt, weights, path)
    try:
        model = ckpt["config"]["model"]
        hamming = model in CIRCUIT_MODELS[HammingCircuit]
        circuit = (HammingCircuit if hamming else Circuit)(**ckpt["circuit"])
        cls = MODELS[model]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{os.fspath(path)!r} holds an invalid model configuration: {err}") from err
    net = cls(circuit, **ckpt["model_config"])
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(
            f"{os.fspath(path)!r}: the model configuration does not match the stored weights"
        ) from err
    return net.to(resolve_device(device)).eval()


#: Sizes in a checkpoint's configuration up to this many are accepted whatever its weights hold.
_SMALL_SIZE = 2**24


def _sizes(value: object):
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _sizes(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _sizes(item)


def _check_sizes(ckpt: dict, weights: dict, path: str | os.PathLike) -> None:
    """Refuse a configuration whose sizes exceed what its stored weights could describe, before
    anything is built from it (a crafted file must not make the loader allocate terabytes)."""
    stored = sum(t.numel() for t in weights.values())
    sizes = list(_sizes(ckpt.get("model_config"))) + list(_sizes(ckpt.get("circuit")))
    # a list of widths (hidden layers) implies weight matrices of their consecutive products
    widths = [v for v in (ckpt.get("model_config") or {}).values() if isinstance(v, (list, tuple))]
    implied = sum(a * b for w in widths for a, b in zip(list(_sizes(w))[:-1], list(_sizes(w))[1:]))
    if max(sizes, default=0) > max(_SMALL_SIZE, stored) or implied > stored:
        raise ValueError(
            f"{os.fspath(path)!r} describes a model larger than its stored weights ({stored} values): "
            "refusing to build it"
        )


def load_field(path: str | os.PathLike, device: str | torch.device | None = None) -> Field:
    """The :class:`~ecd2g_fast.fields.Field` of :func:`load_model`'s network, ready for sampling."""
    return load_model(path, device).field()
