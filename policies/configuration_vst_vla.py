"""`VSTVLAConfig`: the VST-VLA policy's configuration, registered with LeRobot as policy type `vst_vla`.

One dataclass holds everything needed to rebuild the policy from its directory: the backbone source, the
head (by name or import path, with its hyper-parameters), the prompt, image size, fine-tuning mode and the
normalisation modes. `lerobot-train --policy.type=vst_vla --policy.discover_packages_path=policies` parses it
from the command line; `vst-vla vla` fills it from the Hydra tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs import NormalizationMode, PreTrainedConfig
from lerobot.optim import AdamWConfig, CosineDecayWithWarmupSchedulerConfig

# Short names for the shipped heads; `head` may also be an import path ("package.module.Class").
HEAD_TARGETS = {
    "tokens": "policies.heads.tokens.TokenActionHead",
    "l1_chunk": "policies.heads.l1_chunk.L1ChunkHead",
    "flow": "policies.heads.flow.FlowMatchingHead",
}
FINETUNE_MODES = ("full", "lora", "frozen")
PROMPT_TEMPLATE = "What action should the robot take to {task}?"


@PreTrainedConfig.register_subclass("vst_vla")
@dataclass
class VSTVLAConfig(PreTrainedConfig):
    """Backbone, head, prompt and training presets of a VST-VLA policy."""

    # Backbone: anything `vst_vla.backbone.load_backbone` accepts ("tiny", a local HF directory).
    backbone: str = "tiny"
    attn_implementation: str = "auto"
    backbone_dtype: str = "auto"

    # Head: a short name from HEAD_TARGETS or an import path; chunk_size actions are predicted per call.
    head: str = "l1_chunk"
    chunk_size: int = 16
    n_action_steps: int = 8
    head_hidden_dim: int = 256  # l1_chunk MLP width; flow expert width (0: half the backbone's width)
    n_bins: int = 256  # tokens head
    flow_steps: int = 4  # flow head: Euler integration steps at inference (GR00T N1: 4, pi0: 10)
    expert_layers: int = 0  # flow expert depth (0: half the backbone's depth)
    expert_heads: int = 4

    # Execution on the robot (`policies.execution`): open_loop | temporal_ensemble | rtc (flow head only).
    execution_mode: str = "open_loop"
    temporal_ensemble_coeff: float = 0.01  # ACT's: weight exp(-coeff * i), i = 0 the oldest prediction
    inference_delay_steps: int = 0  # rtc: steps a chunk takes to arrive; its first d actions are committed
    rtc_max_guidance: float = 5.0  # rtc: the paper's beta (guidance weight cap)

    # Inference: compile the backbone's language model and the head (`policies.compiled`) at load time, warmed
    # up before the first request: auto (on CUDA only) | true | false.
    # mode: default | reduce-overhead (CUDA graphs) | max-autotune[-no-cudagraphs].
    compile: str = "auto"
    compile_mode: str = "default"
    compile_backend: str = "inductor"
    compile_scope: str = "language_model"  # language_model (one graph) | layers (each decoder layer)

    # Prompt and inputs.
    prompt_template: str = PROMPT_TEMPLATE
    image_size: int = 84  # every camera is resized to a square of this side (a multiple of 28)
    use_state: bool = True  # project observation.state into one token of the prompt
    # Observation keys the training data carries that the policy deliberately does not read (accepted, dropped).
    ignored_observation_keys: list[str] = field(default_factory=list)

    # Fine-tuning: full | lora | frozen (backbone frozen, only head and projections train).
    finetune: str = "full"
    freeze_vision_encoder: bool = True
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MEAN_STD,
            # The paper's (OpenVLA's) q01/q99 normalisation to [-1, 1], for every head.
            "ACTION": NormalizationMode.QUANTILES,
        }
    )

    # Training presets (used by lerobot-train; `vst-vla vla` takes them from its trainer config).
    optimizer_lr: float = 1e-4
    optimizer_betas: tuple[float, float] = (0.9, 0.95)
    optimizer_eps: float = 1e-8
    optimizer_weight_decay: float = 1e-4
    optimizer_grad_clip_norm: float = 1.0
    scheduler_warmup_steps: int = 10
    scheduler_decay_steps: int = 1000
    scheduler_decay_lr: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        # A shipped head given by import path (Hydra's `_target_`) is stored under its short name.
        self.head = {target: name for name, target in HEAD_TARGETS.items()}.get(self.head, self.head)
        if self.head == "tokens" and (self.chunk_size != 1 or self.n_action_steps != 1):
            # The paper's head decodes one action per step, without chunking.
            self.chunk_size, self.n_action_steps = 1, 1
        if self.n_action_steps > self.chunk_size:
            raise ValueError(f"policy n_action_steps={self.n_action_steps} exceeds chunk_size={self.chunk_size}")
        self._check_execution()
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"policy finetune={self.finetune!r} is not one of {FINETUNE_MODES}")
        if self.image_size % 28:
            raise ValueError(f"policy image_size={self.image_size} must be a multiple of 28 (Qwen2.5-VL patches)")
        if "{task}" not in self.prompt_template:
            raise ValueError(f"policy prompt_template={self.prompt_template!r} has no {{task}} placeholder")

    def _check_execution(self) -> None:
        from policies.compiled import compile_setting
        from policies.execution import EXECUTION_MODES

        self.compile = compile_setting(self.compile)  # a saved JSON false reads back as "False"

        if self.execution_mode not in EXECUTION_MODES:
            raise ValueError(f"policy execution_mode={self.execution_mode!r} is not one of {EXECUTION_MODES}")
        if self.execution_mode == "rtc":
            if self.head != "flow":
                raise ValueError(f"policy execution_mode=rtc needs head=flow (got {self.head!r}); use "
                                 "temporal_ensemble for the regression heads")
            d, s, h = self.inference_delay_steps, self.n_action_steps, self.chunk_size
            if not 0 <= d <= s <= h - d:
                raise ValueError(f"policy execution_mode=rtc needs 0 <= inference_delay_steps ({d}) <= "
                                 f"n_action_steps ({s}) <= chunk_size ({h}) - inference_delay_steps")

    def execution_metadata(self) -> dict:
        """How a robot should execute this policy's chunks (served in the connect metadata)."""
        return {"mode": self.execution_mode, "chunk_size": int(self.chunk_size),
                "n_action_steps": int(self.n_action_steps), "temporal_ensemble_coeff": self.temporal_ensemble_coeff,
                "inference_delay_steps": int(self.inference_delay_steps)}

    @property
    def head_target(self) -> str:
        """Import path of the head class."""
        return HEAD_TARGETS.get(self.head, self.head)

    def to_json_string(self) -> str:
        """The config as JSON; transformers' logging integrations (TensorBoard) call this on `model.config`."""
        import json

        import draccus

        return json.dumps(draccus.encode(self, PreTrainedConfig), indent=2)

    def validate_features(self) -> None:
        if not self.image_features:
            raise ValueError("vst_vla needs at least one observation.images.* (VISUAL) input feature")
        if self.action_feature is None:
            raise ValueError("vst_vla needs an `action` output feature")

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr, betas=self.optimizer_betas, eps=self.optimizer_eps,
                           weight_decay=self.optimizer_weight_decay, grad_clip_norm=self.optimizer_grad_clip_norm)

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(peak_lr=self.optimizer_lr, decay_lr=self.scheduler_decay_lr,
                                                    num_warmup_steps=self.scheduler_warmup_steps,
                                                    num_decay_steps=self.scheduler_decay_steps)

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None
