"""benchmark.datacheck: one-line diagnoses of missing or bad IDX files, before any training.

Tiny IDX files are written to a temporary folder (nothing is downloaded); the published-size
MD5 rule is exercised by pointing the published tables at a tiny file. The real files are
checked through the ``data_root`` fixture (skipped without them, failing under CI=true).
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import datacheck
from benchmark.datacheck import check_dataset

REPO = Path(__file__).resolve().parents[1]
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def _write_idx(root: Path, folder: str = "MNIST", n_train: int = 12, n_test: int = 5) -> Path:
    """Tiny uncompressed IDX files in torchvision's layout ``root/<folder>/raw``; returns it."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = bytes(i % 256 for i in range(n * 784))
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x0803, n, 28, 28) + pixels
        )
        labels = bytes(i % 10 for i in range(n))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, n) + labels)
    return raw


def _only_problem(root: Path, name: str = "mnist") -> str:
    check = check_dataset(name, root)
    assert not check.missing
    assert len(check.problems) == 1, check.problems
    assert not check.ok
    (problem,) = check.problems
    assert "\n" not in problem
    return problem


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != datacheck.ENV_VAR}
    return subprocess.run(
        [sys.executable, "-m", "benchmark.datacheck", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- published files -----------------------------------------------------------------------------


def test_published_tables_cover_every_file_of_both_datasets():
    assert datacheck.FOLDERS == {"mnist": "MNIST", "fmnist": "FashionMNIST"}
    assert set(datacheck.PUBLISHED_SIZES) == set(datacheck.FILES)
    assert datacheck.PUBLISHED_SIZES[TRAIN_IMAGES] == 16 + 60_000 * 784
    assert datacheck.PUBLISHED_SIZES[TEST_LABELS] == 8 + 10_000
    for name in datacheck.FOLDERS:
        md5s = datacheck.PUBLISHED_MD5[name]
        assert set(md5s) == set(datacheck.FILES)
        assert all(len(m) == 32 and int(m, 16) >= 0 for m in md5s.values())


def test_resolve_root_argument_then_env_then_default(monkeypatch, tmp_path):
    monkeypatch.setenv(datacheck.ENV_VAR, str(tmp_path / "env"))
    assert datacheck.resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert datacheck.resolve_root("") == tmp_path / "env"
    assert datacheck.raw_folder("fmnist") == tmp_path / "env" / "FashionMNIST" / "raw"
    monkeypatch.delenv(datacheck.ENV_VAR)
    assert datacheck.resolve_root() == Path("data")


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="valid names: fmnist, mnist"):
        check_dataset("cifar", tmp_path)


# -- good files ----------------------------------------------------------------------------------


def test_self_consistent_subset_is_accepted_without_md5(monkeypatch, tmp_path):
    _write_idx(tmp_path, "FashionMNIST")

    def no_md5(path):
        raise AssertionError(f"a subset is not MD5-checked, yet {path} was hashed")

    monkeypatch.setattr(datacheck, "file_md5", no_md5)
    check = check_dataset("fmnist", tmp_path, checksums=True)
    assert check.ok
    assert (check.missing, check.problems) == ((), ())
    assert check.folder == (tmp_path / "FashionMNIST" / "raw").resolve()


# -- bad files: one line each, naming the file ---------------------------------------------------


def test_truncated_image_file(tmp_path):
    raw = _write_idx(tmp_path)
    path = raw / TRAIN_IMAGES
    path.write_bytes(path.read_bytes()[:-100])
    problem = _only_problem(tmp_path)
    assert str(path.resolve()) in problem
    expected = 16 + 12 * 784
    assert f"truncated: header says 12 images ({expected:,} bytes), the file has " in problem
    assert f"{expected - 100:,} bytes" in problem


def test_truncated_label_file(tmp_path):
    raw = _write_idx(tmp_path)
    path = raw / TEST_LABELS
    path.write_bytes(path.read_bytes()[:-2])
    problem = _only_problem(tmp_path)
    assert str(path.resolve()) in problem
    assert "truncated: header says 5 labels (13 bytes), the file has 11 bytes" in problem


@pytest.mark.parametrize(("file", "header"), [(TRAIN_IMAGES, 16), (TRAIN_LABELS, 8)])
def test_file_shorter_than_its_header_is_truncated(tmp_path, file, header):
    raw = _write_idx(tmp_path)
    (raw / file).write_bytes(b"\x00\x00\x08")
    problem = _only_problem(tmp_path)
    assert str((raw / file).resolve()) in problem
    assert f"truncated: 3 bytes, shorter than its {header}-byte IDX header" in problem


def test_wrong_magic_names_the_file_and_both_magics(tmp_path):
    raw = _write_idx(tmp_path)
    path = raw / TRAIN_IMAGES
    path.write_bytes(struct.pack(">I", 0xDEADBEEF) + path.read_bytes()[4:])
    problem = _only_problem(tmp_path)
    assert str(path.resolve()) in problem
    assert "magic number 0xDEADBEEF, expected 0x00000803" in problem


def test_wrong_magic_recognises_gzip_and_swapped_files(tmp_path):
    raw = _write_idx(tmp_path)
    (raw / TEST_LABELS).write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)
    images, labels = (raw / TRAIN_IMAGES).read_bytes(), (raw / TRAIN_LABELS).read_bytes()
    (raw / TRAIN_IMAGES).write_bytes(labels)
    (raw / TRAIN_LABELS).write_bytes(images)
    problems = check_dataset("mnist", tmp_path).problems
    assert len(problems) == 3
    assert "0x1F8B0800, expected 0x00000801 (a gzip archive: decompress it)" in problems[2]
    assert "0x00000801, expected 0x00000803 (an IDX labels file: swapped names?)" in problems[0]
    assert "0x00000803, expected 0x00000801 (an IDX images file: swapped names?)" in problems[1]


def test_wrong_image_dimensions(tmp_path):
    raw = _write_idx(tmp_path)
    path = raw / TEST_IMAGES
    body = path.read_bytes()[16:]
    path.write_bytes(struct.pack(">IIII", 0x0803, 5, 32, 24) + body[: 5 * 32 * 24])
    problem = _only_problem(tmp_path)
    assert str(path.resolve()) in problem
    assert "holds 32 x 24 images, expected 28 x 28" in problem


def test_train_images_and_labels_count_mismatch(tmp_path):
    raw = _write_idx(tmp_path)
    (raw / TRAIN_LABELS).write_bytes(struct.pack(">II", 0x0801, 11) + bytes(11))
    problem = _only_problem(tmp_path)
    assert "holds 12 images but" in problem
    assert "holds 11 labels" in problem
    assert str((raw / TRAIN_IMAGES).resolve()) in problem
    assert str((raw / TRAIN_LABELS).resolve()) in problem


def test_trailing_bytes(tmp_path):
    raw = _write_idx(tmp_path)
    path = raw / TRAIN_LABELS
    path.write_bytes(path.read_bytes() + b"junk")
    problem = _only_problem(tmp_path)
    assert str(path.resolve()) in problem
    assert "4 trailing bytes: header says 12 labels (20 bytes), the file has 24 bytes" in problem


def test_label_out_of_range(tmp_path):
    raw = _write_idx(tmp_path)
    (raw / TEST_LABELS).write_bytes(struct.pack(">II", 0x0801, 5) + bytes([0, 1, 12, 3, 4]))
    assert "holds label 12: labels must be 0..9" in _only_problem(tmp_path)


def test_a_directory_in_place_of_a_file_is_a_problem_not_missing(tmp_path):
    raw = _write_idx(tmp_path)
    (raw / TEST_IMAGES).unlink()
    (raw / TEST_IMAGES).mkdir()
    assert "is not a regular file" in _only_problem(tmp_path)


# -- MD5 of published-size files -----------------------------------------------------------------


def _publish(monkeypatch, path: Path, md5: str) -> None:
    """Make ``path``'s current size the published size of its file, with ``md5``."""
    monkeypatch.setitem(datacheck.PUBLISHED_SIZES, path.name, path.stat().st_size)
    monkeypatch.setitem(datacheck.PUBLISHED_MD5["mnist"], path.name, md5)


def test_published_size_with_wrong_md5_is_a_corrupt_copy(monkeypatch, tmp_path):
    raw = _write_idx(tmp_path)
    path = raw / TRAIN_LABELS
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    _publish(monkeypatch, path, "0" * 32)
    problem = _only_problem(tmp_path)
    assert str(path.resolve()) in problem
    assert (
        f"differs from the published file (MD5 {actual}, expected {'0' * 32}): "
        "a corrupt copy, replace it"
    ) in problem
    assert check_dataset("mnist", tmp_path, checksums=False).ok  # headers and sizes only


def test_published_size_with_the_published_md5_is_ok(monkeypatch, tmp_path):
    raw = _write_idx(tmp_path)
    path = raw / TRAIN_IMAGES
    _publish(monkeypatch, path, hashlib.md5(path.read_bytes()).hexdigest())
    assert check_dataset("mnist", tmp_path).ok


def test_file_md5_reads_in_chunks_and_caches_by_path_size_mtime(monkeypatch, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 10)
    monkeypatch.setattr(datacheck, "HASH_CHUNK", 7)
    monkeypatch.setattr(datacheck, "_MD5_CACHE", {})
    assert datacheck.file_md5(path) == hashlib.md5(path.read_bytes()).hexdigest()
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    assert list(datacheck._MD5_CACHE) == [key]
    datacheck._MD5_CACHE[key] = "cached"
    assert datacheck.file_md5(path) == "cached"  # not read again
    path.write_bytes(b"other content")
    assert datacheck.file_md5(path) == hashlib.md5(b"other content").hexdigest()


# -- missing files -------------------------------------------------------------------------------


def test_missing_message_names_files_folder_and_fixes_in_one_line(tmp_path):
    raw = _write_idx(tmp_path)
    (raw / TEST_IMAGES).unlink()
    check = check_dataset("mnist", tmp_path)
    assert check.missing == (TEST_IMAGES,)
    assert check.problems == ()
    msg = datacheck.missing_message(check, "Downloading was not allowed.")
    assert "\n" not in msg
    assert msg.startswith(f"MNIST not found: missing {TEST_IMAGES} in {raw.resolve()}.")
    assert "Downloading was not allowed." in msg
    assert TRAIN_IMAGES not in msg  # only the missing file is named
    for fix in ("--data-root", "MNIST/raw/", f"${datacheck.ENV_VAR}", "DOWNLOAD=0", "--download"):
        assert fix in msg
    assert "apt-get" not in msg


def test_missing_fashion_mnist_mentions_apt_get(tmp_path):
    check = check_dataset("fmnist", tmp_path)
    assert check.missing == datacheck.FILES
    msg = datacheck.missing_message(check)
    assert "\n" not in msg
    assert str((tmp_path / "FashionMNIST" / "raw").resolve()) in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "/usr/share/datasets/fashion-mnist/" in msg


# -- the command line ----------------------------------------------------------------------------


def test_cli_all_good_exits_0_with_one_line(tmp_path):
    _write_idx(tmp_path, "MNIST")
    _write_idx(tmp_path, "FashionMNIST")
    result = _run_cli("--data-root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith("data ok: MNIST, FashionMNIST")
    assert "MD5s" in result.stdout
    result = _run_cli("--data-root", str(tmp_path), "--no-checksums", "--datasets", "fmnist")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("data ok: FashionMNIST")
    assert "MD5s" not in result.stdout


def test_cli_problems_exit_2_one_error_line_each_without_traceback(tmp_path):
    raw = _write_idx(tmp_path, "MNIST")
    (raw / TRAIN_IMAGES).write_bytes(struct.pack(">I", 0xDEADBEEF) + bytes(20))
    (raw / TEST_LABELS).write_bytes(b"\x00")
    result = _run_cli("--data-root", str(tmp_path), "--datasets", "mnist", "--download")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("error: ") for line in lines)
    assert "0xDEADBEEF" in lines[0]
    assert "truncated" in lines[1]
    assert "Traceback" not in result.stderr


def test_cli_missing_without_download_exits_2_with_one_line(tmp_path):
    result = _run_cli("--data-root", str(tmp_path), "--datasets", "fmnist")
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: FashionMNIST not found: missing ")
    assert str((tmp_path / "FashionMNIST" / "raw").resolve()) in line
    assert "apt-get install dataset-fashion-mnist" in line
    assert "Traceback" not in result.stderr


def test_cli_missing_with_download_says_where_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datacheck, "_unreachable", lambda name: None)  # a mirror answers
    status = datacheck.main(["--data-root", str(tmp_path), "--datasets", "mnist", "--download"])
    assert status == 0
    (line,) = capsys.readouterr().err.splitlines()
    folder = (tmp_path / "MNIST" / "raw").resolve()
    assert line.startswith(f"MNIST will be downloaded into {folder} (missing there: ")
    assert not (tmp_path / "MNIST").exists()  # the check itself downloads nothing


def test_cli_missing_with_download_but_no_mirror_fails_in_one_line(tmp_path, monkeypatch, capsys):
    """Offline: the check fails before anything is installed or trained."""
    reason = "ossci-datasets.s3.amazonaws.com: Name or service not known"
    monkeypatch.setattr(datacheck, "_unreachable", lambda name: reason)
    status = datacheck.main(["--data-root", str(tmp_path), "--datasets", "mnist", "--download"])
    assert status == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: MNIST not found: missing train-images-idx3-ubyte")
    assert f"no mirror answers ({reason})" in line and "allow the download" not in line


def test_unreachable_names_every_mirror_that_did_not_answer(monkeypatch):
    def refuse(address, timeout):
        raise OSError(111, "Connection refused")

    monkeypatch.setattr(datacheck.socket, "create_connection", refuse)
    reason = datacheck._unreachable("mnist")
    assert "ossci-datasets.s3.amazonaws.com: Connection refused" in reason
    assert "yann.lecun.com: Connection refused" in reason


def test_cli_rejects_unknown_datasets(tmp_path):
    result = _run_cli("--data-root", str(tmp_path), "--datasets", "mnist,cifar")
    assert result.returncode == 2
    assert "unknown dataset 'cifar'" in result.stderr
    assert "Traceback" not in result.stderr


def test_importing_datacheck_loads_no_torch_numpy_or_torchvision():
    code = (
        "import sys, benchmark.datacheck; "
        "heavy = {'torch', 'numpy', 'torchvision'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# -- real data -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fmnist"])
def test_real_datasets_are_the_published_files(data_root, name):
    check = check_dataset(name, data_root, checksums=True)
    assert check.ok, check.problems or check.missing
    folder = check.folder
    for file in datacheck.FILES:
        assert (folder / file).stat().st_size == datacheck.PUBLISHED_SIZES[file]
        assert datacheck.file_md5(folder / file) == datacheck.PUBLISHED_MD5[name][file]
