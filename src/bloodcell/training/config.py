"""The training configuration: one typed dataclass, YAML recipes and overrides.

A run is fully described by a :class:`TrainConfig`. It is built from, in order
of precedence (last wins):

1. the dataclass defaults;
2. a recipe (``--recipe NAME`` for a shipped ``bloodcell/configs/NAME.yaml``,
   or ``--config PATH`` for any YAML file);
3. overrides from the command line, either ``--set key=value`` or the matching
   flag (``--lr 3e-4``, ``--augment.hflip true``).

Keys are flat except ``augment.*``. Unknown keys raise :class:`ConfigError`
with a "did you mean"; values are checked against their type and range and
errors say what was expected, what arrived and how to fix it. The resolved
config (every "auto" decided) is saved beside the model as ``config.yaml``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from bloodcell.core.errors import ConfigError
from bloodcell.core.files import atomic_write_bytes
from bloodcell.training.values import BadValue, check_range, to_bool, to_bool_or_path, to_float, to_int, to_str

#: Metrics early stopping and best-model selection can watch; loss is minimised, the others maximised.
MONITORS = ("val_loss", "val_acc", "val_macro_f1")


def _f(default, help: str, choices=None, lo=None, hi=None, lo_open=False, example=None):
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "example": example}
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class AugmentConfig:
    """Random training-time augmentation, applied per image to ``uint8`` tensors."""

    hflip: bool = _f(False, "random horizontal flip (p=0.5)")
    vflip: bool = _f(False, "random vertical flip (p=0.5)")
    rot90: bool = _f(False, "random rotation by a multiple of 90 degrees")
    rotate: float = _f(0.0, "random rotation by up to this many degrees (corners filled with the border colour)", lo=0, hi=180)
    resized_crop: float = _f(1.0, "random resized crop keeping at least this fraction of the area (1 = off)",
                             lo=0.05, hi=1.0, lo_open=False)
    brightness: float = _f(0.0, "colour jitter: brightness strength", lo=0, hi=1)
    contrast: float = _f(0.0, "colour jitter: contrast strength", lo=0, hi=1)
    saturation: float = _f(0.0, "colour jitter: saturation strength", lo=0, hi=1)
    hue: float = _f(0.0, "colour jitter: hue shift (fraction of the hue circle)", lo=0, hi=0.5)
    stain: float = _f(0.0, "stain jitter in HED colour-deconvolution space: scale 1±s and shift ±s per stain", lo=0, hi=0.5)
    stain_scale: float = _f(0.0, "stain amount: each stain's optical density times exp(U(-a, a)) (0.7: x0.5 to x2)",
                            lo=0, hi=1.5)
    zoom_out: float = _f(1.0, "smallest magnification, drawn log-uniform up to zoom_in "
                              "(0.5: the cell at half its size, the field around mirrored in; 1 = off)", lo=0.25, hi=1.0)
    zoom_in: float = _f(1.0, "largest magnification (2: the central half of the input fills it; 1 = off)", lo=1.0, hi=4.0)
    translate: float = _f(0.0, "move the content by up to this fraction of the side along each axis "
                               "(the field mirrored into the gap)", lo=0, hi=0.5)
    white_balance: float = _f(0.0, "white balance / colour cast: each channel times U(1-w, 1+w)", lo=0, hi=0.9)
    grey: float = _f(0.0, "probability of a grey image (luma in all three channels)", lo=0, hi=1)
    blur: float = _f(0.0, "defocus: Gaussian blur with sigma U(0, b) pixels of the model input", lo=0, hi=8)
    noise: float = _f(0.0, "sensor noise: Gaussian with standard deviation U(0, n) on the 0-1 scale", lo=0, hi=0.5)
    low_resolution: float = _f(1.0, "down-sample by a factor U(r, 1) and back up (1 = off)", lo=0.1, hi=1.0)
    jpeg: float = _f(0.0, "JPEG-like 8x8 DCT quantisation, step of the DC coefficient U(0, q) on the 0-1 scale "
                          "(0.1 ~ quality 30, 0.3 ~ quality 10)", lo=0, hi=1)
    lab_shift_p: float = _f(1.0, "share of images that get the other-lab options above (magnification, position, "
                                 "hue, saturation, stain amount, white balance, grey, blur, noise, resolution, JPEG); "
                                 "the rest keep their own lab's look", lo=0, hi=1)

    def any(self) -> bool:
        return self != AugmentConfig()


@dataclass
class TrainConfig:
    """Everything that defines a training run (see ``bloodcell train --help``)."""

    # what to train
    model: str = _f("enhanced_cnn", "architecture name (see `bloodcell models`)", example="efficientnet_lite0")
    pretrained: bool | str = _f(False, "start from ImageNet weights: true, false, or a weight file path")
    init: str | None = _f(None, "start from an existing bloodcell model folder ('default' = the packaged model)")
    data: str | None = _f(None, "dataset folder, .npz, or split manifest CSV with train/val rows")
    # preprocessing
    image_size: int | None = _f(None, "input side in pixels (null = the architecture's default)", lo=8, hi=2048, example=128)
    crop_fraction: float = _f(1.0, "centred square crop, as a fraction of the shorter side", lo=0.1, hi=1.0)
    framing: str = _f("centre", "input crop: centre (the centred square) or cell (around the located cell, scaled so "
                      "it fills the share measured on the training images; see `bloodcell predict`)",
                      choices=("centre", "cell"))
    normalization: str = _f("dataset", "pixel scaling: dataset (fixed mean/std) or image (each image standardised "
                            "per channel, which undoes a lab's colour cast and stain intensity)",
                            choices=("dataset", "image"))
    # optimisation
    epochs: int = _f(50, "maximum number of epochs", lo=1, hi=100000, example=10)
    batch_size: int = _f(16, "images per optimisation step (per process when distributed)", lo=1, hi=65536, example=32)
    eval_batch_size: int = _f(64, "images per evaluation batch", lo=1, hi=65536)
    optimizer: str = _f("adam", "optimiser", choices=("adam", "adamw"))
    lr: float = _f(1e-3, "peak learning rate", lo=0, hi=10, lo_open=True, example=3e-4)
    weight_decay: float = _f(0.0, "weight decay (decoupled for adamw)", lo=0, hi=1)
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing", lo=0, hi=0.5)
    schedule: str = _f("constant", "learning-rate schedule", choices=("constant", "cosine", "onecycle"))
    warmup_epochs: float = _f(0.0, "linear warm-up length in epochs (onecycle: the rising phase)", lo=0, hi=1000)
    min_lr: float = _f(0.0, "final learning rate of the cosine schedule", lo=0, hi=10)
    grad_clip: float = _f(0.0, "clip the gradient norm to this value (0 = off)", lo=0)
    class_weights: str = _f("none", "loss weights per class: none, or balanced (inverse class frequency)",
                            choices=("none", "balanced"))
    # validation and stopping
    monitor: str = _f("val_loss", "validation metric for early stopping and the best model", choices=MONITORS)
    patience: int = _f(10, "stop after this many epochs without improvement (0 = never stop early)", lo=0)
    min_delta: float = _f(0.0, "smallest change of the monitored metric that counts as improvement", lo=0)
    val_fraction: float = _f(0.15, "validation share when the data has no val split (stratified, seeded)", lo=0.01, hi=0.9)
    max_train_samples: int = _f(0, "use a stratified subset of this many training images (0 = all)", lo=0)
    max_val_samples: int = _f(0, "use a stratified subset of this many validation images (0 = all)", lo=0)
    augment: AugmentConfig = _f(AugmentConfig(), "training augmentation")
    # distillation
    teacher: str | None = _f(None, "a model folder ('default' = the packaged model) whose probabilities on the training "
                             "images the network also learns (knowledge distillation)")
    teacher_tta: bool = _f(True, "the teacher's probabilities averaged over the 8 flips and rotations")
    distill_weight: float = _f(0.5, "share of the loss that matches the teacher (the rest: the labels)", lo=0, hi=1,
                               lo_open=True)
    distill_temperature: float = _f(2.0, "temperature both sides of the teacher match are softened by", lo=0.1, hi=20)
    # reproducibility and hardware
    seed: int = _f(0, "random seed (initialisation, split, order, augmentation, dropout)", lo=0, hi=2**31 - 1)
    device: str = _f("auto", "auto, cpu, cuda or cuda:N", example="cpu")
    precision: str = _f("auto", "auto, fp32, bf16 (autocast) or fp16 (CUDA AMP)", choices=("auto", "fp32", "bf16", "fp16"))
    channels_last: str = _f("auto", "channels-last memory format: auto, on, off", choices=("auto", "on", "off"))
    threads: int = _f(0, "CPU threads per process (0 = all cores, divided among processes)", lo=0, hi=1024)
    deterministic: bool = _f(True, "use deterministic algorithms (identical reruns on the same machine)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- keys and values


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _hints(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def config_keys() -> list[str]:
    """Every settable key, flattened (``augment.hflip``...)."""
    keys = []
    for name in _fields(TrainConfig):
        if name == "augment":
            keys += [f"augment.{k}" for k in _fields(AugmentConfig)]
        else:
            keys.append(name)
    return keys


def key_help(key: str) -> tuple[str, object]:
    """The help text and default of a flattened key."""
    cls, name = _owner(key)
    f = _fields(cls)[name]
    default = f.default if f.default is not dataclasses.MISSING else None
    return f.metadata.get("help", ""), default


def key_choices(key: str) -> tuple[str, ...] | None:
    """The allowed values of a flattened key, when it takes one of a fixed set."""
    cls, name = _owner(key)
    return _fields(cls)[name].metadata.get("choices")


def _owner(key: str):
    if key.startswith("augment."):
        return AugmentConfig, key.split(".", 1)[1]
    return TrainConfig, key


def _unknown_key(key: str, source: str) -> ConfigError:
    keys = config_keys()
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if not close:
        tail = key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] == tail] or difflib.get_close_matches(
            tail, keys, n=3, cutoff=0.6
        )
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(
        f"Unknown config key {key!r} ({source}).{hint} Valid keys: {', '.join(keys)}."
    )


def _coerce(key: str, value, source: str):
    """``value`` as the type of ``key``, checked against its range and choices."""
    cls, name = _owner(key)
    f = _fields(cls)[name]
    hint = _hints(cls)[name]
    bad = BadValue(key, value, source, f)
    args = typing.get_args(hint)
    if type(None) in args and (value is None or (isinstance(value, str)
                                                 and value.strip().lower() in ("null", "none", "~", ""))):
        return None
    base = [a for a in args if a is not type(None)] if args else [hint]
    if set(base) == {bool, str}:  # pretrained: bool or a path
        return to_bool_or_path(value, bad)
    kind = base[0]
    if kind is bool:
        return to_bool(value, bad)
    if kind is int:
        out = to_int(value, bad)
    elif kind is float:
        out = to_float(value, bad)
    elif kind is str:
        out = to_str(value, bad, name, f.metadata.get("choices"))
    else:  # pragma: no cover - guarded by the dataclass definition
        raise TypeError(hint)
    return check_range(out, f.metadata, bad)


# ---------------------------------------------------------------- building configs


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def apply_overrides(cfg: TrainConfig, overrides: dict, source: str) -> TrainConfig:
    """Return a copy of ``cfg`` with flattened ``overrides`` applied and validated."""
    cfg = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment))
    valid = set(config_keys())
    for key, value in overrides.items():
        key = str(key).replace("-", "_")
        if key == "augment" and isinstance(value, dict):
            cfg = apply_overrides(cfg, {f"augment.{k}": v for k, v in value.items()}, source)
            continue
        if key not in valid:
            raise _unknown_key(key, source)
        value = _coerce(key, value, source)
        if key.startswith("augment."):
            setattr(cfg.augment, key.split(".", 1)[1], value)
        else:
            setattr(cfg, key, value)
    return cfg


def recipe_names() -> list[str]:
    """Names of the recipes shipped in ``bloodcell/configs``."""
    folder = resources.files("bloodcell") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_hint(name: str) -> str:
    """What to say of a name that is not a shipped recipe: the closest ones, then all of them."""
    names = recipe_names()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"Did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}Recipes: {', '.join(names)}"


def recipe_path(name: str) -> Path:
    """The file of a shipped recipe; unknown names get a "did you mean"."""
    if name not in recipe_names():
        raise ConfigError(f"Unknown recipe {name!r}. {recipe_hint(name)} (or pass --config PATH).")
    return Path(str(resources.files("bloodcell") / "configs" / f"{name}.yaml"))


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]}). Fix the syntax.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys to values, got {type(data).__name__}.")
    data.pop("description", None)
    return data


def load_config(recipe: str | None = None, config: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from a recipe name or file plus overrides.

    Parameters
    ----------
    recipe : str, optional
        Name of a shipped recipe (``bloodcell train --list-recipes``).
    config : path, optional
        A YAML file with config keys (may not be combined with ``recipe``).
    overrides : dict, optional
        Flattened ``key -> value`` pairs (strings are parsed as YAML scalars).

    Raises
    ------
    ConfigError
        On unknown keys (with a suggestion) or invalid values.
    """
    if recipe and config:
        raise ConfigError("Give either --recipe NAME or --config PATH, not both.")
    cfg = TrainConfig()
    if recipe or config:
        source = f"recipe {recipe}" if recipe else f"file {config}"
        data = read_yaml(recipe_path(recipe) if recipe else config)
        if "members" in data:
            raise ConfigError(
                f"{source} is an ensemble recipe (members: {data['members']}), not one model's config. "
                f"Train it with `bloodcell train {'--recipe ' + recipe if recipe else '--config ' + str(config)}`, "
                "which trains every member and combines them."
            )
        cfg = apply_overrides(cfg, flatten(data), source)
    if overrides:
        cfg = apply_overrides(cfg, overrides, "command line")
    return cfg


def parse_set(items: list[str]) -> dict:
    """``["lr=3e-4", "augment.hflip=true"]`` -> flattened overrides (values parsed as YAML)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}. Example: --set lr=3e-4.")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_scalar(value)
    return out


def parse_scalar(text: str):
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def config_from_dict(d: dict, source: str) -> TrainConfig:
    """Rebuild a config saved by a run (``config.yaml`` or ``model.json``'s ``config``)."""
    return apply_overrides(TrainConfig(), flatten(d), source)


def save_config(cfg: TrainConfig, folder: Path) -> None:
    atomic_write_bytes(Path(folder) / "config.yaml", cfg.to_yaml().encode())


def recipe_description(name: str) -> str:
    """The first line of a shipped recipe's ``description`` ("" when it has none or cannot be read)."""
    try:
        data = yaml.safe_load(recipe_path(name).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    text = str(data.get("description", "")).strip() if isinstance(data, dict) else ""
    return text.splitlines()[0] if text else ""
