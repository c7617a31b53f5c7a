#!/usr/bin/env bash
# The GPU measurements issue 13 still needs, as two calls of at most 10 minutes each on the GPU
# machine (see BENCHMARKS.md, "For the next GPU session"). Prepare here with
# ../shared/device/prepare.sh, then run through the device tool with carry [".device"]:
#
#   source .device/env.sh && bash benchmarks/gpu_session.sh 1    # ~5-7 min
#   source .device/env.sh && bash benchmarks/gpu_session.sh 2    # ~4-6 min
#
# Call 1: where a stacked step's time goes (section 5, with kernel counts), stacked tickets in
# 'sequential' and 'batched', fused steps with XLA's default command buffers, then the fused
# steps again with while loops recorded into CUDA graphs (+WHILE,+CONDITIONAL).
# Call 2: early-bird at the benchmark's usual size and with a batch of 512 (is the FLOPs cut
# wall-clock once the step is bound by arithmetic?).
# Call 3 (when the measurements are done and time is left): the reproduction's zoo searches
# (claim 1, one seed each, cpu-scale sizes) on the GPU, for at most $BUDGET_S seconds (480); the
# finished jobs come back as $OUT/zoo_jobs.tgz (results, masks, grids; no weights). Here, unpack
# it into the CPU workdir for the jobs it does not have yet:
#   tar xzf zoo_jobs.tgz -C /work/reproduce_cpu2 --skip-old-files
# Before the call, copy this machine's Fashion-MNIST classifier so that FID/KID use the same
# feature space as the CPU runs:
#   mkdir -p .device/classifiers && cp ~/.cache/lth_jax/classifiers/fmnist_clf-* .device/classifiers/
# Each writes its log to $OUT (or ./gpu_session_out when $OUT is unset).
set -euo pipefail
case "${1:-}" in
  1|2|3) ;;
  *) echo "usage: bash benchmarks/gpu_session.sh 1|2|3" >&2; exit 2 ;;
esac
out="${OUT:-gpu_session_out}"
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
case "$1" in
  1)
    python benchmarks/accelerator.py --sections=5,1,2 --executions=sequential,batched \
      --formulations=xla,patches --steps=50 2>&1 | tee "$out/accelerator.txt"
    XLA_FLAGS=--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL \
      python benchmarks/accelerator.py --sections=2 --formulations=xla --steps=50 2>&1 \
      | tee "$out/accelerator_command_buffers.txt"
    ;;
  2)
    for batch in 64 512; do
      python benchmarks/early_bird.py --families=dcgan --steps=12000 --sparsities=0.75 \
        --seeds=0 --batch_size="$batch" --workdir=/tmp/lth_eb_gpu 2>&1 \
        | grep -v '^I[0-9]' | tee "$out/early_bird_b$batch.txt"
    done
    ;;
  3)
    mkdir -p "${LTH_JAX_CACHE_DIR:?source .device/env.sh first}/classifiers"
    cp .device/classifiers/* "$LTH_JAX_CACHE_DIR/classifiers/"
    jobs=${JOBS:-search_linear_ae,search_vae_beta1,search_wgan_gp,search_sngan,search_resnet_vae,search_wgan,search_resnet_dcgan}
    timeout "${BUDGET_S:-480}" python experiments/reproduce.py --scale=cpu --jobs="$jobs" \
      --workdir=/tmp/repro --results_dir=/tmp/repro/results 2>&1 | grep -v '^I[0-9]' \
      | tee "$out/reproduce.txt" || true
    done_jobs=$(cd /tmp/repro && for d in search_*; do
                  if [ -f "$d/job_done.json" ]; then echo "$d"; fi; done)
    echo "finished: ${done_jobs:-none}" | tee -a "$out/reproduce.txt"
    [ -z "$done_jobs" ] || tar czf "$out/zoo_jobs.tgz" -C /tmp/repro --exclude=trained \
      --exclude=theta_0 --exclude=theta_k --exclude='checkpoints*' --exclude=job.lock $done_jobs
    ;;
esac
