"""benchmark.tasks: named, seeded task sequences (synthetic data; real-data checks at the end)."""

from __future__ import annotations

import pytest
import torch

from benchmark import config, data, tasks
from benchmark.data import DataNotFoundError, Split
from benchmark.tasks import build_sequence


@pytest.fixture(autouse=True)
def _fresh_caches():
    tasks.clear_cache()
    yield
    tasks.clear_cache()


def synthetic(name: str, **kwargs) -> tasks.TaskSequence:
    return build_sequence(name, data="synthetic", **kwargs)


def _all_tensors(seq: tasks.TaskSequence) -> list[torch.Tensor]:
    return [
        tensor
        for task in seq
        for split in (task.train, task.val, task.test)
        for tensor in (split.inputs, split.targets)
    ]


def _source(split: str = "test") -> Split:
    """The synthetic MNIST stand-in's split the tasks are built from (test: no val carving)."""
    return data.synthetic_split("mnist", split == "train", tasks.SYNTHETIC_DATA_SEED)


def _rows(split: Split) -> set[bytes]:
    return {bytes(row) for row in split.inputs.flatten(1).numpy()}


# -- structure -----------------------------------------------------------------------------------


def test_sequence_names_match_the_run_config():
    assert tasks.SEQUENCES == config.SEQUENCES


@pytest.mark.parametrize(
    ("name", "names", "n_heads", "n_outputs"),
    [
        ("mnist-fmnist", ("mnist", "fmnist"), 1, 10),
        ("fmnist-mnist", ("fmnist", "mnist"), 1, 10),
        ("permuted-mnist", tuple(f"permuted-{t}" for t in range(10)), 1, 10),
        ("split-mnist", None, 5, 2),
        ("split-mnist-class", None, 1, 10),
    ],
)
def test_default_layouts(name, names, n_heads, n_outputs):
    seq = synthetic(name)
    assert seq.name == name
    if names is not None:
        assert seq.names == names
    assert (seq.n_heads, seq.n_outputs) == (n_heads, n_outputs)
    for task in seq:
        for split in (task.train, task.val, task.test):
            assert split.inputs.dtype == torch.uint8
            assert split.inputs.shape[1:] == (1, 28, 28)
            assert split.targets.dtype == torch.long
            assert split.targets.min() >= 0 and split.targets.max() < seq.n_outputs


def test_mnist_fmnist_uses_the_two_datasets_with_labels_as_given():
    seq = synthetic("mnist-fmnist")
    for task, dataset in zip(seq, ("mnist", "fmnist")):
        test = data.synthetic_split(dataset, False, tasks.SYNTHETIC_DATA_SEED)
        assert torch.equal(task.test.inputs, test.inputs)
        assert torch.equal(task.test.targets, test.targets)
        assert (task.head, task.n_classes) == (0, 10)
    reverse = synthetic("fmnist-mnist")
    assert torch.equal(reverse[0].test.inputs, seq[1].test.inputs)


def test_sequence_is_cached_per_process():
    assert synthetic("permuted-mnist", n_tasks=3) is synthetic("permuted-mnist", n_tasks=3)
    assert synthetic("permuted-mnist", n_tasks=3) is not synthetic("permuted-mnist", n_tasks=2)


# -- validation split and limits -----------------------------------------------------------------


def test_validation_split_is_disjoint_from_train_and_sized():
    seq = synthetic("mnist-fmnist", val_fraction=0.1)
    for task in seq:
        assert (len(task.train), len(task.val), len(task.test)) == (1080, 120, 300)
    task = seq[0]
    train_rows, val_rows = _rows(task.train), _rows(task.val)
    assert len(train_rows) == 1080  # synthetic images are distinct
    assert not train_rows & val_rows
    assert train_rows | val_rows == _rows(_source("train"))
    other = synthetic("mnist-fmnist", val_fraction=0.25)[0]
    assert (len(other.train), len(other.val)) == (900, 300)


def test_validation_split_depends_on_the_seed():
    a, b = synthetic("mnist-fmnist", seed=0)[0], synthetic("mnist-fmnist", seed=1)[0]
    assert _rows(a.val) != _rows(b.val)


def test_limits_are_respected_and_seeded():
    seq = synthetic("permuted-mnist", n_tasks=3, train_limit=50, eval_limit=20)
    for task in seq:
        assert (len(task.train), len(task.val), len(task.test)) == (50, 20, 20)
    again = synthetic("permuted-mnist", n_tasks=3, train_limit=50, eval_limit=20, seed=0)
    tasks.clear_cache()
    rebuilt = synthetic("permuted-mnist", n_tasks=3, train_limit=50, eval_limit=20)
    assert all(torch.equal(x, y) for x, y in zip(_all_tensors(again), _all_tensors(rebuilt)))
    # Limits larger than the data keep everything.
    big = synthetic("mnist-fmnist", train_limit=10**6, eval_limit=10**6)[0]
    assert (len(big.train), len(big.val), len(big.test)) == (1080, 120, 300)
    # The subset depends on the run seed.
    a = synthetic("mnist-fmnist", train_limit=50, seed=0)[0].test
    b = synthetic("mnist-fmnist", train_limit=50, seed=5)[0].test
    assert torch.equal(a.inputs, b.inputs)  # no eval_limit: the whole test set
    a = synthetic("mnist-fmnist", eval_limit=30, seed=0)[0].test
    b = synthetic("mnist-fmnist", eval_limit=30, seed=5)[0].test
    assert _rows(a) != _rows(b)


def test_split_limits_count_inputs_of_the_task_after_class_selection():
    seq = synthetic("split-mnist", train_limit=40, eval_limit=10)
    for task in seq:
        assert (len(task.train), len(task.val), len(task.test)) == (40, 10, 10)


# -- permuted ------------------------------------------------------------------------------------


def test_permutations_are_seeded_bijections_and_applied_to_every_split():
    perms = [tasks.permutation(0, t) for t in range(3)]
    for p in perms:
        assert torch.equal(p.sort().values, torch.arange(784))
    assert not torch.equal(perms[0], perms[1])
    assert not torch.equal(tasks.permutation(0, 0), tasks.permutation(1, 0))
    seq = synthetic("permuted-mnist", n_tasks=3)
    source = _source()
    for t, task in enumerate(seq):
        expected = source.inputs.flatten(1)[:, perms[t]].view(-1, 1, 28, 28)
        assert torch.equal(task.test.inputs, expected)
        assert torch.equal(task.test.targets, source.targets)
        assert (task.head, task.n_classes) == (0, 10)
    assert not torch.equal(seq[0].test.inputs, source.inputs)  # task 0 is permuted too


def test_permutation_does_not_depend_on_what_ran_before():
    expected = tasks.permutation(3, 4)
    torch.manual_seed(99)
    synthetic("rotated-mnist", seed=3)
    assert torch.equal(tasks.permutation(3, 4), expected)
    task = synthetic("permuted-mnist", seed=3, n_tasks=5)[4]
    assert torch.equal(task.test.inputs.flatten(1), _source().inputs.flatten(1)[:, expected])


def test_permute_pixels_example():
    images = torch.arange(784, dtype=torch.float32).view(1, 1, 28, 28)
    perm = torch.arange(783, -1, -1)
    out = tasks.permute_pixels(images, perm)
    assert out.flatten().tolist() == list(range(783, -1, -1))


# -- rotated -------------------------------------------------------------------------------------


def test_rotation_0_is_identity_and_90_is_transpose_flip():
    toy = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    assert torch.equal(tasks.rotate(toy, 0), toy)
    expected = torch.tensor([[3, 7, 11, 15], [2, 6, 10, 14], [1, 5, 9, 13], [0, 4, 8, 12]])
    assert torch.equal(tasks.rotate(toy, 90)[0, 0], expected.to(torch.uint8))
    assert torch.equal(tasks.rotate(toy, 90), toy.transpose(-2, -1).flip(-2))
    assert torch.equal(tasks.rotate(toy, 180), toy.flip(-2, -1))
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(tasks.rotate(images, 90), torch.rot90(images, 1, (-2, -1)))
    assert torch.equal(tasks.rotate(images, 270), torch.rot90(images, 3, (-2, -1)))
    # The grid_sample path itself is exact at 0 degrees (rotate() skips it there).
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert torch.equal(tasks._rotate_chunk(images, identity), images)


def test_rotation_is_bilinear_with_zeros_outside():
    images = torch.full((2, 1, 28, 28), 200, dtype=torch.uint8)
    out = tasks.rotate(images, 45)
    assert out.dtype == torch.uint8
    assert out[0, 0, 14, 14] == 200  # the centre stays inside
    assert out[0, 0, 0, 0] == 0  # corners come from outside the image
    assert torch.equal(out[0], out[1])
    assert tasks.rotate(images[:0], 30).shape == (0, 1, 28, 28)


def test_rotation_angles_are_evenly_spaced_in_a_seeded_order():
    angles = tasks.rotation_angles(5, seed=0)
    assert sorted(angles) == [0.0, 36.0, 72.0, 108.0, 144.0]
    orders = {tasks.rotation_angles(5, seed=s) for s in range(5)}
    assert len(orders) > 1
    assert tasks.rotation_angles(5, seed=0) == angles
    seq = synthetic("rotated-mnist")
    assert seq.names == tuple(f"rotated-{a:g}" for a in angles)
    assert (seq.n_heads, seq.n_outputs) == (1, 10)


def test_rotated_tasks_hold_rotated_source_images():
    seq = synthetic("rotated-mnist", n_tasks=2)  # angles 0 and 90
    by_name = {task.name: task for task in seq}
    assert set(by_name) == {"rotated-0", "rotated-90"}
    source = _source()
    assert torch.equal(by_name["rotated-0"].test.inputs, source.inputs)
    assert torch.equal(by_name["rotated-90"].test.inputs, torch.rot90(source.inputs, 1, (-2, -1)))
    assert torch.equal(by_name["rotated-90"].test.targets, source.targets)


# -- split ---------------------------------------------------------------------------------------


def test_class_pairs_partition_the_digits_and_depend_on_the_seed():
    pairs = tasks.class_pairs(0)
    assert len(pairs) == 5
    assert sorted(d for pair in pairs for d in pair) == list(range(10))
    assert all(a < b for a, b in pairs)
    assert tasks.class_pairs(0) == pairs
    assert len({tasks.class_pairs(s) for s in range(5)}) > 1


def test_split_mnist_remaps_labels_and_uses_one_head_per_task():
    seq = synthetic("split-mnist", seed=2)
    pairs = tasks.class_pairs(2)
    assert seq.names == tuple(f"split-{a}/{b}" for a, b in pairs)
    assert (seq.n_heads, seq.n_outputs) == (5, 2)
    source = _source()
    for t, (task, (a, b)) in enumerate(zip(seq, pairs)):
        assert (task.head, task.n_classes) == (t, 2)
        keep = (source.targets == a) | (source.targets == b)
        assert torch.equal(task.test.inputs, source.inputs[keep])
        assert torch.equal(task.test.targets, (source.targets[keep] == b).long())
        assert set(task.train.targets.tolist()) == {0, 1}


def test_split_mnist_class_keeps_original_labels_and_one_head():
    seq = synthetic("split-mnist-class", seed=2)
    multi = synthetic("split-mnist", seed=2)
    assert seq.names == multi.names
    assert (seq.n_heads, seq.n_outputs) == (1, 10)
    for task, (a, b) in zip(seq, tasks.class_pairs(2)):
        assert (task.head, task.n_classes) == (0, 2)
        assert set(task.train.targets.tolist()) == {a, b}
    assert torch.equal(seq[0].test.inputs, multi[0].test.inputs)


def test_fewer_split_tasks_take_the_first_pairs():
    seq = synthetic("split-mnist", n_tasks=3)
    assert len(seq) == 3
    assert seq.n_heads == 3
    assert seq.names == tuple(f"split-{a}/{b}" for a, b in tasks.class_pairs(0)[:3])


# -- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", tasks.SEQUENCES)
def test_same_seed_same_tensors_across_rebuilds(name):
    first = _all_tensors(synthetic(name, seed=7, n_tasks=2))
    tasks.clear_cache()
    data.clear_cache()
    torch.manual_seed(1234)  # global state must not matter
    second = _all_tensors(synthetic(name, seed=7, n_tasks=2))
    assert len(first) == len(second)
    assert all(torch.equal(x, y) for x, y in zip(first, second))


# -- validation of arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n_tasks", "message"),
    [
        ("mnist-fmnist", 3, "exactly 2"),
        ("fmnist-mnist", 1, "exactly 2"),
        ("split-mnist", 6, "1 to 5"),
        ("split-mnist-class", 0, "1 to 5"),
        ("permuted-mnist", 0, "any integer >= 1"),
        ("rotated-mnist", 2.5, "any integer >= 1"),
    ],
)
def test_bad_n_tasks(name, n_tasks, message):
    with pytest.raises(ValueError, match=message):
        synthetic(name, n_tasks=n_tasks)


def test_default_n_tasks():
    assert {name: tasks.check_n_tasks(name, None) for name in tasks.SEQUENCES} == {
        "mnist-fmnist": 2,
        "fmnist-mnist": 2,
        "permuted-mnist": 10,
        "rotated-mnist": 5,
        "split-mnist": 5,
        "split-mnist-class": 5,
    }
    assert len(synthetic("rotated-mnist", n_tasks=7)) == 7


def test_bad_arguments():
    with pytest.raises(ValueError, match="valid names: mnist-fmnist"):
        synthetic("cifar-split")
    with pytest.raises(ValueError, match="real, synthetic"):
        build_sequence("mnist-fmnist", data="fake")
    with pytest.raises(ValueError, match="seed"):
        synthetic("mnist-fmnist", seed=-1)
    with pytest.raises(ValueError, match="train_limit"):
        synthetic("mnist-fmnist", train_limit=0)
    with pytest.raises(ValueError, match="fraction"):
        synthetic("mnist-fmnist", val_fraction=1.0)


def test_missing_real_data_fails_clearly(tmp_path):
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        build_sequence("fmnist-mnist", root=tmp_path)
    with pytest.raises(DataNotFoundError, match=str(tmp_path.resolve() / "MNIST" / "raw")):
        build_sequence("permuted-mnist", root=tmp_path)


# -- real data -----------------------------------------------------------------------------------


def test_real_mnist_fmnist_sizes(data_root):
    seq = build_sequence("mnist-fmnist", root=data_root, val_fraction=0.1)
    assert seq.names == ("mnist", "fmnist")
    for task in seq:
        assert (len(task.train), len(task.val), len(task.test)) == (54_000, 6_000, 10_000)
        assert task.train.inputs.dtype == torch.uint8


def test_real_permuted_mnist_builds_ten_tasks(data_root):
    seq = build_sequence("permuted-mnist", root=data_root, eval_limit=1000)
    assert len(seq) == 10
    assert all(len(task.train) == 54_000 and len(task.test) == 1000 for task in seq)
    x = seq[3].test.float_inputs()
    assert x.min() >= 0.0 and x.max() <= 1.0
