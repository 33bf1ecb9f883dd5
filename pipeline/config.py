"""Typed, frozen view of params.yaml: the one home of every tunable.

Entry points call `load_params()` once and pass sections down; core code never opens the file.
Unknown or misspelt keys are errors, so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """params.yaml is missing, malformed or holds a value of the wrong type."""


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Paths(Section):
    raw: str
    feedback: str
    interim: str
    processed: str
    features: str
    model: str
    reports: str
    cache: str


class IngestParams(Section):
    min_age: int = Field(ge=0)
    max_age: int = Field(gt=0)
    max_publication_year: int = Field(gt=1000)

    @model_validator(mode="after")
    def _ages_ordered(self) -> IngestParams:
        if self.min_age > self.max_age:
            raise ValueError("min_age must not exceed max_age")
        return self


class PreprocessParams(Section):
    min_explicit_rating: int = Field(ge=1, le=10)
    user_core: int = Field(ge=1)
    item_core: int = Field(ge=1)
    test_fraction: float = Field(gt=0, lt=1)
    validation_fraction: float = Field(ge=0, lt=1)
    seed: int


class FeatureParams(Section):
    age_bucket_edges: tuple[int, ...]
    top_countries: int = Field(ge=1)
    min_region_users: int = Field(ge=1)
    min_author_items: int = Field(ge=1)
    min_publisher_items: int = Field(ge=1)

    @model_validator(mode="after")
    def _edges_increasing(self) -> FeatureParams:
        edges = self.age_bucket_edges
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError("age_bucket_edges must be strictly increasing")
        return self


class EngineParams(Section):
    memory_limit_gib: float = Field(gt=0)
    chunk_rows: int = Field(ge=1)
    threads: int = Field(ge=0)


class RandomParams(Section):
    seed: int


class BM25KNNParams(Section):
    neighbours: int = Field(ge=1)
    k1: float = Field(gt=0)
    b: float = Field(ge=0, le=1)


class NeighbourhoodParams(BM25KNNParams):
    weights: tuple[float, ...]

    @model_validator(mode="after")
    def _weights(self) -> NeighbourhoodParams:
        if not self.weights or any(w < 0 for w in self.weights):
            raise ValueError("neighbourhood.weights needs at least one weight, none negative")
        return self


PositiveFloat = Annotated[float, Field(gt=0)]
Share = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=1)]


class GridSection(Section):
    """A baseline's grid: each key a list of values; every combination is fitted on train and the best
    on validation kept (pipeline/evaluation/tuning.py)."""

    @model_validator(mode="after")
    def _distinct(self) -> GridSection:
        for name, values in self:
            if isinstance(values, tuple) and len(set(values)) != len(values):
                raise ValueError(f"{name}: a grid lists each value once")
        return self


class BM25GridParams(GridSection):
    k1: tuple[PositiveFloat, ...] = Field(min_length=1)
    b: tuple[Share, ...] = Field(min_length=1)
    neighbours: tuple[Count, ...] = Field(min_length=1)


class RP3betaGridParams(GridSection):
    alpha: tuple[PositiveFloat, ...] = Field(min_length=1)
    beta: tuple[Annotated[float, Field(ge=0)], ...] = Field(min_length=1)
    neighbours: tuple[Count, ...] = Field(min_length=1)


class EASEGridParams(GridSection):
    l2: tuple[PositiveFloat, ...] = Field(min_length=1)
    max_gib: float = Field(gt=0)


class CosineKNNParams(Section):
    neighbours: int = Field(ge=1)


class ALSParams(Section):
    factors: int = Field(ge=1)
    regularization: float = Field(ge=0)
    alpha: float = Field(gt=0)
    iterations: int = Field(ge=1)
    seed: int


class EvaluateParams(Section):
    ks: tuple[int, ...]
    curve_max_k: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    processes: int = Field(ge=0)
    max_readers: int = Field(ge=0)
    max_scored_pairs: int = Field(ge=0)
    readers_seed: int
    tuning_readers: int = Field(ge=0)
    cohort_top_countries: int = Field(ge=0)
    two_stage: bool
    random: RandomParams
    itemknn_bm25: BM25KNNParams
    itemknn_bm25_tuned: BM25GridParams
    itemknn_cosine: CosineKNNParams
    als: ALSParams
    rp3beta: RP3betaGridParams
    ease: EASEGridParams

    def baselines(self) -> dict[str, dict]:
        """Baselines with fixed values: name -> constructor options, in the order they are reported."""
        return {
            "random": self.random.model_dump(),
            "popularity": {},
            "itemknn_cosine": self.itemknn_cosine.model_dump(),
            "itemknn_bm25": self.itemknn_bm25.model_dump(),
            "als": self.als.model_dump(),
        }

    def tuned_baselines(self) -> dict[str, dict]:
        """Baselines tuned on validation: name -> grid options, in the order they are reported."""
        return {
            "itemknn_bm25_tuned": self.itemknn_bm25_tuned.model_dump(),
            "rp3beta": self.rp3beta.model_dump(),
            "ease": self.ease.model_dump(),
        }


class TrainParams(Section):
    seed: int
    threads: int = Field(ge=0)
    device: str = Field(pattern="^(auto|cpu|cuda)$")
    gmf_dim: int = Field(ge=1)
    mlp_dim: int = Field(ge=1)
    mlp_layers: tuple[int, ...]
    dropout: float = Field(ge=0, lt=1)
    use_history: bool
    use_user_id: bool
    use_side_features: bool
    history_alpha: float = Field(ge=0, le=1)
    history_sample: int = Field(ge=0)
    reader_chunk: int = Field(ge=0)
    reader_chunk_above: int = Field(ge=0)
    init_std: float = Field(gt=0)
    lr: float = Field(gt=0)
    embedding_lr: float = Field(gt=0)
    embedding_optimizer: str = Field(pattern="^(auto|adam|lazy_adam|rowwise_adagrad)$")
    optimizer_state_gib: float = Field(gt=0)
    lr_decay: float = Field(gt=0, le=1)
    batch_size: int = Field(ge=1)
    epochs: int = Field(ge=1)
    negatives: int = Field(ge=1)
    hard_negatives: int = Field(ge=0)
    negative_sampling: str = Field(pattern="^(uniform|popularity)$")
    popularity_power: float = Field(ge=0)
    l2: float = Field(ge=0)
    mlp_weight_decay: float = Field(ge=0)
    eval_every: int = Field(ge=1)
    patience: int = Field(ge=1)
    early_stopping_users: int = Field(ge=0)
    max_seconds: float = Field(ge=0)
    neighbourhood: NeighbourhoodParams

    @model_validator(mode="after")
    def _mlp_layers(self) -> TrainParams:
        if not self.mlp_layers or any(size < 1 for size in self.mlp_layers):
            raise ValueError("mlp_layers needs at least one positive size")
        if self.hard_negatives > self.negatives:
            raise ValueError("hard_negatives cannot exceed negatives")
        return self


class ExperimentParams(Section):
    mode: Literal["off", "ab", "shadow"]
    challenger_share: float = Field(ge=0, le=1)
    salt: str = Field(min_length=1)
    mde: float = Field(gt=0, lt=1)  # relative click-through change the planned size resolves
    power: float = Field(gt=0, lt=1)  # probability of resolving it at the planned size

    @field_validator("mode", mode="before")
    @classmethod
    def _bare_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false, and DVC's `exp run -S` rewrites params.yaml without
        # the quotes: take false for what the file says.
        return "off" if value is False else value


class RetrievalParams(Section):
    candidates: int = Field(ge=0)
    min_catalog: int = Field(ge=0)
    neighbours: int = Field(ge=0)
    sample: int = Field(ge=1)


class StandingParams(Section):
    depth: int = Field(ge=0)
    capacity: int = Field(ge=1)
    warm_readers: int = Field(ge=0)


class LimitParams(Section):
    requests_per_client: str  # a rate of the `limits` library ("100/second"); "" = no limit
    impressions_per_reader: int = Field(ge=0)  # per minute; 0 = no cap
    pending_requests: int = Field(ge=1)

    @field_validator("requests_per_client")
    @classmethod
    def _a_rate(cls, value: str) -> str:
        from limits import parse_many

        if value:
            parse_many(value)  # ValueError naming the string when it is not a rate
        return value


class ServeParams(Section):
    ann_threshold: int = Field(ge=0)
    retrieval: RetrievalParams
    standing: StandingParams
    max_per_author: int | None = Field(ge=1)  # None: no cap
    experiment: ExperimentParams
    impression_queue: int = Field(ge=1)
    attribution_hours: float = Field(gt=0)
    rules_refresh_seconds: float = Field(gt=0)
    limits: LimitParams
    read_token: bool
    fold_in_seconds: float = Field(ge=0)


class GateParams(Section):
    confidence: float = Field(gt=0.5, lt=1)
    margin: float = Field(ge=0)
    coverage_margin: float = Field(ge=0, le=1)
    novelty_margin: float = Field(ge=0, le=1)
    online_margin: float = Field(ge=0, lt=1)
    min_coverage: float = Field(ge=0, le=1)
    min_personalization: float = Field(ge=0, le=1)
    min_novelty: float = Field(ge=0, le=1)
    beat_popularity: bool
    resamples: int = Field(ge=100)
    seed: int


class Params(Section):
    paths: Paths
    ingest: IngestParams
    preprocess: PreprocessParams
    features: FeatureParams
    engine: EngineParams
    train: TrainParams
    evaluate: EvaluateParams
    serve: ServeParams
    gate: GateParams


def find_root(start: Path | None = None) -> Path:
    """The repository root: $BOOKREC_ROOT, else the nearest folder upwards holding params.yaml."""
    if env_root := os.environ.get("BOOKREC_ROOT"):
        return Path(env_root).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PARAMS_FILE).is_file():
            return folder
    raise ConfigError(f"no {PARAMS_FILE} in {here} or any parent folder; run bookrec from the repository")


def parse_params(raw: dict[str, Any], source: str = PARAMS_FILE) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors(include_url=False)
        )
        raise ConfigError(f"{source}: {problems}") from None


def load_params(root: Path | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml below `root`; `overrides` maps dotted keys ("train.lr") to values for this call only."""
    root = root or find_root()
    path = root / PARAMS_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value, path)
    return parse_params(raw, str(path))


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, path: Path) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        if not isinstance(node.get(key), dict):
            raise ConfigError(f"{path}: override {dotted!r} names no section {key!r}")
        node = node[key]
    if leaf not in node:
        raise ConfigError(f"{path}: override {dotted!r} names no existing key")
    node[leaf] = value


@dataclass(frozen=True)
class Workspace:
    """Absolute paths of the repository's data folders: the root joined with `params.paths`."""

    root: Path
    paths: Paths

    def __getattr__(self, name: str) -> Path:
        # Only reached for names that are not fields: the keys of the `paths` section.
        if name in Paths.model_fields:
            return self.root / getattr(self.paths, name)
        raise AttributeError(name)

    @classmethod
    def load(
        cls, root: Path | None = None, overrides: dict[str, Any] | None = None
    ) -> tuple[Workspace, Params]:
        root = root or find_root()
        params = load_params(root, overrides)
        return cls(root, params.paths), params
