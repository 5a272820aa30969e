from dataclasses import replace

import numpy as np
import pytest
import torch

from fewshot.data.episodes import EpisodeSampler, Prefetcher
from fewshot.data.images import ImageClass
from fewshot.errors import FewshotError


def tagged(classes=10, per_class=6):
    images = np.zeros((classes * per_class, 1, 4, 4), dtype=np.uint8)
    for c in range(classes):
        images[c * per_class:(c + 1) * per_class, 0, 0, 0] = c
        images[c * per_class:(c + 1) * per_class, 0, 0, 1] = np.arange(per_class)
    refs = [ImageClass(f"class{c}", "train", c * per_class, per_class) for c in range(classes)]
    return images, refs


def ids(x):
    """(class, index) of each image, read back from the tagged pixels."""
    pixels = (x[:, 0, 0, :2] * 255).round().long()
    return [tuple(p.tolist()) for p in pixels]


def test_tasks_have_distinct_classes_disjoint_sets_and_consistent_labels():
    images, refs = tagged()
    sampler = EpisodeSampler(images, refs, ways=4, shots=2, query=3, seed=0)
    for index in range(50):
        task = sampler.batch(index, 1)[0]
        support, query = ids(task.support_x), ids(task.query_x)
        assert task.support_x.shape == (8, 1, 4, 4) and task.query_x.shape == (12, 1, 4, 4)
        assert len({c for c, _ in support}) == 4                      # classes never repeat
        assert not set(support) & set(query)                          # support and query are disjoint
        assert len(set(support)) == 8 and len(set(query)) == 12
        label_of = {}
        for (c, _), y in zip(support + query, torch.cat([task.support_y, task.query_y]).tolist()):
            assert label_of.setdefault(c, y) == y                     # one label per class
        assert sorted(label_of.values()) == [0, 1, 2, 3]


def test_labels_are_shuffled_per_task():
    images, refs = tagged()
    sampler = EpisodeSampler(images, refs, ways=2, shots=1, query=1, seed=0)
    labels_of_class_0 = set()
    for index in range(200):
        task = sampler.batch(index, 1)[0]
        for (c, _), y in zip(ids(task.support_x), task.support_y.tolist()):
            if c == 0:
                labels_of_class_0.add(y)
    assert labels_of_class_0 == {0, 1}


def test_batches_are_a_function_of_seed_and_index():
    images, refs = tagged()
    a = EpisodeSampler(images, refs, 3, 1, 2, seed=7).batch(5, 4)
    b = EpisodeSampler(images, refs, 3, 1, 2, seed=7).batch(5, 4)
    c = EpisodeSampler(images, refs, 3, 1, 2, seed=7).batch(6, 4)
    assert all(torch.equal(x.query_x, y.query_x) and torch.equal(x.query_y, y.query_y) for x, y in zip(a, b))
    assert not all(torch.equal(x.query_x, y.query_x) for x, y in zip(a, c))


def test_rotated_classes_are_rotated_images():
    images, _ = tagged()
    images[:, 0] = np.arange(16, dtype=np.uint8).reshape(4, 4)
    classes = [ImageClass("a", "train", 0, 6), ImageClass("b", "train", 6, 6)]
    plain = EpisodeSampler(images, classes, 2, 1, 1, seed=0).batch(0, 1)[0]
    turned_classes = [replace(c, rotation=1) for c in classes]
    turned = EpisodeSampler(images, turned_classes, 2, 1, 1, seed=0).batch(0, 1)[0]
    torch.testing.assert_close(turned.support_x, torch.rot90(plain.support_x, 1, (-2, -1)))


def test_impossible_tasks_are_refused_with_the_numbers():
    images, refs = tagged(classes=3, per_class=4)
    with pytest.raises(FewshotError, match="5-way tasks need 5 classes but the train split has 3"):
        EpisodeSampler(images, refs, ways=5, shots=1, query=1, seed=0)
    with pytest.raises(FewshotError, match="need 5 images per class, but class 'class0' of the train split has 4"):
        EpisodeSampler(images, refs, ways=2, shots=2, query=3, seed=0)


def test_prefetcher_yields_the_same_batches_in_order():
    images, refs = tagged()
    sampler = EpisodeSampler(images, refs, 3, 1, 1, seed=3)
    prefetch = Prefetcher(sampler, start=4, stop=8, size=2)
    for index in range(4, 8):
        got = next(prefetch)
        want = sampler.batch(index, 2)
        assert all(torch.equal(g.support_x, w.support_x) for g, w in zip(got, want))
    prefetch.close()


def written_out(sampler, plan, mean, std):
    """The task of `plan` built here from the uint8 array: class i's rows turned rotations[i] quarter
    turns, pixels / 255, inverted, normalized; labels[i] for class i; the first `shots` per class support."""
    pixels = sampler.images[plan.rows.reshape(-1)].reshape(*plan.rows.shape, *sampler.images.shape[1:])
    pixels = np.stack([np.rot90(pixels[i], turns, axes=(-2, -1)) for i, turns in enumerate(plan.rotations)])
    x = torch.from_numpy((1.0 - pixels.astype(np.float64) / 255.0 - mean) / std)
    y = torch.from_numpy(plan.labels)[:, None].expand(*plan.rows.shape)
    shots = sampler.shots
    return (x[:, :shots].flatten(0, 1), y[:, :shots].flatten(), x[:, shots:].flatten(0, 1), y[:, shots:].flatten())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here"))])
def test_batches_built_on_the_host_and_on_a_device_are_the_plans_tasks(device):
    from fewshot.data.episodes import DeviceEpisodes
    images, refs = tagged(classes=12, per_class=6)
    images[:, 0, 2:, :] = np.arange(8, dtype=np.uint8).reshape(2, 4) * 30  # asymmetric, so turns show
    refs = [replace(r, rotation=c % 4) for c, r in enumerate(refs)]  # 0-3 quarter turns
    preprocessing = {"invert": True, "channels": 1, "mean": [0.3], "std": [0.2]}
    sampler = EpisodeSampler(images, refs, ways=4, shots=2, query=1, seed=5, preprocessing=preprocessing)
    on_device = DeviceEpisodes(sampler, device)
    for index in range(6):
        plans = sampler.plans(index, 3, part=[0, 2])
        assert [p.seed for p in plans] == [(5, index, 0), (5, index, 2)]
        host = sampler.batch(index, 3, part=[0, 2])
        built = [t.to("cpu") for t in on_device.batch(index, 3, part=[0, 2])]
        assert len(host) == len(built) == 2
        for plan, h, d in zip(plans, host, built):
            assert h.seed == d.seed == plan.seed
            expected = written_out(sampler, plan, 0.3, 0.2)
            for name, want in zip(("support_x", "support_y", "query_x", "query_y"), expected):
                a, b = getattr(h, name), getattr(d, name)
                assert a.dtype == b.dtype and a.shape == b.shape == want.shape, name
                assert torch.equal(a, b), name  # the same elementwise float32 operations on both devices
                torch.testing.assert_close(a.double(), want.to(torch.float64), rtol=1e-6, atol=1e-6)
    prefetch = Prefetcher(on_device, start=2, stop=4, size=3)
    for index in (2, 3):
        assert all(torch.equal(g.query_x.cpu(), w.query_x) for g, w in zip(next(prefetch), sampler.batch(index, 3)))
    prefetch.close()


# --- affine distortion (Koch et al. 2015) -------------------------------------------

def test_affine_maps_draw_kochs_ranges_each_part_half_the_time():
    from fewshot.data.episodes import affine_maps
    maps = affine_maps(np.random.default_rng(0), 20000)
    assert maps.shape == (20000, 2, 3)
    forward = np.linalg.inv(maps[:, :, :2])                      # where an input point lands
    shift = -np.einsum("nij,nj->ni", forward, maps[:, :, 2])     # the sampling map is p -> forward^-1 (p - shift)
    assert np.abs(shift).max() <= 2 * 2 / 105 + 1e-12            # 2 of 105 pixels, in units where the side is 2
    assert 0.45 < np.mean(np.abs(shift[:, 0]) < 1e-15) < 0.55    # no shift along x in about half the images
    identity = np.all(np.abs(maps - np.array([[1, 0, 0], [0, 1, 0]])) < 1e-15, axis=(1, 2))
    assert 0.5 ** 7 * 0.8 < identity.mean() < 0.5 ** 7 * 1.2    # all seven parts left out together: 1/128
    determinant = np.linalg.det(forward)                        # rotation 1, shears 1 - a b, scales 0.64..1.44
    assert determinant.min() > 0.8 ** 2 * (1 - 0.3 ** 2) - 1e-9
    assert determinant.max() < 1.2 ** 2 * (1 + 0.3 ** 2) + 1e-9
    again = affine_maps(np.random.default_rng(0), 20000)
    assert np.array_equal(maps, again)


def test_distort_moves_pixels_the_way_its_map_says():
    from fewshot.data.episodes import distort
    x = torch.arange(2 * 8 * 8, dtype=torch.float64).view(2, 1, 8, 8)
    identity = torch.tensor([[1.0, 0, 0], [0, 1, 0]], dtype=torch.float64).expand(2, 2, 3)
    torch.testing.assert_close(distort(x, identity), x, rtol=0, atol=1e-9)
    one_pixel_right = torch.tensor([[1.0, 0, -2 / 8], [0, 1, 0]], dtype=torch.float64).expand(2, 2, 3)
    moved = distort(x, one_pixel_right)
    torch.testing.assert_close(moved[..., 1:], x[..., :-1], rtol=0, atol=1e-9)
    torch.testing.assert_close(moved[..., 0], x[..., 0], rtol=0, atol=1e-9)  # the border pixel repeats
    quarter_turn = torch.tensor([[0.0, -1, 0], [1, 0, 0]], dtype=torch.float64).expand(2, 2, 3)
    torch.testing.assert_close(distort(x, quarter_turn), torch.rot90(x, 1, (-2, -1)), rtol=0, atol=1e-9)


def test_a_forward_shift_drawn_by_affine_maps_moves_ink_that_way():
    from fewshot.data.episodes import affine_maps, distort
    maps = affine_maps(np.random.default_rng(3), 20000)
    forward = np.linalg.inv(maps[:, :, :2])
    shift = -np.einsum("nij,nj->ni", forward, maps[:, :, 2])  # the sampling map is p -> forward^-1 (p - shift)
    pure = np.flatnonzero((np.abs(forward - np.eye(2)) < 1e-15).all((1, 2)) & (shift[:, 0] > 0.03)
                          & (np.abs(shift[:, 1]) < 1e-15))
    assert len(pure)                                            # a map that only shifts right
    image = torch.zeros(1, 1, 105, 105, dtype=torch.float64)
    image[..., 40:60, 50] = 1.0                                 # a vertical stroke at x = 50
    moved = distort(image, torch.from_numpy(maps[pure[:1]]))
    centre = (moved[0, 0].sum(0) * torch.arange(105.0, dtype=torch.float64)).sum() / moved.sum()
    assert centre.item() == pytest.approx(50 + shift[pure[0], 0] * 105 / 2, abs=1e-6)


def test_distorted_tasks_are_the_same_tasks_through_each_images_own_map():
    from fewshot.data.episodes import DeviceEpisodes, distort
    images, refs = tagged(classes=12, per_class=6)
    images[:, 0, 2:, :] = np.arange(8, dtype=np.uint8).reshape(2, 4) * 30
    preprocessing = {"invert": True, "channels": 1, "mean": [0.3], "std": [0.2]}
    plain = EpisodeSampler(images, refs, ways=4, shots=2, query=1, seed=5, preprocessing=preprocessing)
    distorted = EpisodeSampler(images, refs, ways=4, shots=2, query=1, seed=5, preprocessing=preprocessing,
                               distort=True)
    for index in range(4):
        plans, distorted_plans = plain.plans(index, 3), distorted.plans(index, 3)
        for p, d in zip(plans, distorted_plans):  # the maps are drawn after the rest: the same classes and images
            assert p.affine is None and d.affine.shape == (4, 3, 2, 3)
            assert np.array_equal(p.rows, d.rows) and np.array_equal(p.labels, d.labels)
        for p, d, plan in zip(plain.batch(index, 3), distorted.batch(index, 3), distorted_plans):
            maps = torch.from_numpy(plan.affine)
            for split, shots in (("support", slice(0, 2)), ("query", slice(2, 3))):
                want = distort(getattr(p, f"{split}_x"), maps[:, shots].reshape(-1, 2, 3))  # class by class
                torch.testing.assert_close(getattr(d, f"{split}_x"), want, rtol=1e-6, atol=1e-6)
            assert torch.equal(p.support_y, d.support_y) and torch.equal(p.query_y, d.query_y)
        again = DeviceEpisodes(distorted, "cpu").batch(index, 3)
        assert all(torch.equal(a.support_x, b.support_x) for a, b in zip(again, distorted.batch(index, 3)))
