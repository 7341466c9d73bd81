"""Configuration: YAML files checked against a typed schema (dataclasses).

A config is a preset name (``bird``, ``coco``, ``synthetic`` and the paper's variants ``attngan1``,
``attngan2``, ``attndcgan``: files in ``attngan_fast/configs``) or a path to a YAML file; a file may start
from a preset (``inherits: bird``) and change a few values; ``--set section.key=value`` overrides single
values (the value is parsed as YAML).
An unknown key or a value of the wrong type is a ``ConfigError`` that names the key path.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class DataConfig:
    root: str = "data/birds"
    # cub, coco: the release's layouts; folder: your own images + metadata.jsonl/.csv (docs/your-own-data.md)
    layout: Literal["cub", "coco", "folder"] = "cub"
    captions_per_image: int = 10  # folder layout: an upper bound (an image's first N captions are used)
    test_fraction: float = 0.1  # folder layout without a split column: the share of images held out for testing
    words_num: int = 18  # captions longer than this keep a random ordered subset of their words
    # The side of the images the DAMSM is pretrained on. The GAN trains at gan.base_size * 2 **
    # (gan.stages - 1) whatever this says; its DAMSM loss gives the image encoder those images (the
    # Inception-v3 encoder resizes every input to 299 itself).
    image_size: int = 299
    workers: int = 2
    # Decode and crop the training images once and keep them on the training device (uint8); each
    # batch's crop, flip and stage pyramid are tensor ops there, and the loader needs no workers.
    on_device: bool = False


@dataclass
class TextEncoderConfig:
    embedding_dim: int = 300  # word embedding size
    hidden_dim: int = 256  # output features D (both LSTM directions together)
    dropout: float = 0.5


@dataclass
class ImageEncoderConfig:
    kind: Literal["inception", "compact"] = "inception"
    inception_weights: Optional[str] = None  # local torchvision Inception-v3 state_dict; none = random
    compact_width: int = 64  # channels of the compact CNN's first block
    # The Inception backbone's BatchNorm during DAMSM pretraining. ``release``: as the release trained it,
    # the frozen backbone is put in train() mode with the rest, so BatchNorm normalises with batch
    # statistics and its running statistics drift to the dataset (they are saved and used afterwards);
    # ``frozen``: the backbone stays in eval mode with ImageNet's statistics. The compact encoder has none.
    backbone_bn: Literal["release", "frozen"] = "release"


@dataclass
class DamsmConfig:
    out_dir: str = "runs/damsm"
    gamma1: float = 4.0
    gamma2: float = 5.0
    gamma3: float = 10.0
    batch_size: int = 48
    epochs: int = 600
    lr: float = 2e-3
    betas: tuple[float, float] = (0.5, 0.999)
    lr_decay: float = 0.98  # per epoch, while lr > lr / min_lr_divisor
    min_lr_divisor: float = 10.0
    rnn_grad_clip: float = 0.25
    max_minutes: Optional[float] = None  # stop (with a checkpoint) after this much training time
    max_steps: Optional[int] = None  # stop (with a checkpoint) after this many optimizer steps in all
    snapshot_every: int = 50  # epochs between kept checkpoints (the latest is always kept)
    # Epochs whose checkpoint is kept whatever snapshot_every says: the release trained its GANs against
    # the DAMSM of epoch 200 (CUB) and 100 (COCO).
    snapshot_epochs: tuple[int, ...] = ()
    # Epochs between evaluations (validation losses, retrieval, and the pictures, which are drawn at
    # evaluated epochs only); the last epoch and a stop are always evaluated.
    eval_every: int = 1
    pictures_every: int = 1  # epochs between attention-map pictures
    # Word-level score R[i, j]: ``released`` log Σ exp(γ2·cos) (what γ3 = 10 was tuned with) or the
    # paper's ``paper`` (1/γ2)·log Σ exp(γ2·cos) (docs/design.md §2.1).
    score_form: Literal["released", "paper"] = "released"


@dataclass
class GanConfig:
    out_dir: str = "runs/attngan"
    damsm: Optional[str] = None  # DAMSM checkpoint (frozen encoders, vocabulary); --damsm
    stages: int = 3  # 1-3: images of base_size * 2^i (AttnGAN2 = 3 stages)
    base_size: int = 64
    variant: Literal["attngan", "attndcgan"] = "attngan"
    gf_dim: int = 32
    df_dim: int = 64
    z_dim: int = 100
    c_dim: int = 100
    r_num: int = 2
    lambda_damsm: float = 5.0  # weight of the DAMSM loss on the last stage
    words_num: Optional[int] = None  # caption length cap for GAN training (None: data.words_num)
    batch_size: int = 20
    epochs: int = 600
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    ema_decay: float = 0.999
    legacy_mask: bool = False  # the released code's F_attn mask layout (for released generators)
    sync_bn: bool = False  # SyncBatchNorm across GPUs under torchrun
    samples_every: int = 500  # steps between sample grids (EMA generator, fixed noise and captions)
    snapshot_every: int = 25  # epochs between kept checkpoints (latest.pt is written every epoch)
    max_minutes: Optional[float] = None
    max_steps: Optional[int] = None
    # Evaluation hook (the paper's Figure 3 curves): every eval_every epochs the EMA generator draws a
    # fixed subset of eval_images test (image, caption) pairs with fixed noise; R-precision (and IS and FID
    # with torch-fidelity's Inception weights file eval_inception_weights; FID against every test image,
    # whose statistics are cached beside the data) go to log.jsonl and eval_curve.png.
    eval_every: Optional[int] = None
    eval_images: int = 1000
    eval_inception_weights: Optional[str] = None

    @property
    def image_size(self) -> int:
        return self.base_size * 2 ** (self.stages - 1)


@dataclass
class RuntimeConfig:
    seed: int = 100
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["off", "bf16", "fp16"] = "off"
    compile: bool = False
    # CUDA graphs for the compiled parts (torch.compile's "reduce-overhead" mode): each compiled graph
    # is one replay instead of a launch per kernel. Needs compile and a CUDA device.
    cuda_graphs: bool = False
    # The attention ops' implementation; "sdpa" runs the generator's word attention through PyTorch's
    # scaled_dot_product_attention and the DAMSM score as "auto" (attngan_fast.kernels._runtime.IMPLS).
    impl: Literal["auto", "triton", "reference", "sdpa"] = "auto"
    channels_last: bool = False
    # Autotune the fused kernels' launch configurations on CUDA; false pins the fixed defaults, so that
    # separate processes (a resumed run) round identically.
    autotune: bool = True
    log_every: int = 50  # steps between JSONL log lines
    tensorboard: bool = False  # also write the log's rows and the pictures to OUT/tensorboard/ (--tensorboard)
    eval_batches: Optional[int] = None  # cap on validation batches per epoch (None = whole test split)


@dataclass
class Config:
    preset: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    damsm: DamsmConfig = field(default_factory=DamsmConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))


def _to_plain(x):
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, path: str):
    """``value`` checked (and gently converted: int -> float, list -> tuple) against annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if origin is Literal:
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args):
            # YAML 1.1 reads a bare off/on as a boolean; the literal meant is the word.
            value = {False: "off", True: "on"}[value]
        if value not in args:
            raise ConfigError(f"{path} must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{path} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, (str, float)) and not isinstance(value, bool):
            # 1e3 (a string to PyYAML) and 1000.0 are integers too; 2.5 is not
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if number.is_integer():
                return int(number)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads 1e-3 and 2E-4 (no dot) as strings; a number field takes every
            # spelling Python's float() takes, from --set and from files alike.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{path} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    raise ConfigError(f"{path}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls, data, path: str = ""):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)  # a YAML key may be a number
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)}"
                          f"{where}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for k, v in data.items():
        where = f"{path}.{k}" if path else k
        kwargs[k] = _check_range(_coerce(v, hints[k], where), where)
    return cls(**kwargs)


# Values a run cannot use (a batch of 0, a log every 0 steps) are refused when the config is read, in
# one line, instead of failing deep inside the loader or the loop.
_LOW = {
    "data.captions_per_image": 1, "data.words_num": 1, "data.image_size": 8, "data.workers": 0,
    "text_encoder.embedding_dim": 1, "text_encoder.hidden_dim": 2, "image_encoder.compact_width": 1,
    "damsm.batch_size": 1, "damsm.epochs": 0, "damsm.max_steps": 0, "damsm.snapshot_every": 1,
    "damsm.pictures_every": 1, "damsm.eval_every": 1,
    "gan.stages": 1, "gan.base_size": 8, "gan.gf_dim": 1, "gan.df_dim": 1, "gan.z_dim": 1, "gan.c_dim": 1,
    "gan.r_num": 0, "gan.words_num": 1, "gan.batch_size": 2, "gan.epochs": 0, "gan.samples_every": 1,
    "gan.snapshot_every": 1, "gan.max_steps": 0, "gan.lambda_damsm": 0,
    "runtime.log_every": 1, "runtime.eval_batches": 1, "runtime.seed": 0,
}
_HIGH = {"gan.stages": 3, "runtime.seed": 2**63 - 1}  # torch's generators take a signed 64-bit seed
_POSITIVE = {"damsm.gamma1", "damsm.gamma2", "damsm.gamma3", "damsm.lr", "damsm.lr_decay", "damsm.min_lr_divisor",
             "damsm.rnn_grad_clip", "damsm.max_minutes", "gan.lr_g", "gan.lr_d", "gan.max_minutes"}
_WHY = {"gan.batch_size": " (the mismatched-caption term pairs image i with caption i+1)",
        "text_encoder.hidden_dim": " (the two LSTM directions share it)"}


_OPEN_UNIT = {"data.test_fraction"}  # strictly between 0 and 1
# Rates and probabilities: a decay above 1 grows without bound (NaN within a few dozen steps), an EMA
# decay of 1 never moves from the initial weights, a dropout of 1 drops everything; Adam's betas lie
# in [0, 1).
_UNIT = {"gan.ema_decay": (0.0, 1.0, False), "damsm.lr_decay": (0.0, 1.0, True),
         "text_encoder.dropout": (0.0, 1.0, False)}  # path: (low, high, high allowed); low is allowed


def _check_range(value, path: str):
    if path.endswith(".betas") and not all(0 <= b < 1 for b in value):  # NaN fails too
        raise ConfigError(f"{path} must be two numbers in [0, 1) (Adam's), got {list(value)}")
    if value is None or isinstance(value, (bool, str, tuple)):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path} must be a finite number, got {value}")
    if path in _UNIT:
        low, high, high_allowed = _UNIT[path]
        if not (low <= value <= high if high_allowed else low <= value < high):
            raise ConfigError(f"{path} must be in [{low:g}, {high:g}{']' if high_allowed else ')'}, got {value}")
    if path == "damsm.gamma1":
        from .kernels._checks import MAX_GAMMA1  # the DAMSM ops' own bound: refused here, before any work

        if value > MAX_GAMMA1:
            raise ConfigError(f"{path} must be at most {MAX_GAMMA1:g}, got {value}")
    if path == "gan.base_size" and value & (value - 1):
        raise ConfigError(f"{path} must be a power of two (8, 16, 32, 64, ...), got {value}")
    if path in _OPEN_UNIT and not 0 < value < 1:  # NaN fails too
        raise ConfigError(f"{path} must be between 0 and 1 (exclusive), got {value}")
    why = _WHY.get(path, "")
    if path in _LOW and not value >= _LOW[path]:  # NaN fails too
        raise ConfigError(f"{path} must be at least {_LOW[path]}, got {value}{why}")
    if path in _HIGH and value > _HIGH[path]:
        raise ConfigError(f"{path} must be at most {_HIGH[path]}, got {value}{why}")
    if path in _POSITIVE and not value > 0:  # NaN fails too
        raise ConfigError(f"{path} must be above 0, got {value}")
    return value


def _merge(base: dict, update: dict, path: str = "") -> dict:
    out = dict(base)
    for key, value in update.items():
        where = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, where)
        elif isinstance(value, dict) and out.get(key) is not None and _section_at(where.split(".")) is not None:
            # a section that is not a mapping must not be replaced unseen by one setting of it (a setting
            # given a mapping is left to the type check, which names it as the setting it is)
            raise ConfigError(f"{where} must be a mapping of keys to values, got {out[key]!r}")
        else:
            out[key] = value
    return out


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message in one line (it spans several: the context and a caret drawing)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(err)}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}): "
                          "save it as UTF-8") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _read_with_base(path: Path, seen: tuple[str, ...] = ()) -> dict:
    """A config file, on top of the preset its ``inherits: NAME`` key names (if any): the paper's
    variants are a few values changed from the bird preset, and say only those."""
    data = _read_yaml(path)
    base = data.pop("inherits", None)
    if base is None:
        return data
    if not isinstance(base, str) or base not in preset_names():
        raise ConfigError(f"{path}: inherits must name one of the presets {preset_names()}, got {base!r}")
    if base in seen:
        raise ConfigError(f"{path}: presets inherit from each other in a circle ({' -> '.join(seen + (base,))})")
    return _merge(_read_with_base(PRESET_DIR / f"{base}.yaml", seen + (base,)), data)


def _section_at(parts: list[str]):
    """The dataclass of the config section ``parts`` names (["gan"]), or None when it names a value or
    nothing known (an unknown key is reported when the config is built)."""
    cls = Config
    for part in parts:
        hints = typing.get_type_hints(cls)
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            return None
        cls = hints[part]
    return cls


def parse_override(text: str) -> dict:
    """``"damsm.lr=0.001"`` -> ``{"damsm": {"lr": 0.001}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set takes section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set takes section.key=value, got {text!r}")
    section = _section_at(parts)
    if section is not None:  # a value for a whole section would replace every setting in it
        names = [f.name for f in dataclasses.fields(section)]
        raise ConfigError(f"--set {key.strip()}: {key.strip()} is a section of settings ({', '.join(names)}): "
                          f"set one of them, e.g. --set {key.strip()}.{names[0]}=...")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {_yaml_problem(err)}") from None
    out: dict = value
    for part in reversed(parts):
        out = {part: out}
    return out


def load_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A preset name or YAML path (None = defaults), then ``section.key=value`` overrides."""
    data: dict = {}
    if source is not None:
        path = Path(source)
        if path.suffix in (".yaml", ".yml") or path.exists():
            if not path.is_file():
                raise ConfigError(f"config file {path} " + ("is a folder, not a YAML file" if path.is_dir() else
                                                            "does not exist"))
            data = _read_with_base(path)
        elif str(source) in preset_names():
            data = _read_with_base(PRESET_DIR / f"{source}.yaml", (str(source),))
        else:
            raise ConfigError(f"unknown config {str(source)!r}: give a YAML file or one of the presets {preset_names()}")
    for text in overrides:
        data = _merge(data, parse_override(text))
    return _build(Config, data)


def _prune_unknown(cls, data: dict, path: str, dropped: list[str]) -> dict:
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in hints:
            dropped.append(where)
        elif dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            out[key] = _prune_unknown(hints[key], value, where, dropped)
        else:
            out[key] = value
    return out


def config_from_dict(data: dict, *, strict: bool = True) -> Config:
    """Rebuild a config saved with ``Config.to_dict``. ``strict=False`` (configs stored in checkpoints
    of another version) drops keys this version does not know, with a warning; types are checked."""
    if not strict:
        dropped: list[str] = []
        data = _prune_unknown(Config, data, "", dropped)
        if dropped:
            import warnings

            warnings.warn(f"ignoring config keys this version does not know: {', '.join(dropped)}", stacklevel=2)
    return _build(Config, data)


def config_differences(old: dict, new: dict, prefix: str = "") -> dict[str, list]:
    """{"section.key": [old value, new value]} for every value that differs between two ``to_dict``
    configs (a key missing on one side counts as None there)."""
    out: dict[str, list] = {}
    for key in list(old) + [k for k in new if k not in old]:
        a, b, path = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(config_differences(a, b, f"{path}."))
        elif a != b:
            out[path] = [a, b]
    return out
