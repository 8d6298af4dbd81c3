"""Checkpoint files: atomic, checksummed, and never executing code when loaded."""

from pathlib import Path

import pytest
import torch

from ldae.exceptions import CheckpointError
from ldae.training.checkpoint import StageCheckpoints, load_checkpoint, save_checkpoint
from ldae.training.loop import Stage, train_stage


def payload():
    return {
        "weights": {"conv.weight": torch.linspace(-1, 1, 4096).reshape(16, 256),
                    "norm.bias": torch.zeros(16, dtype=torch.bfloat16),
                    "n_averaged": torch.tensor(7)},
        "mask": torch.tensor([True, False]),
        "generator": torch.Generator().manual_seed(3).get_state(),
        "history": {"loss": [0.5, 0.25], "val_loss": []},
        "settings": ("tiny", 3, None, 1e-4, torch.float32),
    }


def assert_same(loaded, expected):
    assert type(loaded) is type(expected)
    if isinstance(expected, torch.Tensor):
        assert loaded.dtype == expected.dtype and torch.equal(loaded, expected)
    elif isinstance(expected, dict):
        assert list(loaded) == list(expected)
        for key in expected:
            assert_same(loaded[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(loaded) == len(expected)
        for item, expected_item in zip(loaded, expected):
            assert_same(item, expected_item)
    else:
        assert loaded == expected


def test_a_checkpoint_reads_back_what_was_saved(tmp_path):
    save_checkpoint(payload(), tmp_path / "sub" / "state.pt")
    assert_same(load_checkpoint(tmp_path / "sub" / "state.pt"), payload())
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["state.pt"]  # no temporary left


def test_damaged_tensor_bytes_are_caught_by_the_checksum(tmp_path):
    path = tmp_path / "state.pt"
    save_checkpoint(payload(), path)
    content = bytearray(path.read_bytes())
    start = content.find(payload()["weights"]["conv.weight"].numpy().tobytes()[:64])
    assert start > 0
    content[start + 1000] ^= 0x10
    path.write_bytes(bytes(content))
    # torch itself reads the damaged weights without complaint...
    damaged = torch.load(path, weights_only=True)["payload"]["weights"]["conv.weight"]
    assert not torch.equal(damaged, payload()["weights"]["conv.weight"])
    # ...the checksum does not.
    with pytest.raises(CheckpointError, match=rf"{path}.* is corrupt: .*SHA-256"):
        load_checkpoint(path)


@pytest.mark.parametrize("kept", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_a_truncated_checkpoint_is_refused_naming_the_file(tmp_path, kept):
    path = tmp_path / "state.pt"
    save_checkpoint(payload(), path)
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * kept)])
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is (truncated|corrupt)"):
        load_checkpoint(path)


def test_a_file_without_checksum_is_refused(tmp_path):
    torch.save(payload(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="plain.pt has no checksum"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _Exploit:
    """Unpickling this runs ``Path(marker).touch()``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"format": "ldae.checkpoint", "version": 1, "sha256": "",
                "payload": _Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_checkpoint({"epoch": 1}, path)

    def crash_halfway(obj, stream):
        stream.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    with pytest.raises(TypeError, match="cannot hold a object"):
        save_checkpoint({"epoch": 3, "bad": object()}, path)
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_stage_checkpoints_refuse_a_corrupt_stage_and_ignore_another_fits(tmp_path):
    checkpoints = StageCheckpoints(tmp_path, fingerprint="fit-a")
    checkpoints.save("diffusion", {"epochs_done": 2}, partial=True)
    checkpoints.save("autoencoder", {"weights": payload()["weights"]})
    assert checkpoints.load("diffusion", partial=True)["epochs_done"] == 2
    assert StageCheckpoints(tmp_path, fingerprint="fit-b").load("autoencoder") is None
    path = tmp_path / "autoencoder.pt"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{path} is truncated"):
        checkpoints.load("autoencoder")


def _regression_stage(epochs):
    """A linear model trained by SGD on shuffled batches: order changes the weights."""
    torch.manual_seed(0)
    network = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)

    def step(batch, generator):
        x, y = batch
        noise = torch.randn(y.shape, generator=generator) * 0.01
        loss = ((network(x) - y - noise) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss)

    stage = Stage("diffusion", step, lambda batch, generator: 0.0,
                  {"network": network, "optimizer": optimizer}, epochs)
    return stage, network


def _shuffled_loader():
    data = torch.utils.data.TensorDataset(torch.randn(24, 3, generator=torch.Generator().manual_seed(1)),
                                          torch.randn(24, 1, generator=torch.Generator().manual_seed(2)))
    return torch.utils.data.DataLoader(data, batch_size=4, shuffle=True,
                                       generator=torch.Generator().manual_seed(3))


def test_a_stage_resumed_mid_way_is_bitwise_the_uninterrupted_one(tmp_path):
    stage, network = _regression_stage(6)
    train_stage(stage, _shuffled_loader(), generator=torch.Generator().manual_seed(0))
    uninterrupted = network.weight.detach().clone()

    class Killed(Exception):
        pass

    stage, network = _regression_stage(6)
    checkpoints = StageCheckpoints(tmp_path, fingerprint="fit")
    step, calls = stage.step, []

    def dies_in_epoch_4(batch, generator):
        calls.append(1)
        if len(calls) > 3 * 6:  # 6 batches per epoch
            raise Killed
        return step(batch, generator)

    stage.step = dies_in_epoch_4
    with pytest.raises(Killed):  # a periodic checkpoint after every epoch
        train_stage(stage, _shuffled_loader(), generator=torch.Generator().manual_seed(0),
                    checkpoints=checkpoints, checkpoint_seconds=0)
    assert checkpoints.load("diffusion", partial=True)["epochs_done"] == 3

    stage, network = _regression_stage(6)  # a new process: fresh loader and generators
    train_stage(stage, _shuffled_loader(), generator=torch.Generator().manual_seed(0),
                checkpoints=checkpoints, checkpoint_seconds=0)
    assert torch.equal(network.weight, uninterrupted)
    assert len(stage.history["loss"]) == 6
