"""Data-parallel fit: 2 processes launched by torchrun (gloo on the CPU)."""

import json
import os
import subprocess
import sys

import numpy as np

from ldae import LDAEEncoder
from ldae.training.checkpoint import load_checkpoint

EPOCHS = dict(preset="tiny", image_shape=(16, 16, 16), ae_epochs=2, diffusion_epochs=2,
              representation_epochs=8, random_state=0)

# Run by each process: fit, then report a digest of the weights and the history.
SCRIPT = f"""
import json, os, sys
import numpy as np
from ldae import LDAEEncoder
from ldae.training.checkpoint import payload_digest
X = np.load(sys.argv[1])
model = LDAEEncoder(**{EPOCHS!r}, checkpoint_dir=sys.argv[2]).fit(X)
rank = os.environ["RANK"]
if rank == "0":
    model.save(os.path.join(sys.argv[3], "model.pt"))
with open(os.path.join(sys.argv[3], f"rank{{rank}}.json"), "w") as file:
    json.dump({{"weights": payload_digest(model._cpu_weights()), "history": model.history_,
               "world_size": os.environ["WORLD_SIZE"]}}, file)
"""


def test_two_processes_train_one_model_as_well_as_one_process_with_their_joint_batch(tmp_path):
    X = np.random.default_rng(0).gamma(2.0, 50.0, (8, 16, 16, 16)).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    (tmp_path / "fit.py").write_text(SCRIPT)
    launch = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(tmp_path / "fit.py"), str(tmp_path / "X.npy"), str(tmp_path / "checkpoints"),
         str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert launch.returncode == 0, launch.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [report["world_size"] for report in ranks] == ["2", "2"]
    # Each process trained on its half of every batch, yet both hold the same weights.
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["history"] == ranks[1]["history"]

    # One process with the joint batches (2 x 4 scans in every stage) takes the same steps:
    # the losses agree up to the random draws (noise, time steps) that differ between the runs.
    single = LDAEEncoder(**EPOCHS, batch_size=8, ae_batch_size=8).fit(X)
    parallel = ranks[0]["history"]
    np.testing.assert_allclose(parallel["autoencoder"]["loss"],
                               single.history_["autoencoder"]["loss"], rtol=0.05)
    np.testing.assert_allclose(parallel["diffusion"]["loss"][-1],
                               single.history_["diffusion"]["loss"][-1], rtol=0.2)
    # a one-batch PDAE loss swings with its timestep draws: compare the stage's mean
    np.testing.assert_allclose(np.mean(parallel["representation"]["loss"]),
                               np.mean(single.history_["representation"]["loss"]), rtol=0.2)

    # Process 0 wrote the checkpoints and the model, which embeds the cohort.
    for stage in ("autoencoder", "diffusion", "representation"):
        assert load_checkpoint(tmp_path / "checkpoints" / f"{stage}.pt")["history"] == \
            parallel[stage]
    model = LDAEEncoder.load(tmp_path / "model.pt")
    embeddings = model.transform(X)
    assert embeddings.shape == (8, model.config_.embedding_dim)
    assert np.isfinite(embeddings).all()
    assert embeddings.std(axis=0).mean() > 0.1 * single.transform(X).std(axis=0).mean()
