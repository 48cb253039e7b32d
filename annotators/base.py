"""The annotator contract: config dataclasses with validated parameters, and the batched base class.

An annotator is a thin object holding a frozen config. Its class declares what the rest of the
system needs to know: ``weights`` (where they come from, their format, licence and key remap; see
:mod:`annotators.weights`), ``data_kind`` (the structured data it finds, if any; see
:mod:`annotators.data`), and a lifecycle (``load``, ``close``, ``weights_present``, ``device``,
``preferred_batch_size``) whose defaults suit an annotator with no backend. Subclasses implement
``_maps`` (or ``_annotate`` when they also find structured data); the base class validates the
batch once and keeps the public surface identical for every annotator.
Grayscale annotators compute single-channel (HxW) maps; the base class widens them to HxWx3 unless
the caller asks for them as they are (the dataset builder stores them as one-channel PNGs).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from annotators.image import hwc3, single_channel as to_single_channel

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Self

    from annotators.data import DataKind
    from annotators.weights import Weights

__all__ = ["MAP_KINDS", "Annotation", "Annotator", "AnnotatorConfig", "described_fields", "image_seed", "param", "range_error"]

#: What a condition map can show, as annotators declare it in ``map_kind``: binary edges or line
#: segments; soft edges, scribbles and line art; relative depth; surface normals; keypoints (with
#: pose data); class labels (with label data); a binary mask; an image-like map (blurred, tiled,
#: inverted or colour-grid versions of the picture).
MAP_KINDS = ("edges", "soft_edges", "depth", "normals", "pose", "segmentation", "mask", "image")


def param(
    default: Any,
    help: str,
    *,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    runtime: bool = False,
) -> Any:
    """A config field carrying its help text and valid range, checked by ``AnnotatorConfig``.

    ``runtime`` marks options that change how, not what, is computed (device, batch size, weights
    location); they are left out of :meth:`AnnotatorConfig.identity`.
    """
    metadata = {
        "help": help,
        "ge": ge,
        "le": le,
        "gt": gt,
        "lt": lt,
        "choices": tuple(choices) if choices else None,
        "runtime": runtime,
    }
    return dataclasses.field(default=default, metadata=metadata)


def _describe_range(meta: dict[str, Any]) -> str:
    if meta["choices"] is not None:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    low = f"[{meta['ge']}" if meta["ge"] is not None else (f"({meta['gt']}" if meta["gt"] is not None else "(-inf")
    high = f"{meta['le']}]" if meta["le"] is not None else (f"{meta['lt']})" if meta["lt"] is not None else "inf)")
    return f"in {low}, {high}"


def _in_range(value: Any, meta: dict[str, Any]) -> bool:
    if meta["choices"] is not None:
        return value in meta["choices"]
    checks = (("ge", value.__ge__), ("le", value.__le__), ("gt", value.__gt__), ("lt", value.__lt__))
    return all(meta[bound] is None or compare(meta[bound]) is True for bound, compare in checks)


def described_fields(config_cls: type) -> list[tuple[dataclasses.Field, str]]:
    """The fields of any dataclass declared with :func:`param`, each with its help and range in words:
    the one source from which command lines and docs are generated."""
    rows = []
    for field in dataclasses.fields(config_cls):
        meta = field.metadata
        if "help" in meta:
            has_range = meta["choices"] is not None or any(meta[b] is not None for b in ("ge", "le", "gt", "lt"))
            rows.append((field, meta["help"] + (f" ({_describe_range(meta)})" if has_range else "")))
    return rows


def range_error(config: Any) -> str | None:
    """The first :func:`param` field of the dataclass instance ``config`` whose value lies outside its
    declared range or choices, in words; None when all do. Unset (None) values are not checked. For
    configs that are not :class:`AnnotatorConfig` (which checks types as well)."""
    for field in dataclasses.fields(config):
        meta = field.metadata
        value = getattr(config, field.name)
        if "help" in meta and value is not None and not isinstance(value, (tuple, list)) and not _in_range(value, meta):
            return f"{field.name}={value!r} is invalid: must be {_describe_range(meta)}"
    return None


@dataclass(frozen=True)
class AnnotatorConfig:
    """Base of every annotator config: fields declared with :func:`param` are validated once, here."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            meta = field.metadata
            if "help" not in meta:
                continue
            value = getattr(self, field.name)
            expected = type(field.default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, field.name, float(value))
                value = float(value)
            if field.default is None:  # optional parameters such as a weights path
                if value is None:
                    continue
            elif not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
                raise ValueError(
                    f"{type(self).__name__}.{field.name} must be {expected.__name__}, got {value!r}"
                )
            if not _in_range(value, meta):
                raise ValueError(f"{type(self).__name__}.{field.name}={value!r} is invalid: must be {_describe_range(meta)}")

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """``(name, default, help with range)`` for each parameter, for CLIs and docs."""
        return [(field.name, field.default, help_text) for field, help_text in described_fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The parameters that determine the output, i.e. all but the ``runtime`` ones."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("runtime")}


@dataclass(frozen=True)
class Annotation:
    """One annotated image: the condition map, plus structured data for annotators that find it
    (in the form its ``data_kind`` encodes: an OpenPose JSON dict, an HxW label map, ...)."""

    map: np.ndarray
    data: Any = None


def image_seed(image: np.ndarray, seed: int) -> int:
    """A seed derived from the pixels and a user seed, so randomised annotators give the same map for
    the same image whatever its position in a batch or a rebuild."""
    digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=8, key=seed.to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest(), "little")


def check_image(image: Any, index: int) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image {index}: expected an HxWx3 uint8 RGB array, got {got}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image {index}: empty image of shape {image.shape}")
    return image


class Annotator:
    """Base class: holds a validated config; ``__call__`` maps a batch of RGB images to condition maps.

    Subclass attributes:
        name: the registry id.
        description: one line for listings.
        Config: the frozen config dataclass; its defaults reproduce the reference.
        weights: the declared weights (:class:`annotators.weights.Weights`), or None.
        data_kind: the kind of structured data ``annotate`` returns besides the map
            (:class:`annotators.data.DataKind`, e.g. OpenPose keypoints), or None.
        grayscale: the map is single-channel: the core returns it HxW (HxWx3 with equal channels
            is accepted too) and ``annotate`` widens it to HxWx3 unless ``single_channel``.
        map_kind: what the map shows, one of :data:`MAP_KINDS`, so that an image made from the
            map can be re-annotated and scored against it (``cn-eval``); None: no such measure
            applies (e.g. a random shuffle). An annotator whose ``data_kind`` is pose or
            segmentation is measured on that data when it leaves this None.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type[AnnotatorConfig]]
    weights: ClassVar[Weights | None] = None
    data_kind: ClassVar[DataKind | None] = None
    grayscale: ClassVar[bool] = False
    map_kind: ClassVar[str | None] = None

    def __init__(self, config: AnnotatorConfig | None = None, **params: Any) -> None:
        if config is not None and params:
            raise TypeError("pass either a config or keyword parameters, not both")
        if config is None:
            known = {f.name for f in dataclasses.fields(self.Config)}
            unknown = sorted(set(params) - known)
            if unknown:
                raise ValueError(
                    f"{self.name}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(known)) or 'none'}"
                )
            config = self.Config(**params)
        elif not isinstance(config, self.Config):
            raise TypeError(f"{self.name}: expected {self.Config.__name__}, got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    # The lifecycle. Creating an annotator never touches the disk or the network; ``load`` does
    # (or the first call), and raises with a one-line message when the backend cannot load.

    @property
    def device(self) -> str:
        """Where the annotator computes: its config's ``device`` field where it has one (``cpu``, or an
        accelerator such as ``cuda:0``), else ``cpu``."""
        return getattr(self.config, "device", "cpu")

    @property
    def preferred_batch_size(self) -> int:
        """Images per call that the annotator processes together; 1 when nothing gains from a batch."""
        return 1

    @property
    def weights_location(self) -> str | None:
        """An explicit file or folder to look for the weights in first: its config's ``weights`` field
        (``--weights``) where it has one."""
        return getattr(self.config, "weights", None)

    @classmethod
    def weights_present(cls, weights: str | None = None) -> bool:
        """Whether the declared weights can be found without touching the network."""
        return cls.weights is None or cls.weights.present(weights)

    def locate_weights(self) -> list[Path]:
        """The files (or model folder) this instance loads, found as its ``weights`` declare; raises
        :class:`annotators.weights.WeightsNotFoundError`. Annotators whose weights depend on their
        config (a chosen model, an alternative format) override this."""
        assert self.weights is not None
        return self.weights.locate(self.weights_location)

    def weights_identity(self) -> list[dict[str, Any]] | None:
        """Names and sizes of the weights this instance loads (None: it has none). Finds them, so it
        raises like ``load`` when they are missing."""
        if self.weights is None:
            return None
        return self.weights.identity(self.locate_weights())

    def load(self) -> Self:
        """Load the backend (weights, model, graph) now instead of on the first call."""
        return self

    def close(self) -> None:
        """Release what ``load`` acquired; the next call loads again."""

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Condition maps (HxWx3 uint8) for a batch of HxWx3 uint8 RGB images."""
        return [annotation.map for annotation in self.annotate(images)]

    def annotate(self, images: Sequence[np.ndarray], *, single_channel: bool = False) -> list[Annotation]:
        """Like ``__call__``, but each result also carries the structured data the annotator found.

        ``single_channel``: grayscale annotators return HxW maps instead of widening them to HxWx3
        (colour annotators are unaffected), which saves a copy when the map is stored as one channel.
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise ValueError("expected a list of images; wrap a single image as [image]")
        batch = [check_image(image, i) for i, image in enumerate(images)]
        if not batch:
            return []
        annotations = self._annotate(batch)
        if not self.grayscale:
            return annotations
        shape = to_single_channel if single_channel else hwc3
        return [dataclasses.replace(a, map=shape(a.map)) for a in annotations]

    def _annotate(self, images: list[np.ndarray]) -> list[Annotation]:
        return [Annotation(m) for m in self._maps(images)]

    def _maps(self, images: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} implements neither _maps nor _annotate")


class PerImageAnnotator(Annotator):
    """An annotator whose functional core works on one image at a time (classical image operators)."""

    def _maps(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [self._map(image) for image in images]

    def _map(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError
