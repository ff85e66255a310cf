"""The image cache's memory bound: decided from the manifest's size before anything is cached."""

import pytest

from guie.data.dataset import CACHE_MEMORY_SHARE, CacheRequest, available_memory, cached_image_bytes, plan_image_cache

PER_IMAGE = cached_image_bytes(224)
GIB = 2**30


def test_a_cached_image_is_its_resized_pixels_whatever_its_size_on_disk():
    assert 3 * 224 * 224 <= PER_IMAGE < 3 * 224 * 224 + 1024  # ~150 KB, as the README says


def test_the_issue_s_100k_images_in_two_workers_do_not_fit_a_24_gib_machine():
    request = CacheRequest("training images", 100_000, copies=2)
    decisions, warnings = plan_image_cache([request], 224, available=24 * GIB)
    assert decisions == [False]
    (warning,) = warnings
    assert warning.startswith("train.cache_images: not caching the training images: 100000 images x 151 KB x 2 copies")
    assert "28.1 GiB" in warning and "24.0 GiB" in warning


def test_a_cache_that_fits_the_budget_is_kept_and_the_budget_is_shared_in_order():
    small = CacheRequest("training images", 1000)
    need = 1000 * PER_IMAGE
    decisions, warnings = plan_image_cache([small], 224, available=int(need / CACHE_MEMORY_SHARE) + 1)
    assert decisions == [True] and warnings == []
    # the second request gets what the first left: both fit alone, not together
    decisions, warnings = plan_image_cache(
        [small, CacheRequest("held-out images", 1000)], 224, available=int(1.5 * need / CACHE_MEMORY_SHARE)
    )
    assert decisions == [True, False]
    assert "held-out images" in warnings[0]


def test_every_copy_counts_and_unknown_memory_caches_nothing():
    one = plan_image_cache([CacheRequest("training images", 1000, copies=1)], 224, available=4 * 1000 * PER_IMAGE)[0]
    four = plan_image_cache([CacheRequest("training images", 1000, copies=4)], 224, available=4 * 1000 * PER_IMAGE)[0]
    assert one == [True] and four == [False]
    decisions, warnings = plan_image_cache([CacheRequest("training images", 1)], 224, available=None)
    assert decisions == [False] and "memory available is unknown" in warnings[0]


def test_available_memory_is_read_from_this_machine():
    free = available_memory()
    if free is None:
        pytest.skip("no memory reading on this platform")
    assert free > 0
