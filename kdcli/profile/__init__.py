"""The profile: one YAML file that describes one compression job (schema, safe loading, messages)."""

from kdcli.profile.load import apply_override, load_profile, profile_json
from kdcli.profile.messages import printable
from kdcli.profile.schema import (
                                  LOSS_KINDS,
                                  AugmentSpec,
                                  CeSpec,
                                  DataSpec,
                                  DistillSpec,
                                  ExportSpec,
                                  LossSpec,
                                  NoiseSpec,
                                  OnnxSpec,
                                  Profile,
                                  PseudoSpec,
                                  StageSpec,
                                  StudentInit,
                                  StudentSpec,
                                  TargetSpec,
                                  TeacherSpec,
                                  TrainSpec,
)

__all__ = ["LOSS_KINDS", "AugmentSpec", "CeSpec", "DataSpec", "DistillSpec", "ExportSpec", "LossSpec", "NoiseSpec",
           "OnnxSpec", "Profile", "PseudoSpec", "StageSpec", "StudentInit", "StudentSpec", "TargetSpec",
           "TeacherSpec", "TrainSpec",
           "printable", "apply_override", "load_profile", "profile_json"]
