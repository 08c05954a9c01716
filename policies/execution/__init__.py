"""How a predicted action chunk is executed on the robot: open loop, temporal ensembling, real-time chunking,
and an asynchronous robot-side chunk queue.

Modes (`VSTVLAConfig.execution_mode`, served in the connect metadata under `execution`):
- `open_loop`: execute the first `n_action_steps` actions of each chunk, then predict again (LeRobot's
  `select_action`, openpi's default).
- `temporal_ensemble`: predict a chunk every step and execute the exponentially weighted average of every
  prediction made for this step (ACT, `temporal_ensemble_coeff`); for the regression heads.
- `rtc`: real-time chunking for the flow head (arXiv 2506.07339): the next chunk is sampled with guided
  inpainting so its first `inference_delay_steps` actions equal the committed ones and it blends into the
  rest of the previous chunk.
`action_queue.AsyncChunkQueue` is the robot side of asynchronous inference for any head (LeRobot's async
inference: `actions_per_chunk`, `chunk_size_threshold`, an aggregate function over overlapping steps); it
imports only numpy so it runs in the robot's own venv.
"""

EXECUTION_MODES = ("open_loop", "temporal_ensemble", "rtc")
