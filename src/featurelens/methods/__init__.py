"""Saliency methods for classifiers. Import order registers them by name."""

from featurelens.methods.ablationcam import AblationCAM
from featurelens.methods.base import (
    METHODS,
    LayerState,
    Method,
    MethodContext,
    get_method,
    method_names,
    register,
    weighted_sum,
)
from featurelens.methods.cam import CAM
from featurelens.methods.eigencam import EigenCAM, EigenGradCAM
from featurelens.methods.fem import FEM
from featurelens.methods.gradcam import GradCAM
from featurelens.methods.gradcamelementwise import GradCAMElementWise
from featurelens.methods.gradcampp import GradCAMPlusPlus
from featurelens.methods.hirescam import HiResCAM
from featurelens.methods.kpcacam import KPCACAM
from featurelens.methods.layercam import LayerCAM
from featurelens.methods.relevancecam import RelevanceCAM
from featurelens.methods.scorecam import ScoreCAM
from featurelens.methods.xgradcam import XGradCAM

__all__ = [
    "CAM",
    "FEM",
    "KPCACAM",
    "METHODS",
    "AblationCAM",
    "EigenCAM",
    "EigenGradCAM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "LayerState",
    "Method",
    "MethodContext",
    "RelevanceCAM",
    "ScoreCAM",
    "XGradCAM",
    "get_method",
    "method_names",
    "register",
    "weighted_sum",
]
