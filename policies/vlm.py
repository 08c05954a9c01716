"""The backbone side of the policy: prompt building and one backbone pass with state and query tokens.

The prompt is the backbone family's chat template: one image per camera, an optional proprioception token, then
"What action should the robot take to {task}?", then the assistant turn, then optional action-query tokens.
The proprioception and query tokens are placeholders in the token stream whose embeddings are replaced by a
projection of the robot state and by the head's learnable queries. Prompts are left-padded so the last
positions line up across a batch (queries and decoded action tokens sit at the end of every row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vst_vla.families import family_of

PROPRIO_TOKEN = "<|proprio|>"
QUERY_TOKEN = "<|action_query|>"
_TASK_SENTINEL = "\x00TASK\x00"


@dataclass
class PromptInputs:
    """Processor output for a batch of prompts (left-padded), on the model's device."""

    input_ids: Tensor
    attention_mask: Tensor
    pixel_values: Tensor
    image_grid_thw: Tensor
    mm_token_type_ids: Tensor

    def extended(self, extra_ids: Tensor) -> PromptInputs:
        """The same prompts with `extra_ids` [B, N] (text tokens) appended to every row."""
        ones = torch.ones_like(extra_ids, dtype=self.attention_mask.dtype)
        return PromptInputs(torch.cat([self.input_ids, extra_ids], 1), torch.cat([self.attention_mask, ones], 1),
                            self.pixel_values, self.image_grid_thw,
                            torch.cat([self.mm_token_type_ids, torch.zeros_like(extra_ids).to(self.mm_token_type_ids)], 1))


def add_tokens(model: nn.Module, processor, tokens: list[str]) -> list[int]:
    """Add `tokens` as special tokens (when missing) and grow the embedding table to fit; returns their ids."""
    tokenizer = processor.tokenizer
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    n_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_rows:  # real Qwen checkpoints carry spare rows; only grow when needed
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return tokenizer.convert_tokens_to_ids(tokens)


class VLMBackbone(nn.Module):
    """A backbone (any family in `vst_vla/families/`) and its processor, turning (images, state, task) into
    hidden states."""

    def __init__(self, model: nn.Module, processor, prompt_template: str, image_size: int, state_dim: int | None):
        super().__init__()
        self.model = model
        self.processor = processor
        self.prompt_template = prompt_template
        self.image_size = image_size
        self.proprio_id, self.query_id = add_tokens(model, processor, [PROPRIO_TOKEN, QUERY_TOKEN])
        self.family = family_of(model)
        self.hidden_size = self.family.hidden_size(model.config)
        self.num_layers = self.family.num_layers(model.config)
        self.state_proj = nn.Linear(state_dim, self.hidden_size) if state_dim else None
        self._templates: dict[int, str] = {}

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def _template(self, n_images: int) -> str:
        """The chat-formatted prompt for `n_images` cameras with the task left as a sentinel (cached)."""
        if n_images not in self._templates:
            content = [{"type": "image"}] * n_images
            if self.state_proj is not None:
                content.append({"type": "text", "text": PROPRIO_TOKEN})
            content.append({"type": "text", "text": self.prompt_template.format(task=_TASK_SENTINEL)})
            messages = [{"role": "user", "content": content}]
            self._templates[n_images] = self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                                           tokenize=False)
        return self._templates[n_images]

    def resize(self, image: Tensor) -> Tensor:
        """[B, 3, H, W] floats in [0, 1] to [B, 3, S, S] with S = image_size."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected camera images shaped [B, 3, H, W], got {tuple(image.shape)}")
        if image.shape[-2:] != (self.image_size, self.image_size):
            image = F.interpolate(image.float(), size=(self.image_size, self.image_size), mode="bilinear",
                                  antialias=True, align_corners=False)
        return image.clamp(0.0, 1.0)

    def _template_parts(self, n_images: int) -> tuple[str, str, str]:
        """The template split as (text up to its last added token before the task, the task's own text
        segment around the sentinel, the rest): the tokenizer matches added tokens first and tokenises each
        stretch between them on its own, so tokenising the three parts apart gives the same ids as the whole."""
        template = self._template(n_images)
        head, tail = template.split(_TASK_SENTINEL)
        added = [token.content for token in self.processor.tokenizer.added_tokens_decoder.values()]
        cut_head = max((head.rfind(t) + len(t) for t in added if t in head), default=0)
        cut_tail = min((tail.find(t) for t in added if t in tail), default=len(tail))
        return head[:cut_head], head[cut_head:] + _TASK_SENTINEL + tail[:cut_tail], tail[cut_tail:]

    def task_token_ids(self, task: str, n_images: int) -> list[int]:
        """Ids of the prompt's text segment holding `task`, with the task tokenised as plain text: a user's
        `<|image_pad|>` or `<|im_end|>` becomes ordinary characters, never a special token."""
        segment = self._template_parts(n_images)[1].replace(_TASK_SENTINEL, task.strip().rstrip("?.").strip())
        return self.processor.tokenizer(segment, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def prompt_token_counter(self, n_images: int):
        """A function counting a task's tokens exactly as `build_inputs` will, on its own copy of the tokenizer
        (a serving thread may call it while the inference thread tokenises)."""
        import copy

        tokenizer = copy.deepcopy(self.processor.tokenizer)
        segment = self._template_parts(n_images)[1]

        def count(task: str) -> int:
            text = segment.replace(_TASK_SENTINEL, task.strip().rstrip("?.").strip())
            return len(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

        return count

    def build_inputs(self, cameras: list[Tensor], tasks: list[str], n_query: int = 0) -> PromptInputs:
        """Tokenise the prompts and patchify the camera images ([B, 3, H, W] each) of one batch.

        The processor tokenises the fixed prefix (chat header, image placeholders, proprio token) and the
        images; the task's segment is tokenised with `split_special_tokens`, so text a user sends can never
        produce a special id; rows are then left-padded so queries sit at the end of every row."""
        prefix, _, rest = self._template_parts(len(cameras))
        images = [self.resize(cam).cpu() for cam in cameras]
        per_sample = [[cam[b] for cam in images] for b in range(len(tasks))]
        out = self.processor(text=[prefix] * len(tasks), images=per_sample, do_rescale=False,
                             return_tensors="pt", return_mm_token_type_ids=True)
        tokenizer = self.processor.tokenizer
        rest_ids = tokenizer(rest, add_special_tokens=False)["input_ids"] + [self.query_id] * n_query
        tails = [self.task_token_ids(task, len(cameras)) + rest_ids for task in tasks]
        width = max(len(t) for t in tails)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        pads = [width - len(t) for t in tails]
        tail_ids = torch.tensor([[pad_id] * n + t for n, t in zip(pads, tails, strict=True)], dtype=torch.long)
        tail_mask = torch.tensor([[0] * n + [1] * (width - n) for n in pads], dtype=torch.long)
        # Left padding: each row's pad run moves in front of its prefix.
        input_ids, attention_mask, mm_types = [], [], []
        for row, n in enumerate(pads):
            input_ids.append(torch.cat([tail_ids[row, :n], out["input_ids"][row], tail_ids[row, n:]]))
            attention_mask.append(torch.cat([tail_mask[row, :n], out["attention_mask"][row], tail_mask[row, n:]]))
            mm_types.append(torch.cat([torch.zeros(n, dtype=torch.long), out["mm_token_type_ids"][row],
                                       torch.zeros(width - n, dtype=torch.long)]))
        device = self.device
        return PromptInputs(torch.stack(input_ids).to(device), torch.stack(attention_mask).to(device),
                            out["pixel_values"].to(device, self.model.dtype), out["image_grid_thw"].to(device),
                            torch.stack(mm_types).to(out["mm_token_type_ids"].dtype).to(device))

    def embed(self, input_ids: Tensor, state: Tensor | None, queries: Tensor | None) -> Tensor:
        """Token embeddings with the proprioception and query placeholders replaced."""
        embeds = self.model.get_input_embeddings()(input_ids)
        if self.state_proj is not None:
            if state is None:
                raise ValueError("this policy was built with use_state=True but the batch has no observation.state")
            rows, cols = (input_ids == self.proprio_id).nonzero(as_tuple=True)
            projected = self.state_proj(state.to(self.state_proj.weight.dtype)).to(embeds.dtype)
            embeds = embeds.index_put((rows, cols), projected[rows])
        if queries is not None:
            rows, cols = (input_ids == self.query_id).nonzero(as_tuple=True)
            embeds = embeds.index_put((rows, cols), queries.to(embeds.dtype).repeat(input_ids.shape[0], 1))
        return embeds

    def forward(self, inputs: PromptInputs, state: Tensor | None = None, queries: Tensor | None = None,
                use_cache: bool = False):
        """One pass over the prompts; returns the backbone output (last hidden state, cache)."""
        return self.family.embed_forward(
            self.model, input_ids=inputs.input_ids, inputs_embeds=self.embed(inputs.input_ids, state, queries),
            attention_mask=inputs.attention_mask, pixel_values=inputs.pixel_values,
            image_grid_thw=inputs.image_grid_thw, mm_token_type_ids=inputs.mm_token_type_ids, use_cache=use_cache)

    def decode_step(self, token_ids: Tensor, attention_mask: Tensor, past_key_values):
        """One cached step of text decoding after `forward(..., use_cache=True)`; token_ids is [B, 1]."""
        past = past_key_values.get_seq_length()
        positions = torch.arange(past, past + token_ids.shape[1], device=token_ids.device)
        # Text positions continue from the prompt's 3-D rope positions, offset by the stored rope deltas.
        positions = positions.view(1, 1, -1).expand(3, token_ids.shape[0], -1) + self.model.model.rope_deltas.view(1, -1, 1)
        return self.model.model.language_model(inputs_embeds=self.model.get_input_embeddings()(token_ids),
                                               position_ids=positions, attention_mask=attention_mask,
                                               past_key_values=past_key_values, use_cache=True)
