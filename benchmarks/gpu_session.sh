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
# Call 3 (when the measurements are done and time is left): reproduction jobs (cpu-scale sizes)
# on the GPU, one after another in $JOBS's order, until $BUDGET_S seconds (480) are spent. The
# default list puts the zoo's searches first (claim 1, one seed each: issue 15's rows), then the
# DCGAN jobs no other job reads weights from (claims 3, 4 and 6), the CPU's longest: on a CPU core
# a width-16 DCGAN training of 4000 steps takes ~7 minutes. Every finished job comes back in
# $OUT/jobs.tgz (results, masks, grids; no weights); a job cut by the budget is dropped. Here:
#   bash benchmarks/gpu_session.sh unpack <files_at>/jobs.tgz /work/reproduce_cpu2
# unpacks the jobs the CPU workdir does not have at all, and names the others (a job the CPU
# workers have started stays theirs: one job's runs come from one machine).
# Before the call, copy this machine's Fashion-MNIST classifier so that FID/KID use the same
# feature space as the CPU runs:
#   mkdir -p .device/classifiers && cp ~/.cache/lth_jax/classifiers/fmnist_clf-* .device/classifiers/
# Each writes its log to $OUT (or ./gpu_session_out when $OUT is unset).
set -euo pipefail
case "${1:-}" in
  1|2|3) ;;
  unpack)
    [ $# -eq 3 ] || { echo "usage: bash benchmarks/gpu_session.sh unpack JOBS_TGZ WORKDIR" >&2;
                      exit 2; }
    for job in $(tar tzf "$2" | cut -d/ -f1 | sort -u); do
      if [ -e "$3/$job" ]; then
        echo "kept the workdir's own $job (it exists in $3)"
      else
        tar xzf "$2" -C "$3" "$job" && echo "unpacked $job"
      fi
    done
    exit 0 ;;
  *) echo "usage: bash benchmarks/gpu_session.sh 1|2|3|unpack" >&2; exit 2 ;;
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
    zoo=search_wgan_gp,search_sngan,search_wgan,search_linear_ae,search_vae_beta1,search_resnet_vae
    zoo=$zoo,search_resnet_dcgan
    dcgan=search_dcgan_only_generator,search_dcgan_only_discriminator,search_dcgan_rewind0
    dcgan=$dcgan,early_bird_dcgan_0.3,early_bird_dcgan_0.5,early_bird_dcgan_0.6,early_bird_dcgan_0.75
    deadline=$((SECONDS + ${BUDGET_S:-480}))
    for job in $(echo "${JOBS:-$zoo,$dcgan}" | tr , ' '); do
      left=$((deadline - SECONDS))
      [ "$left" -gt 30 ] || break
      timeout "$left" python experiments/reproduce.py --scale=cpu --jobs="$job" \
        --workdir=/tmp/repro --results_dir=/tmp/repro/results 2>&1 | grep -v '^I[0-9]' \
        | tee -a "$out/reproduce.txt" || true
    done
    done_jobs=$(cd /tmp/repro && for d in */; do
                  if [ -f "$d/job_done.json" ]; then echo "${d%/}"; fi; done)
    echo "finished: ${done_jobs:-none}" | tee -a "$out/reproduce.txt"
    [ -z "$done_jobs" ] || tar czf "$out/jobs.tgz" -C /tmp/repro --exclude=trained \
      --exclude=theta_0 --exclude=theta_k --exclude='checkpoints*' --exclude=job.lock $done_jobs
    ;;
esac
