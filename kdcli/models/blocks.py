"""Layer discovery: a transformers model's stack of repeated blocks, found from its module tree, and a
student config and state dict cut to chosen layers of that stack (init-student, encoders and decoders alike)."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from kdcli.errors import BadInput

# The names transformers configs give the layer count (attribute_map aliases resolve the rest).
DEPTH_FIELDS = ("num_hidden_layers", "n_layers", "n_layer", "num_layers")


@dataclass(frozen=True)
class Stack:
    """A model's repeated blocks: `name` is the ModuleList's dotted path ("bert.encoder.layer")."""
    name: str
    blocks: nn.ModuleList

    def key_pattern(self) -> re.Pattern[str]:
        """State-dict keys of one block: group 1 the list, group 2 the block's index."""
        return re.compile(rf"^({re.escape(self.name)})\.(\d+)\.")


def config_depth(config: PretrainedConfig) -> int | None:
    for name in DEPTH_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def find_stack(model: PreTrainedModel) -> Stack | None:
    """The ModuleList of blocks that are all of one class and as many as the config's layer count; the
    shallowest one wins (a block may hold lists of its own)."""
    depth = config_depth(model.config)
    for name, module in model.named_modules():
        if (isinstance(module, nn.ModuleList) and len(module) == depth and depth
                and len({type(block) for block in module}) == 1):
            return Stack(name, module)
    return None


def shared_block(model: PreTrainedModel) -> bool:
    """ALBERT: one block (one group) applied num_hidden_layers times."""
    return getattr(model.config, "num_hidden_groups", None) == 1 and hasattr(model.config, "inner_group_num")


def require_stack(model: PreTrainedModel) -> Stack:
    stack = find_stack(model)
    if stack is None:
        raise BadInput(f"init-student: {type(model).__name__} has no list of {config_depth(model.config)} "
                       "blocks to cut (the layer count its config gives)",
                       hint="keep every layer (student.init.layers) or build the student yourself")
    return stack


def cut_config(config: PretrainedConfig, layers: list[int]) -> PretrainedConfig:
    """The teacher's config for the kept layers: the depth, and every per-layer field in step with them."""
    depth = config_depth(config)
    new = copy.deepcopy(config)
    for name, value in vars(config).items():
        # one entry per layer (layer_types: ModernBERT's global/sliding pattern, Qwen's, Gemma's ...)
        if isinstance(value, (list, tuple)) and len(value) == depth and name != "architectures":
            setattr(new, name, type(value)(value[i] for i in layers))
    if isinstance(getattr(config, "max_window_layers", None), int):  # Qwen2: layers below it use full attention
        new.max_window_layers = sum(1 for i in layers if i < config.max_window_layers)
    for name in DEPTH_FIELDS:
        if name in vars(config):
            setattr(new, name, len(layers))
    new.num_hidden_layers = len(layers)  # through attribute_map: n_layer (GPT-2), n_layers (DistilBERT)
    return new


def renumber_layers(state: dict[str, torch.Tensor], layers: list[int], pattern: re.Pattern[str]
                    ) -> dict[str, torch.Tensor]:
    """Keep the chosen layers, renumbered 0..k-1; everything else as it is (cloned). `pattern` finds a
    key's layer list and index (groups 1 and 2)."""
    kept: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = pattern.search(key)
        if match is None:
            kept[key] = value.clone()
        elif int(match[2]) in layers:
            new_index = layers.index(int(match[2]))
            kept[key[: match.start()] + f"{match[1]}.{new_index}." + key[match.end():]] = value.clone()
    return kept


def cut_model(model: PreTrainedModel, layers: list[int], state: dict[str, torch.Tensor] | None = None,
              config: PretrainedConfig | None = None) -> PreTrainedModel:
    """A model of the teacher's class keeping `layers` of its stack, copied bit for bit; ties kept.

    An ALBERT-style shared block is copied whole: the student applies it fewer times."""
    state = model.state_dict() if state is None else state
    if not shared_block(model):
        state = renumber_layers(state, layers, require_stack(model).key_pattern())
    student = type(model)(cut_config(config or model.config, layers))
    student.load_state_dict(state, strict=True)
    student.tie_weights()
    return student
