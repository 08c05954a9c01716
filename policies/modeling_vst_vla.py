"""`VSTVLAPolicy`: a Qwen2.5-VL backbone with an action head, as a LeRobot `PreTrainedPolicy`.

Batches are LeRobot batches after the pre-processor: `observation.images.<camera>` [B, 3, H, W] in [0, 1],
`observation.state` [B, D] (normalised), `task` (list of strings), and for training `action` [B, H, A]
(normalised) with `action_is_pad` [B, H]. Actions come out normalised; the post-processor maps them back.

A saved policy directory is self-contained: `config.json` (this policy's config), `model.safetensors` (every
weight, backbone included) and `backbone/` (the backbone's HF config, tokenizer and processor, no weights),
plus the pre/post-processor files that `policies.loading.save_policy` writes next to them.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import torch
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import ACTION, OBS_STATE
from torch import Tensor

from policies.configuration_vst_vla import VSTVLAConfig
from policies.finetune import apply_finetune_mode
from policies.heads import build_head
from policies.meta_loading import WeightsFileError, assign_safetensors, empty_parameters, meta_tensor_names
from policies.vlm import PromptInputs, VLMBackbone

log = logging.getLogger(__name__)

BACKBONE_SUBDIR = "backbone"
_BACKBONE_PREFIX = "vlm.model."  # the backbone's keys inside the policy's state dict


def build_backbone_architecture(path: str | Path, config: VSTVLAConfig):
    """A backbone with the architecture and processor saved at `path` and untrained weights (loaded later)."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from vst_vla.runtime import resolve_attention, resolve_device, resolve_dtype

    device = resolve_device(config.device)
    hf_config = AutoConfig.from_pretrained(path)
    model = AutoModelForImageTextToText.from_config(
        hf_config, dtype=resolve_dtype(config.backbone_dtype, device),
        attn_implementation=resolve_attention(config.attn_implementation, device))
    return model, AutoProcessor.from_pretrained(path)


def load_backbone_for(config: VSTVLAConfig):
    """The backbone named by `config.backbone`, through `vst_vla.backbone.load_backbone`."""
    from vst_vla.backbone import load_backbone

    return load_backbone({"source": config.backbone, "device": "cpu", "dtype": config.backbone_dtype,
                          "attn_implementation": config.attn_implementation})


class VSTVLAPolicy(PreTrainedPolicy):
    """VST-VLA: prompt + cameras (+ state) through Qwen2.5-VL, then a `tokens`, `l1_chunk` or `flow` head."""

    config_class = VSTVLAConfig
    name = "vst_vla"

    def __init__(self, config: VSTVLAConfig, dataset_stats=None, dataset_meta=None, backbone=None,
                 backbone_dir: str | None = None, **kwargs):
        """`backbone` is an optional (model, processor) to use as is; `backbone_dir` builds the architecture
        from a saved policy's `backbone/` with every parameter on the meta device (no initialisation): the
        weights then come from `model.safetensors` (`from_pretrained`)."""
        super().__init__(config)
        config.validate_features()
        if backbone is None and backbone_dir:
            with empty_parameters():
                self._build(config, build_backbone_architecture(backbone_dir, config))
        else:
            self._build(config, backbone if backbone is not None else load_backbone_for(config))
        self.reset()

    def _build(self, config: VSTVLAConfig, backbone) -> None:
        model, processor = backbone
        state = config.robot_state_feature
        state_dim = int(state.shape[0]) if (config.use_state and state is not None) else None
        self.vlm = VLMBackbone(model, processor, config.prompt_template, config.image_size, state_dim)
        self.action_dim = int(config.action_feature.shape[0])
        self.head = build_head(config.head_target, self.vlm.hidden_size, self.action_dim, config,
                               backbone_layers=self.vlm.num_layers)
        self.head.setup(self.vlm)
        apply_finetune_mode(model, config, train_embeddings=config.head == "tokens")

    # --- LeRobot interface -------------------------------------------------------------------------------

    def get_optim_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def reset(self) -> None:
        """Forget queued actions and the execution mode's history (call at every episode start)."""
        from policies.execution.rtc import RTCExecutor
        from policies.execution.temporal_ensemble import TemporalEnsembler

        self._action_queue: deque[Tensor] = deque(maxlen=self.config.n_action_steps)
        self._ensembler = TemporalEnsembler(self.config.temporal_ensemble_coeff, self.config.chunk_size)
        self._rtc = (RTCExecutor(self.config.chunk_size, self.config.n_action_steps, self.config.inference_delay_steps)
                     if self.config.execution_mode == "rtc" else None)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """Training loss of the head on one (pre-processed) batch."""
        actions = batch[ACTION]
        if actions.ndim == 2:
            actions = actions.unsqueeze(1)
        expected = (self.config.chunk_size, self.action_dim)
        if tuple(actions.shape[1:]) != expected:
            raise ValueError(f"batch['action'] has shape {tuple(actions.shape)}, expected [B, {expected[0]}, {expected[1]}]"
                             " (chunk_size, action_dim): check the dataset's delta_timestamps and action feature")
        pad = batch.get(f"{ACTION}_is_pad")
        pad = torch.zeros(actions.shape[:2], dtype=torch.bool, device=actions.device) if pad is None else pad.view(actions.shape[:2])
        inputs, state = self.prepare_inputs(batch)
        loss, info = self.head.loss(self.vlm, inputs, state, actions, pad.bool())
        info["loss"] = float(loss.detach())
        return loss, info

    @torch.inference_mode()
    def predict_action_chunk(self, batch: dict[str, Tensor], noise: Tensor | None = None,
                             rtc_target: Tensor | None = None, rtc_weights: Tensor | None = None,
                             inference_delay: int | None = None, prev_chunk_left_over: Tensor | None = None,
                             **kwargs) -> Tensor:
        """Normalised actions [B, chunk_size, action_dim] for one batch of observations; with `rtc_target`
        (normalised [B, H, A]) and `rtc_weights` ([H] or [B, H]) the flow head samples by real-time chunking.
        LeRobot's RTC keywords (pi0/SmolVLA) give the same: `prev_chunk_left_over` [B, k, A] (normalised) the
        queued actions from the observation's step on, `inference_delay` the d of them committed (the paper's
        mask over the k queued actions)."""
        if rtc_target is None and prev_chunk_left_over is not None:
            rtc_target, rtc_weights = self._rtc_guidance(prev_chunk_left_over, int(inference_delay or 0))
        inputs, state = self.prepare_inputs(batch)
        if rtc_target is None:
            return self.predict_from_inputs(inputs, state, noise=noise)
        if self.config.head != "flow":
            raise ValueError(f"real-time chunking needs the flow head, this policy has {self.config.head!r}")
        return self.head.predict(self.vlm, inputs, state, noise=noise, rtc_target=rtc_target, rtc_weights=rtc_weights,
                                 max_guidance=self.config.rtc_max_guidance).float()

    @torch.inference_mode()
    def select_action(self, batch: dict[str, Tensor], noise: Tensor | None = None, **kwargs) -> Tensor:
        """One action [B, action_dim] under `config.execution_mode`: open loop predicts a chunk when the
        `n_action_steps` queue is empty; temporal ensembling predicts every step and averages the predictions
        for this step; rtc samples the next chunk every `n_action_steps` guided by the previous one."""
        if self.config.execution_mode == "temporal_ensemble":
            return self._ensembler.update(self.predict_action_chunk(batch, noise=noise))
        if self._rtc is not None:
            return self._rtc.next_action(lambda target, weights: self._sample_rtc(batch, noise, target, weights))
        if not self._action_queue:
            chunk = self.predict_action_chunk(batch, noise=noise)[:, : self.config.n_action_steps]
            self._action_queue.extend(chunk.transpose(0, 1))
        return self._action_queue.popleft()

    def _rtc_guidance(self, left_over: Tensor, delay: int) -> tuple[Tensor, Tensor]:
        """The zero-padded target [B, H, A] and the paper's prefix weights [H] for k queued actions."""
        from policies.execution.rtc import prefix_weights

        chunk_size = int(self.config.chunk_size)
        if left_over.ndim != 3 or left_over.shape[1] > chunk_size:
            raise ValueError(f"prev_chunk_left_over must be [B, k <= chunk_size={chunk_size}, action_dim], got "
                             f"{list(left_over.shape)}")
        target = left_over.new_zeros(left_over.shape[0], chunk_size, left_over.shape[2])
        target[:, : left_over.shape[1]] = left_over
        return target, prefix_weights(delay, int(left_over.shape[1]), chunk_size)

    def _sample_rtc(self, batch: dict[str, Tensor], noise: Tensor | None, target: Tensor | None,
                    weights: Tensor | None) -> Tensor:
        inputs, state = self.prepare_inputs(batch)
        kwargs = {} if target is None else {"rtc_target": target, "rtc_weights": weights,
                                            "max_guidance": self.config.rtc_max_guidance}
        return self.head.predict(self.vlm, inputs, state, noise=noise, **kwargs).float()

    # --- the steps, public so benchmarks can time them apart -------------------------------------------------

    def prepare_inputs(self, batch: dict[str, Tensor]) -> tuple[PromptInputs, Tensor | None]:
        """Prompt tokens and patches for a batch, and its state (None when the policy uses no state)."""
        cameras = [batch[key] for key in self.config.image_features]
        batch_size = cameras[0].shape[0]
        tasks = batch.get("task")
        if tasks is None:
            raise KeyError("batch has no 'task': the VST-VLA prompt needs the task text")
        tasks = [tasks] * batch_size if isinstance(tasks, str) else list(tasks)
        if len(tasks) != batch_size:
            raise ValueError(f"batch has {len(tasks)} task strings for {batch_size} observations")
        state = batch.get(OBS_STATE) if self.vlm.state_proj is not None else None
        if self.vlm.state_proj is not None and state is None:
            raise KeyError(f"this policy uses {OBS_STATE} but the batch has none")
        return self.vlm.build_inputs(cameras, tasks, n_query=self.head.n_query), state

    def predict_from_inputs(self, inputs: PromptInputs, state: Tensor | None, noise: Tensor | None = None) -> Tensor:
        kwargs = {"noise": noise} if noise is not None else {}
        return self.head.predict(self.vlm, inputs, state, **kwargs).float()

    # --- saving: weights in model.safetensors, backbone architecture and processor in backbone/ ----------

    def _save_pretrained(self, save_directory: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        super()._save_pretrained(save_directory, state_dict=state_dict)
        backbone_dir = Path(save_directory) / BACKBONE_SUBDIR
        backbone_dir.mkdir(parents=True, exist_ok=True)
        self.vlm.model.config.save_pretrained(backbone_dir)
        self.vlm.model.generation_config.save_pretrained(backbone_dir)
        self.vlm.processor.save_pretrained(backbone_dir)

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path: str | Path, *, config: VSTVLAConfig | None = None,
                        **kwargs) -> VSTVLAPolicy:
        """Load a policy directory written by `save_pretrained` (local directories only: nothing downloads)."""
        path = Path(pretrained_name_or_path)
        if not (path / BACKBONE_SUBDIR / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a vst_vla policy directory: {BACKBONE_SUBDIR}/config.json is missing")
        kwargs.setdefault("backbone_dir", str(path / BACKBONE_SUBDIR))
        kwargs.pop("strict", None)
        return super().from_pretrained(path, config=config, **kwargs)

    @classmethod
    def _load_as_safetensor(cls, model: VSTVLAPolicy, model_file: str, map_location: str, strict: bool) -> VSTVLAPolicy:
        """Assign every weight of `model_file` (read straight onto the policy's device), re-tie the backbone's
        tied weights (the file stores them once), and refuse a policy left with any weight unloaded: always
        strict, a policy whose weights do not all load must not run on a robot."""
        missing = assign_safetensors(model, model_file, str(map_location or "cpu"))
        backbone_missing = {key.removeprefix(_BACKBONE_PREFIX) for key in missing if key.startswith(_BACKBONE_PREFIX)}
        model.vlm.model.tie_weights(missing_keys=backbone_missing)  # discards the aliases it ties
        left = sorted({key for key in missing if not key.startswith(_BACKBONE_PREFIX)}
                      | {_BACKBONE_PREFIX + key for key in backbone_missing})
        left += [name for name in meta_tensor_names(model) if name not in left]
        if left:
            raise WeightsFileError(f"{model_file} lacks {len(left)} weights of the policy, e.g. {', '.join(left[:5])}")
        return model
