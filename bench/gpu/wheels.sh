#!/bin/bash
# Download, on a CPU machine with network, the wheels a bare GPU machine lacks for bench/real_size_gpu.sh
# (torch, accelerate, peft are there; lerobot, trl, hydra-core and friends are not; liger-kernel for the SFT
# loss.impl=liger, pure Python over the machine's Triton). About 22 MB into .whl/,
# which git ignores (.git/info/exclude) and the device tool carries: run(carry=[".whl"]).
#   bash bench/gpu/wheels.sh [DEST]        # DEST defaults to .whl
set -euo pipefail
DEST=${1:-.whl}
mkdir -p "$DEST"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n' >> "$(git rev-parse --git-common-dir)/info/exclude"
PY=${PY:-.venv/bin/python}
# Versions match the project's .venv (pyproject.toml pins); CPython 3.12, manylinux x86-64, no dependencies.
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST" \
  transformers==5.23.0 tokenizers==0.23.3 safetensors==0.8.0 huggingface_hub==1.33.0 trl==1.16.0 lerobot==0.6.1 datasets==4.8.5 \
  draccus==0.11.6 gymnasium==1.4.0 Farama-Notifications hydra-core==1.3.2 omegaconf==2.3.1 pydantic==2.14.4 \
  pydantic_core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0 jsonlines==4.0.0 mergedeep==1.3.4 \
  multiprocess==0.70.19 dill==0.4.1 pytz tzdata termcolor toml websockets==17.4 msgpack==1.2.4 \
  pyyaml-include liger-kernel==0.8.5
# antlr4 (hydra's parser runtime) ships as an sdist only: build its pure-Python wheel here.
$PY -m pip wheel --quiet --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3
du -sh "$DEST"; ls "$DEST" | wc -l
