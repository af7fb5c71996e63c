"""benchmark.seeds and benchmark.data: seeded choices, uint8 splits, loading, synthetic stand-ins.

Unit tests run on synthetic data and tiny IDX files written to a temporary folder; the tests
marked by the ``data_root`` fixture read the real MNIST / FashionMNIST files (skipped visibly
without them, failing under CI=true).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import datasets
from torchvision.transforms.functional import to_tensor

from benchmark import data
from benchmark.data import CorruptDataError, DataError, DataNotFoundError, Split
from benchmark.models import make_model
from benchmark.seeds import generator, seed_hash


@pytest.fixture(autouse=True)
def _fresh_caches():
    data.clear_cache()
    yield
    data.clear_cache()


def _unique_split(n: int = 100) -> Split:
    """Distinct images (pixel 0 holds the index) and labels = index: membership is traceable."""
    inputs = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    inputs[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return Split(inputs=inputs, targets=torch.arange(n))


def _write_idx(root: Path, cls: type, n_train: int = 12, n_test: int = 5) -> None:
    """Tiny uncompressed IDX files in torchvision's layout ``root/<Class>/raw``."""
    raw = root / cls.__name__ / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = (torch.arange(n * 784) % 256).to(torch.uint8)
        labels = (torch.arange(n) % 10).to(torch.uint8)
        header = struct.pack(">iiii", 0x0803, n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.numpy().tobytes())
        header = struct.pack(">ii", 0x0801, n)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.numpy().tobytes())


# -- seeds ---------------------------------------------------------------------------------------


def test_seed_hash_is_deterministic_31_bit_and_keyed_by_every_part():
    assert seed_hash(0, "permutation", 3) == seed_hash(0, "permutation", 3)
    # A known value: stable across processes and platforms (md5 of the repr, not Python's hash).
    assert seed_hash(0, "permutation", 3) == 1465525165
    values = {seed_hash(s, role, t) for s in (0, 1) for role in ("a", "b") for t in (0, 1)}
    assert len(values) == 8
    assert all(0 <= v < 2**31 for v in values)
    assert seed_hash(np.int64(0), "permutation", np.int32(3)) == seed_hash(0, "permutation", 3)


def test_generator_is_seeded_by_role_not_by_global_state():
    torch.manual_seed(123)
    a = torch.randperm(50, generator=generator(7, "role"))
    torch.manual_seed(456)
    torch.rand(10)  # global draws do not matter
    b = torch.randperm(50, generator=generator(7, "role"))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.randperm(50, generator=generator(7, "other")))


# -- Split ---------------------------------------------------------------------------------------


def test_float_inputs_is_x_over_255_float32_without_aliasing():
    split = data.synthetic_split("mnist", True)
    index = torch.tensor([5, 0, 17])
    x = split.float_inputs(index)
    assert x.dtype == torch.float32
    assert x.shape == (3, 1, 28, 28)
    assert torch.equal(x, split.inputs[index].to(torch.float32) / 255)
    full = split.float_inputs()
    assert full.shape == (len(split), 1, 28, 28)
    assert full.min() >= 0.0 and full.max() <= 1.0
    full.zero_()  # a new tensor: the stored uint8 inputs are untouched
    assert split.inputs.any()


def test_subset_takes_inputs_and_labels_together():
    split = _unique_split()
    sub = split.subset(torch.tensor([3, 9]))
    assert sub.targets.tolist() == [3, 9]
    assert sub.inputs[:, 0, 0, 0].tolist() == [3, 9]


# -- validation split and limits -----------------------------------------------------------------


def test_train_val_split_is_disjoint_complete_sized_and_seeded():
    split = _unique_split(100)
    train, val = data.train_val_split(split, 0.1, seed=3)
    assert (len(train), len(val)) == (90, 10)
    ids_train, ids_val = set(train.targets.tolist()), set(val.targets.tolist())
    assert not ids_train & ids_val
    assert ids_train | ids_val == set(range(100))
    assert torch.equal(train.inputs[:, 0, 0, 0].long(), train.targets)  # rows stay paired
    assert train.targets.tolist() == sorted(ids_train)  # original order kept
    again = data.train_val_split(split, 0.1, seed=3)[1]
    assert torch.equal(val.targets, again.targets)
    other = data.train_val_split(split, 0.1, seed=4)[1]
    assert not torch.equal(val.targets, other.targets)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, 0.001])
def test_train_val_split_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError, match="fraction"):
        data.train_val_split(_unique_split(100), fraction, seed=0)


def test_limit_split_keeps_a_seeded_subset_of_at_most_limit():
    split = _unique_split(100)
    assert data.limit_split(split, None, 0) is split
    assert data.limit_split(split, 500, 0) is split
    a = data.limit_split(split, 20, seed=1)
    assert len(a) == 20
    assert a.targets.tolist() == sorted(a.targets.tolist())
    assert torch.equal(a.targets, data.limit_split(split, 20, seed=1).targets)
    assert not torch.equal(a.targets, data.limit_split(split, 20, seed=2).targets)


# -- synthetic stand-ins -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fmnist"])
def test_synthetic_split_shapes_balance_and_determinism(name):
    train, test = data.synthetic_split(name, True), data.synthetic_split(name, False)
    assert train.inputs.shape == (1200, 1, 28, 28)
    assert test.inputs.shape == (300, 1, 28, 28)
    assert train.inputs.dtype == torch.uint8
    assert train.targets.dtype == torch.long
    assert torch.bincount(train.targets).tolist() == [120] * 10
    data.clear_cache()
    again = data.synthetic_split(name, True)
    assert again is not train
    assert torch.equal(again.inputs, train.inputs)
    assert torch.equal(again.targets, train.targets)
    assert not torch.equal(data.synthetic_split(name, True, seed=1).inputs, train.inputs)


def test_synthetic_mnist_and_fmnist_look_different():
    mnist = data.synthetic_split("mnist", True).float_inputs()
    fmnist = data.synthetic_split("fmnist", True).float_inputs()
    black_mnist, black_fmnist = (mnist == 0).float().mean(), (fmnist == 0).float().mean()
    assert black_mnist > 0.5  # strokes on black, like MNIST
    assert black_fmnist < black_mnist - 0.2
    assert fmnist.mean() > mnist.mean() + 0.05


def test_synthetic_unknown_name():
    with pytest.raises(ValueError, match="valid names: fmnist, mnist"):
        data.synthetic_split("cifar", True)


@pytest.mark.parametrize("name", ["mnist", "fmnist"])
@pytest.mark.parametrize("model_name", ["tutorial-mlp", "mlp"])
def test_synthetic_is_learnable_by_an_mlp_in_one_epoch(name, model_name):
    train, test = data.synthetic_split(name, True), data.synthetic_split(name, False)
    torch.manual_seed(0)
    model = make_model(model_name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(train), generator=generator(0, "test-order"))
    for batch in order.split(100):
        loss = F.cross_entropy(model(train.float_inputs(batch)), train.targets[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(test.float_inputs()).argmax(1) == test.targets).float().mean()
    assert accuracy > 0.8


# -- loading -------------------------------------------------------------------------------------


def test_resolve_root_argument_then_env_then_default(monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    assert data.resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_root() == tmp_path / "env"
    monkeypatch.delenv(data.ENV_VAR)
    assert data.resolve_root() == Path("data")


def test_load_split_reads_idx_files_as_uint8_and_caches(tmp_path):
    _write_idx(tmp_path, datasets.MNIST)
    train = data.load_split("mnist", True, tmp_path)
    assert train.inputs.shape == (12, 1, 28, 28)
    assert train.inputs.dtype == torch.uint8
    assert train.inputs.flatten()[:300].tolist() == [i % 256 for i in range(300)]
    assert train.targets.tolist() == [i % 10 for i in range(12)]
    assert len(data.load_split("mnist", False, tmp_path)) == 5
    assert data.load_split("mnist", True, tmp_path) is train  # cached: no second read


def test_load_split_uses_the_env_root(monkeypatch, tmp_path):
    _write_idx(tmp_path, datasets.FashionMNIST)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    assert len(data.load_split("fmnist", True)) == 12


def test_missing_mnist_message_says_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        data.load_split("mnist", True, tmp_path)
    msg = str(info.value)
    assert str(tmp_path.resolve() / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg
    assert "Downloading was not allowed" in msg
    assert "--data-root" in msg
    assert data.ENV_VAR in msg
    assert not any(tmp_path.iterdir())  # nothing written without download


def test_missing_fmnist_message_mentions_apt_get(tmp_path):
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        data.load_split("fmnist", False, tmp_path)
    assert str(tmp_path.resolve() / "FashionMNIST" / "raw") in str(info.value)


def test_download_only_when_missing_and_allowed(monkeypatch, tmp_path):
    calls = []

    def fake_download(self):
        calls.append(self.root)
        raise RuntimeError("offline")

    monkeypatch.setattr(datasets.MNIST, "download", fake_download)
    with pytest.raises(DataNotFoundError, match="Downloading failed: offline"):
        data.load_split("fmnist", True, tmp_path, download=True)
    assert len(calls) == 1
    _write_idx(tmp_path, datasets.MNIST)
    assert len(data.load_split("mnist", True, tmp_path, download=True)) == 12
    assert len(calls) == 1  # files present: no download attempted


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="valid names: fmnist, mnist"):
        data.load_split("cifar10", True)


def test_torchvision_and_datacheck_agree_on_folders_and_files():
    from benchmark import datacheck

    for name, cls in data.DATASETS.items():
        assert datacheck.FOLDERS[name] == cls.__name__
        assert data.raw_files(name) == tuple(Path(url).stem for url, _ in cls.resources)
    assert data.resolve_root is datacheck.resolve_root


def test_error_classes_keep_their_standard_bases():
    assert issubclass(DataNotFoundError, DataError)
    assert issubclass(DataNotFoundError, FileNotFoundError)
    assert issubclass(CorruptDataError, DataError)
    assert issubclass(CorruptDataError, ValueError)
    assert not issubclass(CorruptDataError, FileNotFoundError)


def _corrupt_magic(path: Path) -> None:
    path.write_bytes(struct.pack(">I", 0xDEADBEEF) + path.read_bytes()[4:])


@pytest.mark.parametrize("download", [False, True])
def test_load_split_rejects_a_bad_magic_before_torchvision(monkeypatch, tmp_path, download):
    _write_idx(tmp_path, datasets.MNIST)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    _corrupt_magic(path)
    monkeypatch.setattr(data, "_download", lambda name, base: pytest.fail("no download"))
    with pytest.raises(CorruptDataError) as info:
        data.load_split("mnist", True, tmp_path, download=download)
    assert not isinstance(info.value, (AssertionError, DataNotFoundError))
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path.resolve()) in msg
    assert "0xDEADBEEF, expected 0x00000803" in msg


def test_load_split_rejects_a_truncated_file_as_corrupt_not_missing(tmp_path):
    _write_idx(tmp_path, datasets.FashionMNIST)
    path = tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CorruptDataError, match="truncated: header says 5 labels") as info:
        data.load_split("fmnist", False, tmp_path)
    assert not isinstance(info.value, DataNotFoundError)
    assert str(path.resolve()) in str(info.value)
    assert "not found" not in str(info.value)


def test_verify_dataset_joins_every_problem_in_one_line(tmp_path):
    with pytest.raises(DataNotFoundError, match="MNIST not found"):
        data.verify_dataset("mnist", tmp_path)
    _write_idx(tmp_path, datasets.MNIST)
    data.verify_dataset("mnist", tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    _corrupt_magic(raw / "train-images-idx3-ubyte")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"")
    (raw / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(CorruptDataError) as info:
        data.verify_dataset("mnist", tmp_path, checksums=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert "0xDEADBEEF" in msg
    assert "; " in msg
    assert "t10k-labels-idx1-ubyte is truncated: 0 bytes" in msg
    assert msg.endswith("also missing in " + str(raw.resolve()) + ": t10k-images-idx3-ubyte")


def _fake_download(calls: list, cls: type = datasets.MNIST):
    def download(name: str, base: Path) -> None:
        calls.append((name, base))
        _write_idx(base, cls)

    return download


def test_ensure_dataset_downloads_missing_files_when_allowed(monkeypatch, tmp_path, capsys):
    calls: list = []
    monkeypatch.setattr(data, "_download", _fake_download(calls))
    with pytest.raises(DataNotFoundError, match=r"MNIST not found: .* Downloading was not allowed"):
        data.ensure_dataset("mnist", tmp_path, download=False)
    assert calls == []
    assert data.ensure_dataset("mnist", tmp_path, download=True) is True
    assert calls == [("mnist", tmp_path.resolve())]
    err = capsys.readouterr().err
    folder = tmp_path.resolve() / "MNIST" / "raw"
    assert (
        err == f"downloading MNIST into {folder} through torchvision (archive MD5s verified) ...\n"
    )
    assert data.ensure_dataset("mnist", tmp_path, download=True) is False  # present: no download
    assert len(calls) == 1
    assert capsys.readouterr().err == ""


def test_load_split_downloads_through_ensure_dataset(monkeypatch, tmp_path):
    calls: list = []
    monkeypatch.setattr(data, "_download", _fake_download(calls, datasets.FashionMNIST))
    assert len(data.load_split("fmnist", False, tmp_path, download=True)) == 5
    assert len(calls) == 1


def test_failed_download_is_one_line(monkeypatch, tmp_path):
    def broken(name: str, base: Path) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried x, got:\nnope\n")

    monkeypatch.setattr(data, "_download", broken)
    with pytest.raises(DataNotFoundError) as info:
        data.ensure_dataset("fmnist", tmp_path, download=True)
    msg = str(info.value)
    assert "\n" not in msg
    assert "Downloading failed: Error downloading train-images-idx3-ubyte.gz: Tried x" in msg
    assert str(tmp_path.resolve() / "FashionMNIST" / "raw") in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_a_download_that_leaves_files_missing_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "_download", lambda name, base: None)
    with pytest.raises(DataNotFoundError, match="The download did not provide them"):
        data.ensure_dataset("mnist", tmp_path, download=True)


# -- real data -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fmnist"])
def test_real_datasets_load_with_standard_sizes(data_root, name):
    train, test = data.load_split(name, True, data_root), data.load_split(name, False, data_root)
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.inputs.shape == (60_000, 1, 28, 28)
    assert train.inputs.dtype == torch.uint8
    assert sorted(torch.unique(test.targets).tolist()) == list(range(10))
    x = test.float_inputs()
    assert x.dtype == torch.float32
    assert x.min() == 0.0
    assert x.max() == 1.0


@pytest.mark.parametrize("name", ["mnist", "fmnist"])
def test_real_datasets_verify_with_checksums(data_root, name):
    data.verify_dataset(name, data_root, checksums=True)
    assert data.ensure_dataset(name, data_root, download=True) is False


def test_real_float_inputs_match_the_tutorials_to_tensor(data_root):
    """``float_inputs`` gives exactly what the tutorial's per-item ``ToTensor`` pipeline gives."""
    split = data.load_split("mnist", True, data_root)
    ds = datasets.MNIST(str(data_root), train=True)
    index = torch.tensor([0, 1, 59_999])
    expected = torch.stack([to_tensor(ds[i][0]) for i in index.tolist()])
    assert torch.equal(split.float_inputs(index), expected)
    assert split.targets[index].tolist() == [ds[i][1] for i in index.tolist()]
