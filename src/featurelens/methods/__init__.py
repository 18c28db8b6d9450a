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
from featurelens.methods.finercam import FinerCAM
from featurelens.methods.fullgrad import FullGrad
from featurelens.methods.gradcam import GradCAM
from featurelens.methods.gradcamelementwise import GradCAMElementWise
from featurelens.methods.gradcampp import GradCAMPlusPlus
from featurelens.methods.guided import GuidedBackprop, GuidedGradCAM
from featurelens.methods.hirescam import HiResCAM
from featurelens.methods.kpcacam import KPCACAM
from featurelens.methods.layercam import LayerCAM
from featurelens.methods.relevancecam import RelevanceCAM
from featurelens.methods.scorecam import ScoreCAM
from featurelens.methods.scorecam_variants import ISCAM, SSCAM
from featurelens.methods.shapleycam import ShapleyCAM
from featurelens.methods.smoothgradcampp import SmoothGradCAMPlusPlus
from featurelens.methods.xgradcam import XGradCAM

__all__ = [
    "CAM",
    "FEM",
    "ISCAM",
    "KPCACAM",
    "METHODS",
    "SSCAM",
    "AblationCAM",
    "EigenCAM",
    "EigenGradCAM",
    "FinerCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "LayerState",
    "Method",
    "MethodContext",
    "RelevanceCAM",
    "ScoreCAM",
    "ShapleyCAM",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
    "get_method",
    "method_names",
    "register",
    "weighted_sum",
]
