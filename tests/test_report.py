"""Tests for lth_jax.report: writers, progress, image grids, CSV, markdown, aggregate, plots."""
import glob
import json
import math
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from lth_jax import report


def read_tfevents(path):
  """(tag, step, value) of every scalar in a TFRecord event file."""
  data, out, i = open(path, "rb").read(), [], 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
    out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    i += 12 + n + 4
  return out


def test_metric_writer_jsonl_and_tfevents(tmp_path):
  with report.MetricWriter(tmp_path) as writer:
    writer.write_scalars(10, {"loss": jnp.float32(0.5), "count": np.int64(3)})
    writer.write_scalars(20, {"fid": 41.25}, level=3, branch="ticket")
  lines = [json.loads(s) for s in open(tmp_path / "metrics.jsonl")]
  assert lines == [{"step": 10, "loss": 0.5, "count": 3},
                   {"step": 20, "level": 3, "branch": "ticket", "fid": 41.25}]
  (events,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  assert sorted(read_tfevents(events)) == [("count", 10, 3.0),
                                           ("fid/level_3/branch_ticket", 20, 41.25),
                                           ("loss", 10, 0.5)]


def test_metric_writer_appends_and_rejects_bad_values(tmp_path):
  with report.MetricWriter(tmp_path) as writer:
    writer.write_scalars(1, {"loss": float("nan")})
    with pytest.raises(ValueError, match="'step'"):
      writer.write_scalars(2, {"step": 2})
    with pytest.raises(ValueError, match="'level'"):
      writer.write_scalars(2, {"level": 1.0}, level=1)
    with pytest.raises(ValueError, match="shape"):
      writer.write_scalars(2, {"loss": np.zeros(3)})
    with pytest.raises(ValueError, match="number"):
      writer.write_scalars(2, {"name": "fid"})
  with report.MetricWriter(tmp_path) as writer:  # a resumed run appends
    writer.write_scalars(3, {"loss": 1.0})
  lines = [json.loads(s) for s in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in lines] == [1, 3] and math.isnan(lines[0]["loss"])


def test_metric_writer_disabled_writes_nothing(tmp_path):
  writer = report.MetricWriter(tmp_path / "w", enabled=False)
  writer.write_scalars(1, {"loss": 1.0})
  writer.flush()
  writer.close()
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("channels,mode", [(1, "L"), (3, "RGB")])
def test_save_image_grid_dims_and_values(tmp_path, channels, mode):
  images = np.linspace(-1.0, 1.0, 7 * 4 * 5 * channels, dtype=np.float32).reshape(7, 4, 5, channels)
  path = report.save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=3)
  img = Image.open(path)
  assert img.mode == mode and img.size == (3 * 5 + 4 * 2, 3 * 4 + 4 * 2)  # (width, height)
  pix = np.asarray(img).reshape(img.size[1], img.size[0], channels)
  expected0 = np.round((images[0] + 1) * 127.5).astype(np.uint8)
  np.testing.assert_array_equal(pix[2:6, 2:7], expected0)
  np.testing.assert_array_equal(pix[0], 0)  # padding
  u8 = report.save_image_grid((images * 100 + 120).astype(np.uint8), tmp_path / "u8.png")
  assert Image.open(u8).size == (3 * 5 + 4 * 2, 3 * 4 + 4 * 2)  # default nrow = ceil(sqrt(7))


def test_save_image_grid_errors(tmp_path):
  images = np.zeros((4, 8, 8, 3), np.float32)
  images[1, 2, 3, 0] = np.nan
  with pytest.raises(ValueError, match="1 of .* NaN"):
    report.save_image_grid(images, tmp_path / "nan.png")
  assert not (tmp_path / "nan.png").exists()
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    report.save_image_grid(np.zeros((4, 8, 8)), tmp_path / "x.png")
  with pytest.raises(ValueError, match="uint8 for 0..255"):
    report.save_image_grid(np.full((2, 4, 4, 1), 200.0), tmp_path / "x.png")
  with pytest.raises(TypeError, match="int32"):
    report.save_image_grid(np.zeros((2, 4, 4, 1), np.int32), tmp_path / "x.png")


def test_csv_round_trip(tmp_path):
  rows = [{"branch": "ticket", "level": 0, "sparsity": 0.0, "seed": 0, "fid": 40.123456789012},
          {"branch": "snip", "level": 2, "sparsity": 0.36, "fid": np.float64(55.5), "ok": True},
          {"branch": "random_reinit", "level": 1, "sparsity": 0.2, "seed": 1, "fid": float("inf"),
           "note": "a,b \"q\""}]
  path = report.write_csv(rows, tmp_path / "results" / "r.csv")
  header = open(path).readline().strip()
  assert header == "branch,level,sparsity,seed,fid,ok,note"
  back = report.read_csv(path)
  assert back[0] == {**rows[0], "ok": None, "note": None}
  assert back[1] == {"branch": "snip", "level": 2, "sparsity": 0.36, "seed": None, "fid": 55.5,
                     "ok": True, "note": None}
  assert back[2]["fid"] == float("inf") and back[2]["note"] == "a,b \"q\""
  assert isinstance(back[0]["level"], int) and isinstance(back[0]["sparsity"], float)


def test_markdown_table():
  rows = [{"branch": "ticket", "fid": 41.23456, "n": 3}, {"branch": "a|b", "fid": None, "n": 1}]
  table = report.markdown_table(rows)
  assert table.splitlines() == ["| branch | fid | n |",
                                "|---|---:|---:|",
                                "| ticket | 41.23 | 3 |",
                                "| a\\|b |  | 1 |"]
  assert report.markdown_table(rows, ["n", "fid"], floatfmt=".1f").splitlines()[2] == "| 3 | 41.2 |"
  with pytest.raises(ValueError, match="no columns"):
    report.markdown_table([])


def test_aggregate_mean_std_over_seeds():
  rows = [{"branch": "ticket", "level": 1, "sparsity": 0.2, "seed": s, "fid": f, "run": f"r{s}"}
          for s, f in enumerate([10.0, 12.0, 17.0])]
  rows += [{"branch": "snip", "level": 1, "sparsity": 0.2, "seed": 0, "fid": 30.0}]
  out = report.aggregate(rows, metrics=["fid"])
  assert [(r["branch"], r["level"], r["n"]) for r in out] == [("ticket", 1, 3), ("snip", 1, 1)]
  assert out[0]["fid_mean"] == pytest.approx(13.0)
  assert out[0]["fid_std"] == pytest.approx(np.std([10.0, 12.0, 17.0], ddof=1))
  assert out[0]["sparsity"] == 0.2 and "run" not in out[0] and "seed" not in out[0]
  assert out[1]["fid_mean"] == 30.0 and out[1]["fid_std"] == 0.0
  with pytest.raises(ValueError, match=r"seed=\['0'\] appears more than once for branch=snip"):
    report.aggregate(rows + [rows[-1]], metrics="fid")
  with pytest.raises(ValueError, match="missing in 1 of 2 rows"):
    report.aggregate(rows + [{"branch": "snip", "level": 1, "seed": 1}], metrics="fid")


def test_plot_metric_vs_sparsity(tmp_path):
  rng = np.random.default_rng(0)
  rows = [{"branch": "dense", "level": 0, "sparsity": 0.0, "seed": s, "fid": 40 + rng.normal()}
          for s in range(3)]
  for branch in ("ticket", "random_reinit", "random_pruning", "snip", "grasp", "synflow"):
    for level in range(13):
      for seed in range(3 if branch == "ticket" else 1):
        rows.append({"branch": branch, "level": level, "sparsity": 1 - 0.8 ** level,
                     "seed": seed, "fid": 40 + level * rng.uniform(0.5, 3)})
  path = report.plot_metric_vs_sparsity(rows, "fid", tmp_path / "plots" / "fid.png",
                                        title="DCGAN, Fashion-MNIST")
  assert os.path.getsize(path) < 200_000
  img = Image.open(path)
  assert img.format == "PNG" and img.size == (640, 420)
  with pytest.raises(ValueError, match="no row has a value for 'is'"):
    report.plot_metric_vs_sparsity(rows, "is", tmp_path / "x.png")
  with pytest.raises(ValueError, match=r"sparsity' in \[0, 1\)"):
    report.plot_metric_vs_sparsity([{"branch": "ticket", "level": 1, "sparsity": 1.0, "fid": 1}],
                                   "fid", tmp_path / "x.png")
