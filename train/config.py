"""The training config: dataclasses filled from a commented TOML preset (``train/configs/``).

A preset has the tables ``[data]``, ``[features]`` (:class:`edge_detect.features.FeatureConfig`),
``[model]`` (:class:`train.models.ModelConfig`), ``[augment]`` and ``[optim]``. Every key is
optional (the dataclass default applies); an unknown key or a value of the wrong type is a
:class:`~edge_detect.errors.ConfigError` naming it. ``model.num_classes`` and ``model.n_mels``
follow from ``data.labels`` and ``features.n_mels``.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_detect.errors import ConfigError
from edge_detect.features import FeatureConfig
from train.losses import BASELINE_METHODS
from train.models import HEADS, ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "CHECKOUT",
    "AugmentConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "load_config",
]

CHECKOUT = Path(__file__).resolve().parent.parent
"""The source checkout; relative paths in a preset are resolved against it."""

METHODS = (*BASELINE_METHODS, "cluster")
SIGMOID_OK = ("weighted_ce", "ce")
"""Methods with a one-vs-rest form (binary cross-entropy per class, weighted or not)."""


@dataclass(frozen=True)
class DataConfig:
    """Which clips to train on and how to split them."""

    manifests: list[str] = field(
        default_factory=lambda: ["../shared/data/edge_sed_real_v1/manifest.csv"]
    )
    """Manifest CSVs (see train.datasets.load_manifest), relative to the checkout; their clips
    are pooled and split by recording (group) across all of them. (An older config's single
    ``manifest = "..."`` is read as a list of one.)"""
    labels: list[str] = field(
        default_factory=lambda: ["dog_bark", "baby_cry", "gun_shot", "background"]
    )
    """Classes, in output order; clips with other labels are left out (see
    ``background_labels``)."""
    background_label: str = "background"
    """The class that is 'no event' (context of streaming sequences; never alerts)."""
    background_labels: list[str] = field(default_factory=list)
    """Other labels of the manifests that count as background (sounds the model must not
    alert on, e.g. "glass_break" for a model without that class)."""
    exclude_licenses: list[str] = field(default_factory=lambda: ["NONE STATED"])
    """Leave out clips whose license contains any of these strings (case-insensitive)."""
    test_only_licenses: list[str] = field(default_factory=list)
    """Background clips whose license contains one of these strings go to the test part
    (never trained or validated on: sounds the model never heard, for benchmarks only); event
    clips under them are left out. Checked before ``exclude_licenses``."""
    exclude_sources: list[str] = field(default_factory=list)
    """Kinds of sound (:func:`train.datasets.source_kind`, e.g. "wesnoth_music:music") kept
    out of training and validation and put in the test part whole: the leave-one-source-out
    check of what a model does on sounds it never heard."""
    val_fraction: float = 0.15
    """Share of each class's clips (whole recordings) held out for validation."""
    test_fraction: float = 0.15
    """Share held out for the final test (never used to choose anything)."""
    split_seed: int = 0
    """Seed of the split by recording (group)."""
    max_clips_per_class: int = 0
    """Use at most this many training clips per class (0 = all); for quick runs."""
    train_ratio: list[int] = field(default_factory=list)
    """Draw a training subset with exactly these class ratios (in the order of ``labels``), as
    large as the training split allows, e.g. [6, 1, 2, 16]; empty = every training clip."""
    subset_seed: int = 0
    """Seed of the ``train_ratio`` draw (paired seeds: one subset shared by every method)."""
    cache_dir: str = ""
    """Decoded-audio cache (train.cache.FeatureCache); "" = its default (.cache/features)."""


@dataclass(frozen=True)
class AugmentConfig:
    """How streaming training sequences are built: background, event, background."""

    event_max_s: float = 3.0
    """Longest crop of a clip used as the event segment, in s."""
    context_min_s: float = 0.5
    """Shortest background segment before and after the event, in s."""
    context_max_s: float = 2.0
    """Longest background segment before and after the event, in s."""
    active_db: float = 30.0
    """An event frame is 'active' (labelled with the event class) when its energy is within
    this many dB of the clip's loudest frame; other frames of the event are not scored."""
    gain_db: float = 12.0
    """Each segment's gain is drawn uniformly from [-gain_db, +gain_db] dB."""
    mix_prob: float = 0.5
    """Probability of mixing background under an event segment."""
    snr_db_min: float = 0.0
    """Lowest event-to-background ratio of a mixture, over the event's active frames, in dB."""
    snr_db_max: float = 20.0
    """Highest event-to-background ratio of a mixture, in dB."""
    lowpass_prob: float = 0.5
    """Probability of low-pass filtering a whole sequence, whatever its class."""
    lowpass_min_hz: float = 2500.0
    """Lowest random low-pass cut-off, in Hz."""
    lowpass_max_hz: float = 7000.0
    """Highest random low-pass cut-off, in Hz."""
    reverb_prob: float = 0.0
    """Probability of convolving a whole sequence with a synthetic room impulse response
    (exponentially decaying noise), as a room between the sound and the microphone."""
    reverb_rt60_min_s: float = 0.2
    """Shortest reverberation time (60 dB decay) of the synthetic rooms, in s."""
    reverb_rt60_max_s: float = 1.0
    """Longest reverberation time, in s."""
    eq_prob: float = 0.0
    """Probability of a random microphone colouring of a whole sequence: a smooth random gain
    over frequency (a tilt and a few broad peaks or dips)."""
    eq_db: float = 6.0
    """Largest boost or cut of the colouring, in dB."""
    background_seq_per_epoch: int = 0
    """Long event-free sequences per epoch (several background clips joined, a minute-long
    stretch of a stream with nothing to alert on), besides the clips' own sequences."""
    background_seq_s: float = 20.0
    """Length of each long event-free sequence, in s."""
    freq_masks: int = 0
    """SpecAugment: frequency bands masked per training sequence (set to the band's mean)."""
    freq_mask_bands: int = 8
    """Widest frequency mask, in mel bands."""
    time_masks: int = 0
    """SpecAugment: time stretches masked per training sequence."""
    time_mask_ms: float = 200.0
    """Longest time mask, in ms."""


@dataclass(frozen=True)
class OptimConfig:
    """The loss, optimiser and schedule."""

    method: str = "weighted_ce"
    """'cluster' (two stages: centroid embedding loss, then classifier with encoder
    fine-tuning), or a one-stage baseline: 'weighted_ce', 'ce', 'logit_adjusted', 'focal'."""
    epochs: int = 30
    """Epochs in total at most (for 'cluster': embedding stage + classifier stage): the budget."""
    patience: int = 0
    """Early stopping: end a stage after this many epochs without a better validation score
    (0 = run the whole budget). The best epoch is kept either way."""
    embed_epochs: int = 10
    """'cluster' only: epochs of the embedding stage at most (it may stop early, see
    ``patience``); the classifier stage gets the rest of ``epochs``."""
    warmup_steps: int = 20
    """Steps of linear learning-rate warm-up at the start of each stage (then cosine decay)."""
    batch_size: int = 32
    """Sequences per batch."""
    lr: float = 3e-3
    """Peak learning rate (Adam), decayed by a cosine schedule to 5% at the end."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    seed: int = 0
    """Seed of weights, batch order and augmentation."""
    background_per_epoch: int = 0
    """Background clips drawn per epoch as their own sequences (0 = all of them)."""
    embedding_frames: int = 16
    """'cluster': labelled frames per sequence whose embeddings enter the centroid loss."""
    pool_embeddings: bool = False
    """'cluster': average each sequence's sampled frames into one embedding (one per clip, as
    the clip-level method) instead of scoring every frame."""
    refresh_epochs: int = 2
    """'cluster': re-fit the centroids on recent embeddings every this many epochs (warm: from
    the current centroids, so assignments do not reshuffle)."""
    split_epochs: int = 3
    """'cluster': embedding-stage epochs with one centroid per class before each class is split
    into K_c = round(n_c / n_min) clusters by k-means on the warmed encoder (0 = split the
    untrained encoder at the start, as first implemented; a value >= embed_epochs splits at the
    end of the stage)."""
    split: bool = True
    """'cluster': split the classes into clusters at all (False = one centroid per class: the
    ablation of the paper's split)."""
    balance_classes: bool = True
    """'cluster': weight the centroid loss so that every class has the same total weight in a
    batch (as inverse-frequency weights balance the baseline)."""
    cluster_head: str = "centroid"
    """'cluster': the classifier of stage 2: 'centroid' (a cosine head started from the
    normalised centroids, so stage 2 starts from the nearest-centroid rule) or 'linear' (a
    randomly initialised linear layer, as first implemented)."""
    temperature: float = 0.1
    """'cluster': softmax temperature T of the centroid loss."""
    margin: float = 0.1
    """'cluster': margin alpha of the centroid loss (squared distance of unit vectors)."""
    centroid_decay: float = 0.99
    """'cluster': decay of the running centroid sums and counts (1 = exact running mean)."""
    classifier_loss: str = "ce"
    """'cluster': frame loss of the classifier stage, one of the baseline methods ('ce': the
    balancing comes from the clusters alone)."""
    aux_weight: float = 0.5
    """'cluster': weight of the centroid loss kept during the classifier stage."""
    encoder_lr_scale: float = 0.3
    """'cluster': learning rate of the encoder in the classifier stage, relative to lr."""
    focal_gamma: float = 2.0
    """'focal': focusing parameter gamma."""
    logit_tau: float = 1.0
    """'logit_adjusted': scale tau of the log prior."""
    select_by: str = "error"
    """What picks the best epoch (and ends a stage early): 'error' (the mean of the validation
    clip and frame per-class errors) or 'low_fp' (the LSTM's validation miss rate when only 1%
    of other sequences may reach a class's threshold: what a detector that must not cry wolf
    finds; train.evaluate.evaluate_stream)."""
    hard_negative_weight: float = 0.0
    """Weight of the hardest background frames' loss added to the frame loss (0 = off; see
    train.losses.HardNegatives): a detector is judged by the few background frames that score
    highest, which inverse-frequency weights make count least."""
    hard_negative_fraction: float = 0.05
    """Share of a batch's background frames that count as the hardest."""
    hard_negative_from_epoch: int = 0
    """The hardest-background term starts at this epoch and reaches its weight over
    HARD_NEGATIVE_RAMP_EPOCHS epochs (from the start it kept a model from learning what events
    are: every event-like background frame outweighed the events)."""
    event_top_frames: int = 0
    """One-vs-rest models: 0 = every active frame of an event clip is that event; k > 0 = only
    the mean of the event's k most confident frames must fire (train.losses.PooledEvents: clip
    labels are weak, and the quiet stretches between barks are not barks)."""
    class_weight_power: float = 1.0
    """'weighted_ce': the power of the inverse-frequency class weights (1 = the published
    baseline's N / (C n_c); 0.5 = their square root; 0 = none)."""
    mining_every: int = 0
    """Hard-negative mining rounds (train.mining): every this many epochs run the model over all
    training background joined into long streams and draw the clips that made it fire more
    often (0 = never)."""
    mining_threshold: float = 0.5
    """A background clip 'fires' when an event class's smoothed score reaches this on it..."""
    mining_top: float = 1.0
    """...and ranks among this share of the training background clips that score highest for
    that class (1 = the threshold alone; 0.1 = the worst tenth: robust to how the scores are
    scaled)."""
    mining_boost: float = 4.0
    """A clip that fired is drawn 1 + mining_boost times as often as one that did not."""
    num_threads: int = 1
    """torch intra-op threads (the machine is shared)."""
    out_dir: str = "runs/default"
    """Run folder (checkpoints, metrics.json, plots); relative to the checkout."""
    plot_every: int = 5
    """Save a 2-D embedding plot every this many epochs (and at the first and last)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; stored in its checkpoints."""

    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        """Refuse inconsistent or out-of-range settings with one line naming the key."""
        _check_data(self)
        _check_optim_choices(self)
        _check_optim_ranges(self)
        _check_augment(self)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what checkpoints store)."""
        return dataclasses.asdict(self)

    def resolve(self, path: str) -> Path:
        """A path of the preset, absolute (relative ones are taken from the checkout)."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else CHECKOUT / candidate

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from nested tables, refusing unknown keys and wrong types by name."""
        _refuse_unknown(data, {f.name for f in dataclasses.fields(cls)}, "the config")
        features = FeatureConfig.from_dict(dict(data.get("features", {})))
        data_table = dict(data.get("data", {}))
        if "manifest" in data_table:  # configs and checkpoints from before data.manifests
            if "manifests" in data_table:
                raise ConfigError("give data.manifests (a list), not both it and data.manifest")
            manifest = data_table.pop("manifest")
            data_table["manifests"] = [manifest] if isinstance(manifest, str) else manifest
        data_config = _build(DataConfig, data_table, "data")
        model_table = dict(data.get("model", {}))
        model_table.setdefault("num_classes", len(data_config.labels))
        model_table.setdefault("n_mels", features.n_mels)
        return cls(
            data=data_config,
            features=features,
            model=_build(ModelConfig, model_table, "model"),
            augment=_build(AugmentConfig, data.get("augment", {}), "augment"),
            optim=_build(OptimConfig, data.get("optim", {}), "optim"),
        )


def _check_data(config: TrainConfig) -> None:
    """The labels, manifests and model shape agree."""
    labels = config.data.labels
    if not config.data.manifests:
        raise ConfigError("data.manifests is empty; name at least one manifest CSV")
    overlap = set(config.data.background_labels) & set(labels)
    if overlap:
        raise ConfigError(
            f"data.background_labels {sorted(overlap)} are classes of data.labels; a label "
            "is either a class or background"
        )
    if len(set(labels)) != len(labels) or len(labels) < 2:
        raise ConfigError(f"data.labels must be at least 2 distinct names, got {labels}")
    if config.data.background_label not in labels:
        raise ConfigError(
            f"data.background_label {config.data.background_label!r} is not in data.labels {labels}"
        )
    ratio = config.data.train_ratio
    if ratio and (len(ratio) != len(labels) or min(ratio) < 1):
        raise ConfigError(
            f"data.train_ratio needs one positive integer per label {labels}, got {ratio}"
        )
    if config.model.num_classes != len(labels):
        raise ConfigError(
            f"model.num_classes={config.model.num_classes} but data.labels has {len(labels)} "
            "names; leave model.num_classes out (it follows from the labels)"
        )
    if config.model.n_mels != config.features.n_mels:
        raise ConfigError(
            f"model.n_mels={config.model.n_mels} differs from features.n_mels="
            f"{config.features.n_mels}; leave model.n_mels out"
        )


def _check_optim_choices(config: TrainConfig) -> None:
    """Methods, losses, heads and selection rules are known and compatible."""
    if config.optim.method not in METHODS:
        raise ConfigError(f"optim.method must be one of {METHODS}, got {config.optim.method!r}")
    if config.optim.method == "cluster" and not 0 < config.optim.embed_epochs < config.optim.epochs:
        raise ConfigError(
            "optim.embed_epochs must be between 1 and optim.epochs - 1 for 'cluster', got "
            f"{config.optim.embed_epochs} of {config.optim.epochs}"
        )
    if config.optim.classifier_loss not in BASELINE_METHODS:
        raise ConfigError(
            f"optim.classifier_loss must be one of {BASELINE_METHODS}, "
            f"got {config.optim.classifier_loss!r}"
        )
    if config.optim.cluster_head not in HEADS:
        raise ConfigError(
            f"optim.cluster_head must be one of {HEADS}, got {config.optim.cluster_head!r}"
        )
    if config.optim.select_by not in ("error", "low_fp"):
        raise ConfigError(
            f"optim.select_by must be 'error' or 'low_fp', got {config.optim.select_by!r}"
        )


def _check_optim_ranges(config: TrainConfig) -> None:
    """optim's numbers are within their ranges."""
    if not 0.0 < config.optim.hard_negative_fraction <= 1.0:
        raise ConfigError(
            "optim.hard_negative_fraction must be in (0, 1], got "
            f"{config.optim.hard_negative_fraction}"
        )
    if config.optim.event_top_frames < 0 or (
        config.optim.event_top_frames and config.model.output != "sigmoid"
    ):
        raise ConfigError(
            "optim.event_top_frames must be >= 0, and > 0 only with model.output = "
            f"'sigmoid'; got {config.optim.event_top_frames} with {config.model.output!r}"
        )
    if not 0.0 < config.optim.mining_top <= 1.0:
        raise ConfigError(f"optim.mining_top must be in (0, 1], got {config.optim.mining_top}")
    if not 0.0 <= config.optim.class_weight_power <= 1.0:
        raise ConfigError(
            f"optim.class_weight_power must be in [0, 1], got {config.optim.class_weight_power}"
        )
    for name in ("hard_negative_weight", "mining_boost", "hard_negative_from_epoch"):
        if getattr(config.optim, name) < 0:
            raise ConfigError(f"optim.{name} must be >= 0, got {getattr(config.optim, name)}")
    for name in ("patience", "split_epochs", "warmup_steps", "mining_every"):
        if getattr(config.optim, name) < 0:
            raise ConfigError(f"optim.{name} must be >= 0, got {getattr(config.optim, name)}")
    if config.model.output == "sigmoid" and (
        config.optim.method in ("logit_adjusted", "focal")
        or (config.optim.method == "cluster" and config.optim.classifier_loss not in SIGMOID_OK)
    ):
        raise ConfigError(
            f"model.output 'sigmoid' trains with one-vs-rest binary cross-entropy: use "
            f"optim.method (or optim.classifier_loss for 'cluster') in {SIGMOID_OK}"
        )
    for name in ("epochs", "batch_size", "refresh_epochs", "embedding_frames", "plot_every"):
        if getattr(config.optim, name) < 1:
            raise ConfigError(f"optim.{name} must be >= 1, got {getattr(config.optim, name)}")


def _check_augment(config: TrainConfig) -> None:
    """augment's probabilities and intervals are within their ranges."""
    aug = config.augment
    if not 0 < aug.context_min_s <= aug.context_max_s or aug.event_max_s <= 0:
        raise ConfigError(
            "need 0 < augment.context_min_s <= context_max_s and event_max_s > 0, got "
            f"{aug.context_min_s}, {aug.context_max_s}, {aug.event_max_s}"
        )
    for name in ("mix_prob", "lowpass_prob", "reverb_prob", "eq_prob"):
        if not 0.0 <= getattr(aug, name) <= 1.0:
            raise ConfigError(f"augment.{name} must be in [0, 1], got {getattr(aug, name)}")
    if not 0 < aug.lowpass_min_hz <= aug.lowpass_max_hz:
        raise ConfigError("need 0 < augment.lowpass_min_hz <= lowpass_max_hz")
    if not 0 < aug.reverb_rt60_min_s <= aug.reverb_rt60_max_s:
        raise ConfigError("need 0 < augment.reverb_rt60_min_s <= reverb_rt60_max_s")
    if aug.background_seq_s <= 0 or aug.background_seq_per_epoch < 0:
        raise ConfigError(
            "need augment.background_seq_s > 0 and background_seq_per_epoch >= 0, got "
            f"{aug.background_seq_s}, {aug.background_seq_per_epoch}"
        )


def _refuse_unknown(table: Any, known: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; expected some of {sorted(known)}")


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    """The value converted to the annotated type, or ConfigError naming the key."""
    origin = typing.get_origin(annotation)
    ok: bool
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is str:
        ok = isinstance(value, str)
    elif origin is list:
        (item,) = typing.get_args(annotation)
        ok = isinstance(value, list) and all(isinstance(v, item) for v in value)
    elif origin in (typing.Union, types.UnionType):
        ok = False
        for option in typing.get_args(annotation):
            try:
                return _check_type(value, option, key)
            except ConfigError:
                continue
    else:  # pragma: no cover - a field type this loader does not know
        raise ConfigError(f"cannot check key {key!r} of type {annotation}")
    if not ok:
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"key {key!r} must be a {name}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls: Any, table: Any, section: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _refuse_unknown(table, set(fields), f"[{section}]")
    hints = typing.get_type_hints(cls)
    kwargs = {
        key: _check_type(value, hints[key], f"{section}.{key}") for key, value in table.items()
    }
    return cls(**kwargs)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML preset; ``overrides`` ({"optim": {"epochs": 2}}) are merged over it."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read training config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"training config {path} is not valid TOML: {exc}") from None
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    try:
        return TrainConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
