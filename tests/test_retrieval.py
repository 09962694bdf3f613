import itertools
import math

import pytest
import torch

from dgtrs_geo.evaluation import retrieval_recalls


def _brute_force(scores: torch.Tensor, text_to_image: list[int], ks=(1, 5, 10)) -> dict[str, float]:
    """Sort-based recalls on an explicit [Ni, Nt] score matrix, positives placed last among ties."""
    n_images, n_texts = scores.shape
    result = {}
    i2t_hits = {k: 0 for k in ks}
    for i in range(n_images):
        # Sort key: higher score first; among equal scores negatives come before positives.
        order = sorted(range(n_texts), key=lambda j: (-scores[i, j].item(), text_to_image[j] == i))
        first = next(pos for pos, j in enumerate(order) if text_to_image[j] == i)
        for k in ks:
            i2t_hits[k] += first < k
    t2i_hits = {k: 0 for k in ks}
    for j in range(n_texts):
        order = sorted(range(n_images), key=lambda i: (-scores[i, j].item(), i == text_to_image[j]))
        position = order.index(text_to_image[j])
        for k in ks:
            t2i_hits[k] += position < k
    for k in ks:
        result[f"i2t_r{k}"] = 100.0 * i2t_hits[k] / n_images
    for k in ks:
        result[f"t2i_r{k}"] = 100.0 * t2i_hits[k] / n_texts
    result["mR"] = sum(result.values()) / len(result)
    return result


def _one_hot_embeddings(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings whose dot products are exactly ``scores``: images one-hot, texts = columns."""
    n_images = scores.shape[0]
    return torch.eye(n_images), scores.T.clone()


def test_keys_and_perfect_match() -> None:
    emb = torch.nn.functional.normalize(
        torch.randn(12, 8, generator=torch.Generator().manual_seed(0)), dim=1
    )
    result = retrieval_recalls(emb, emb, torch.arange(12))
    assert list(result) == ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR"]
    assert all(value == 100.0 for value in result.values())


def test_hand_computed_two_captions_per_image() -> None:
    # 3 images, 6 captions: captions (0, 1) -> image 0, (2, 3) -> image 1, (4, 5) -> image 2.
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.8, 0.0, 0.0, 0.0],  # image 0: best caption (1) is first -> hit@1
            [0.5, 0.5, 0.1, 0.2, 0.0, 0.0],  # image 1: best own caption 0.2, two negatives above
            [0.3, 0.0, 0.0, 0.0, 0.3, 0.1],  # image 2: own 0.3 tied with negative 0.3 -> rank 1
        ]
    )
    image_emb, text_emb = _one_hot_embeddings(scores)
    result = retrieval_recalls(image_emb, text_emb, torch.tensor([0, 0, 1, 1, 2, 2]), ks=(1, 2, 3))
    assert result["i2t_r1"] == pytest.approx(100 / 3)
    assert result["i2t_r2"] == pytest.approx(200 / 3)
    assert result["i2t_r3"] == pytest.approx(100.0)
    # Text->image ranks of captions 0..5 (read down each column): col0 [0.1,0.5,0.3] -> 2;
    # col1 -> 0; col2 [0.8,0.1,0] own image 1 -> 1; col3, col4, col5 -> 0.
    assert result["t2i_r1"] == pytest.approx(100 * 4 / 6)
    assert result["t2i_r2"] == pytest.approx(100 * 5 / 6)
    assert result["t2i_r3"] == pytest.approx(100.0)
    expected_mean = (100 / 3 + 200 / 3 + 100 + 400 / 6 + 500 / 6 + 100) / 6
    assert result["mR"] == pytest.approx(expected_mean)


def test_constant_embeddings_are_last_in_every_tie() -> None:
    emb = torch.ones(20, 4) / 2
    result = retrieval_recalls(emb, emb, torch.arange(20))
    # Every positive is ranked after the 19 tied negatives: no hit before K = 20.
    assert result["mR"] == 0.0
    result = retrieval_recalls(emb, emb, torch.arange(20), ks=(20,))
    assert result == {"i2t_r20": 100.0, "t2i_r20": 100.0, "mR": 100.0}


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_with_ties_and_several_captions(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    n_images = 13
    captions_per_image = torch.randint(1, 6, (n_images,), generator=generator)
    text_to_image = torch.repeat_interleave(torch.arange(n_images), captions_per_image)
    text_to_image = text_to_image[torch.randperm(len(text_to_image), generator=generator)]
    # Scores on a coarse grid of 4 values so ties are everywhere.
    scores = torch.randint(0, 4, (n_images, len(text_to_image)), generator=generator).float() / 4
    image_emb, text_emb = _one_hot_embeddings(scores)
    result = retrieval_recalls(image_emb, text_emb, text_to_image, ks=(1, 3, 5, 10))
    expected = _brute_force(scores, text_to_image.tolist(), ks=(1, 3, 5, 10))
    assert result.keys() == expected.keys()
    for key in expected:
        assert result[key] == pytest.approx(expected[key]), key


def test_chunking_gives_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import dgtrs_geo.evaluation.retrieval as retrieval

    generator = torch.Generator().manual_seed(5)
    image_emb = torch.nn.functional.normalize(torch.randn(30, 6, generator=generator), dim=1)
    text_emb = torch.nn.functional.normalize(torch.randn(90, 6, generator=generator), dim=1)
    text_to_image = torch.arange(30).repeat(3)
    whole = retrieval_recalls(image_emb, text_emb, text_to_image)
    monkeypatch.setattr(retrieval, "_CHUNK", 7)
    assert retrieval_recalls(image_emb, text_emb, text_to_image) == whole
    assert not math.isnan(whole["mR"])


@pytest.mark.parametrize(
    ("image_shape", "text_shape", "mapping", "match"),
    [
        ((3, 4), (3, 5), [0, 1, 2], "differ in width"),
        ((3, 4), (3, 4), [0, 1], "one image index per caption"),
        ((3, 4), (3, 4), [0, 1, 3], "outside"),
        ((3, 4), (3, 4), [0, 1, 1], "have no caption"),
        ((3,), (3, 4), [0, 1, 2], "2-D"),
    ],
)
def test_bad_input(image_shape, text_shape, mapping, match) -> None:
    with pytest.raises(ValueError, match=match):
        retrieval_recalls(torch.ones(image_shape), torch.ones(text_shape), torch.tensor(mapping))


def test_bad_ks_and_float_indices() -> None:
    emb = torch.eye(3)
    with pytest.raises(ValueError, match="positive integers"):
        retrieval_recalls(emb, emb, torch.arange(3), ks=(0,))
    with pytest.raises(ValueError, match="integer indices"):
        retrieval_recalls(emb, emb, torch.tensor([0.0, 1.0, 2.0]))


def test_every_assignment_of_three_tied_captions() -> None:
    # Captions 2..4 score 0.5 against both images; try every way to assign them.
    for split in itertools.product(range(2), repeat=3):
        text_to_image = torch.tensor([0, 1, *split])
        scores = torch.tensor([[1.0, 0.0, 0.5, 0.5, 0.5], [0.0, 1.0, 0.5, 0.5, 0.5]])
        image_emb, text_emb = _one_hot_embeddings(scores)
        result = retrieval_recalls(image_emb, text_emb, text_to_image, ks=(1,))
        expected = _brute_force(scores, text_to_image.tolist(), ks=(1,))
        assert result == pytest.approx(expected)


def test_input_errors_say_exactly_what_is_wrong() -> None:
    emb = torch.eye(4)
    with pytest.raises(ValueError, match=r"one image index per caption \(4\); got shape \(3,\)$"):
        retrieval_recalls(emb[:, :3], torch.ones(4, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"^retrieval needs at least one image and one caption$"):
        retrieval_recalls(emb, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^retrieval needs at least one image and one caption$"):
        retrieval_recalls(torch.zeros(0, 4), emb, torch.tensor([0, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"^text_to_image holds indices outside \[0, 3\]$"):
        retrieval_recalls(emb, emb, torch.tensor([0, 1, 2, 4]))
    eight = torch.eye(8)
    with pytest.raises(
        ValueError,
        match=r"^7 images have no caption \(first: \[1, 2, 3, 4, 5\]\); image->text recall is "
        r"undefined for them: drop them from image_emb$",
    ):
        retrieval_recalls(eight, eight[:2], torch.tensor([0, 0]))


def test_one_pair_and_mixed_precision() -> None:
    # One image with one caption is a valid (if certain) benchmark.
    assert retrieval_recalls(torch.ones(1, 3), torch.ones(1, 3), torch.tensor([0]))["mR"] == 100.0
    # Captions in another precision are compared in the images' precision.
    generator = torch.Generator().manual_seed(2)
    images = torch.nn.functional.normalize(torch.randn(6, 5, generator=generator), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(6, 5, generator=generator), dim=1)
    expected = retrieval_recalls(images, texts, torch.arange(6))
    assert retrieval_recalls(images, texts.double(), [0, 1, 2, 3, 4, 5]) == expected
