"""ControlNet condition-map annotators: a lazy registry and a factory.

    >>> import annotators
    >>> canny = annotators.create("canny", low_threshold=50)
    >>> maps = canny([rgb_uint8_image])

Built-in annotators are named here by ``module:attribute`` so that listing them imports only their
small modules (heavy dependencies such as torch load inside ``load``/first call). Third-party
annotators register through the ``cn_annotate.annotators`` entry-point group, whose names are the
annotator ids and whose values point at :class:`annotators.base.Annotator` subclasses, or in code
with :func:`register` (process-local; the builder's forked workers inherit it).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from annotators.base import Annotation, Annotator, AnnotatorConfig, param

__all__ = [
    "Annotation",
    "Annotator",
    "AnnotatorConfig",
    "AnnotatorInfo",
    "UnknownAnnotatorError",
    "available",
    "create",
    "get_class",
    "info",
    "names",
    "param",
    "register",
    "unregister",
]

ENTRY_POINT_GROUP = "cn_annotate.annotators"

_BUILTIN: dict[str, str] = {
    "canny": "annotators.canny:Canny",
    "scribble_xdog": "annotators.xdog:ScribbleXDoG",
    "threshold": "annotators.threshold:Threshold",
    "invert": "annotators.threshold:Invert",
    "binary": "annotators.threshold:Binary",
    "blur_gaussian": "annotators.blur:BlurGaussian",
    "tile_resample": "annotators.tile:TileResample",
    "color_grid": "annotators.color_grid:ColorGrid",
    "lineart_standard": "annotators.lineart_standard:LineartStandard",
    "shuffle": "annotators.shuffle:Shuffle",
    "hough": "annotators.hough:Hough",
    "mlsd": "annotators.mlsd:MLSD",
    "lineart_realistic": "annotators.lineart:LineartRealistic",
    "lineart_coarse": "annotators.lineart:LineartCoarse",
    "lineart_anime": "annotators.lineart:LineartAnime",
    "hed": "annotators.hed:HED",
    "fake_scribble": "annotators.hed:FakeScribble",
    "softedge_hed": "annotators.hed:SoftEdgeHED",
    "softedge_hedsafe": "annotators.hed:SoftEdgeHEDSafe",
    "scribble_hed": "annotators.hed:ScribbleHED",
    "softedge_pidinet": "annotators.pidinet:SoftEdgePiDiNet",
    "softedge_pidisafe": "annotators.pidinet:SoftEdgePiDiNetSafe",
    "scribble_pidinet": "annotators.pidinet:ScribblePiDiNet",
    "softedge_teed": "annotators.teed:SoftEdgeTEED",
    "depth_midas": "annotators.midas:MidasDepth",
    "depth_anything_v2": "annotators.depth_anything:DepthAnythingV2",
    "depth_anything": "annotators.depth_anything:DepthAnything",
    "depth_zoe": "annotators.zoe:DepthZoe",
    "normal_midas": "annotators.midas:MidasNormal",
    "normal_bae": "annotators.normalbae:NormalBae",
    "openpose": "annotators.openpose:OpenPose",
    "openpose_hand": "annotators.openpose:OpenPoseHand",
    "dw_openpose_full": "annotators.dwpose:DWOpenPoseFull",
    "dw_openpose": "annotators.dwpose:DWOpenPose",
    "mediapipe_pose": "annotators.mediapipe:MediaPipePose",
    "mediapipe_hands": "annotators.mediapipe:MediaPipeHands",
    "mediapipe_face": "annotators.mediapipe:MediaPipeFace",
    "mediapipe_full": "annotators.mediapipe:MediaPipeFull",
    "person_mask": "annotators.mediapipe:PersonMask",
    "seg_ufade20k": "annotators.uniformer:SegUFADE20K",
    "seg_ofade20k": "annotators.oneformer:SegOFADE20K",
    "seg_ofcoco": "annotators.oneformer:SegOFCOCO",
    "seg_upernet": "annotators.seg_transformers:SegUperNet",
    "seg_segformer": "annotators.seg_transformers:SegSegFormer",
    "seg_mask2former": "annotators.seg_transformers:SegMask2Former",
}


#: registered in code with :func:`register`: id -> class or "module:attribute"
_REGISTERED: dict[str, type[Annotator] | str] = {}


class UnknownAnnotatorError(KeyError):
    """Raised by :func:`create` for an id that is neither built in nor installed as a plug-in."""

    def __init__(self, name: str) -> None:
        known = names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(f"unknown annotator {name!r}.{hint} Available: {', '.join(known)}")
        self.name = name

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class AnnotatorInfo:
    name: str
    description: str
    needs_weights: bool  # weights the user must provide or download (bundled ones do not count)
    weights_license: str | None
    data_kind: str | None
    source: str  # "builtin", "registered", or the distribution providing the plug-in


@cache
def _plugins() -> dict[str, tuple[str, str]]:
    """id -> (module:attr, distribution) for installed plug-ins; built-in ids cannot be shadowed."""
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _BUILTIN and ep.name not in _REGISTERED:
            found[ep.name] = (ep.value, ep.dist.name if ep.dist else "unknown")
    return found


def register(name: str, annotator: type[Annotator] | str) -> None:
    """Make ``annotator`` (a class, or ``"module:attribute"`` imported on first use) available as
    ``name`` to :func:`create`, the builder and the CLI. Built-in ids cannot be replaced."""
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in annotator and cannot be replaced")
    if isinstance(annotator, type) and not issubclass(annotator, Annotator):
        raise TypeError(f"{annotator.__name__} is not an Annotator subclass")
    _REGISTERED[name] = annotator


def unregister(name: str) -> None:
    """Remove an annotator added with :func:`register`."""
    if _REGISTERED.pop(name, None) is None:
        raise UnknownAnnotatorError(name)


def names() -> list[str]:
    """Every annotator id, built-in ones first, then registered ones and plug-ins."""
    return list(_BUILTIN) + sorted({*_REGISTERED, *_plugins()})


def get_class(name: str) -> type[Annotator]:
    """The annotator class registered under ``name``, importing its module on first use."""
    if name in _BUILTIN:
        target = _BUILTIN[name]
    elif name in _REGISTERED:
        registered = _REGISTERED[name]
        if isinstance(registered, type):
            return registered
        target = registered
    elif name in _plugins():
        target = _plugins()[name][0]
    else:
        raise UnknownAnnotatorError(name)
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Annotator)):
        raise TypeError(f"{target} registered as annotator {name!r} is not an Annotator subclass")
    return cls


def create(name: str, **params: Any) -> Annotator:
    """Build the annotator ``name``; ``params`` override its config's reference defaults."""
    return get_class(name)(**params)


def info(name: str) -> AnnotatorInfo:
    """The description, weights, licence, kind of data and origin of the annotator ``name``
    (importing its module alone)."""
    cls = get_class(name)
    weights = cls.weights
    return AnnotatorInfo(
        name=name,
        description=cls.description,
        needs_weights=weights is not None and weights.downloadable,
        weights_license=weights.license if weights is not None else None,
        data_kind=cls.data_kind.name if cls.data_kind is not None else None,
        source="builtin" if name in _BUILTIN else "registered" if name in _REGISTERED else _plugins()[name][1],
    )


def available() -> list[AnnotatorInfo]:
    """Every annotator with its description, weights, licence and kind of data."""
    return [info(name) for name in names()]
