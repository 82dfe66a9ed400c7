#!/usr/bin/env bash
# The prepared GPU check, for a session that is lent a GPU machine (device tool).
# Run from the repo root there; results land in $OUT (or /tmp/gpu_check).
#
# That machine's python3 has torch (CUDA), pandas, pyarrow, safetensors and
# torchmetrics, but not hydra-core, omegaconf or antlr4: carry their wheels in
# .whl (see the device tool's README) and name .whl in `carry`.
set -euo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/device.txt"

# 1. CUDA paths of the real pipeline: auto picks CUDA, AMP bf16, artifact loads on CPU.
common="data=synthetic data.synthetic.rows=200000 train=quick paths.data_dir=/tmp/gpu_data"
python3 train.py $common device=auto paths.outputs_dir="$OUT/runs" 2>&1 | tee "$OUT/train_cuda.log"
python3 evaluate.py device=cpu paths.outputs_dir="$OUT/runs" 2>&1 | tee "$OUT/evaluate_cpu_of_cuda_model.log"
python3 train.py $common device=cpu paths.outputs_dir="$OUT/runs_cpu" 2>&1 | tee "$OUT/train_cpu.log"

# 2. Throughput, side by side on this machine: CUDA with and without AMP, and its CPU.
python3 -m benchmarks.train_throughput --device cuda --repeats 5 --out "$OUT" --name throughput_cuda_bf16
python3 -m benchmarks.train_throughput --device cuda --no-amp --repeats 5 --out "$OUT" --name throughput_cuda_fp32
python3 -m benchmarks.train_throughput --device cpu --repeats 3 --skip-dataloader --out "$OUT" --name throughput_gpu_host_cpu
