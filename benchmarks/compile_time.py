"""XLA CPU compile time vs step time of one masked train step, by XLA flags.

The test suite compiles many small programs and runs few steps of each, so it runs XLA at its
lowest backend optimisation level with the older (non-MLIR) fusion emitters
(``tests/conftest.py``); the library keeps XLA's defaults. This measures both sides of that
choice for one family at one width: the CPU seconds to compile one masked train step
(``steps.multi_step(family, 1)``, batch of the family's default preset) and the wall / CPU
milliseconds of a step, median of ``--steps`` steps after one warm-up step. Each flag set runs in
its own subprocess (XLA_FLAGS must be set before JAX starts), without a persistent cache.

Run (about 1 minute per family on 2 cores)::

  .venv/bin/python benchmarks/compile_time.py --families=dcgan,wgan --width=16
"""
import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

_FAMILIES = flags.DEFINE_list("families", ["dcgan", "wgan"], "Registered family names.")
_WIDTH = flags.DEFINE_integer("width", 16, "model.width of each family's default preset.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after the warm-up step.")

LOW = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
FLAG_SETS = {
    "default": "",
    "legacy emitters": "--xla_cpu_use_fusion_emitters=false",
    "level 0 (suite, bit-identity workers)": LOW,
    "level 0 + legacy emitters (suite)": f"{LOW} --xla_cpu_use_fusion_emitters=false",
}


def child(family: str, width: int, steps: int) -> dict:
  """Compile and time one masked train step in this process."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from lth_jax import configs, families, steps as steps_lib  # pylint: disable=g-import-not-at-top
  config = configs.get_config(family, "fashion_mnist", "default")
  config.model.width = width
  fam = families.from_config(config)
  state = jax.jit(fam.init)(jax.random.key(0))
  m = steps_lib.dense_masks(fam, state.params, dict(config.prune.parts),
                            tuple(config.prune.exclude))
  images = jnp.asarray(np.random.RandomState(0).randint(
      0, 256, (2 * config.train.batch_size, 32, 32, 1)), jnp.uint8)
  fn = jax.jit(steps_lib.multi_step(fam, 1))
  cpu = time.process_time()
  compiled = fn.lower(state, m, images, jax.random.key(1)).compile()
  compile_cpu = time.process_time() - cpu
  state, _ = compiled(state, m, images, jax.random.key(1))
  jax.block_until_ready(state)
  walls, cpus = [], []
  for i in range(steps):
    wall, cpu = time.perf_counter(), time.process_time()
    state, _ = compiled(state, m, images, jax.random.key(i))
    jax.block_until_ready(state)
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  return {"compile_cpu_s": compile_cpu, "step_wall_ms": 1e3 * statistics.median(walls),
          "step_cpu_ms": 1e3 * statistics.median(cpus)}


def main(argv) -> None:
  if len(argv) > 1 and argv[1] == "child":
    print(json.dumps(child(argv[2], int(argv[3]), int(argv[4]))))
    return
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  print(f"load average before: {os.getloadavg()[0]:.2f}, width {_WIDTH.value}")
  results = {}
  for family in _FAMILIES.value:
    for name, xla_flags in FLAG_SETS.items():
      env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu",
             "PYTHONPATH": root}
      env.pop("JAX_COMPILATION_CACHE_DIR", None)
      out = subprocess.run([sys.executable, os.path.abspath(__file__), "child", family,
                            str(_WIDTH.value), str(_STEPS.value)], env=env, check=True,
                           capture_output=True, text=True).stdout
      results[family, name] = r = json.loads(out.strip().splitlines()[-1])
      print(f"{family:8s} {name:40s} compile {r['compile_cpu_s']:6.2f} CPU-s   step "
            f"{r['step_wall_ms']:7.1f} ms wall {r['step_cpu_ms']:7.1f} ms CPU", flush=True)
  print("\n## ratios (to XLA's defaults)")
  for family in _FAMILIES.value:
    base = results[family, "default"]
    for name in FLAG_SETS:
      r = results[family, name]
      print(f"{family:8s} {name:40s} compile {r['compile_cpu_s'] / base['compile_cpu_s']:.2f}x"
            f"   step wall {r['step_wall_ms'] / base['step_wall_ms']:.2f}x")
  print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  app.run(main)
