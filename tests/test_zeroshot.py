import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from dgtrs_geo.evaluation.templates import FAMILIES, TEMPLATES, prompts, read_templates
from dgtrs_geo.evaluation.zeroshot import (
    class_name,
    class_weights,
    classification_metrics,
    plot_confusion_matrix,
    zeroshot_logits,
)


class _LookupClip:
    """Text tower returning a fixed, unnormalised vector per prompt (token 0 indexes it)."""

    def __init__(self, vectors: torch.Tensor) -> None:
        self.vectors = vectors

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.vectors[tokens[:, 0]]


class _LookupModel:
    device = torch.device("cpu")

    def __init__(self, table: dict[str, tuple[float, float]]) -> None:
        self.ids = {text: index for index, text in enumerate(table)}
        self.clip = _LookupClip(torch.tensor(list(table.values())))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[self.ids[text]] for text in texts])


def test_templates_three_families() -> None:
    assert len(TEMPLATES) == 105
    assert len(set(TEMPLATES)) == 105
    for family in FAMILIES:
        assert sum(family in template for template in TEMPLATES) == 35
    assert all(template.count("{}") == 1 for template in TEMPLATES)
    assert "an aerial image of {}." in TEMPLATES
    assert not any("a aerial" in template for template in TEMPLATES)
    assert prompts("harbor", ("a {} here.",)) == ["a harbor here."]


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("dense_residential", "dense residential"),
        ("DenseResidential", "dense residential"),
        ("SeaLake", "sea lake"),
        ("airplane", "airplane"),
        ("Storage-Tanks", "storage tanks"),
    ],
)
def test_class_name(folder: str, expected: str) -> None:
    assert class_name(folder) == expected


def test_class_weights_average_unnormalised_embeddings() -> None:
    model = _LookupModel(
        {"a x.": (3.0, 0.0), "b x.": (0.0, 1.0), "a y.": (0.0, 2.0), "b y.": (0.0, 4.0)}
    )
    weights = class_weights(model, ["x", "y"], templates=("a {}.", "b {}."), batch_size=1)
    # x: mean (1.5, 0.5) -> (3, 1) / sqrt(10); averaging unit vectors first would give (1, 1) / sqrt(2).
    torch.testing.assert_close(
        weights, torch.tensor([[3 / math.sqrt(10), 1 / math.sqrt(10)], [0.0, 1.0]])
    )
    logits = zeroshot_logits(torch.tensor([[0.6, 0.8], [1.0, 0.0]]), weights)
    expected = torch.tensor(
        [[100 * (1.8 + 0.8) / math.sqrt(10), 80.0], [100 * 3 / math.sqrt(10), 0.0]]
    )
    torch.testing.assert_close(logits, expected)


def test_classification_metrics_hand_computed() -> None:
    logits = torch.tensor(
        [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [5.0, 0.0, 1.0], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]]
    )
    labels = torch.tensor([0, 1, 1, 1, 0])
    result = classification_metrics(logits, labels, ["a", "b", "c"])
    # Predictions 0, 1, 0, 1, 2: three of five right.
    assert result["top1"] == pytest.approx(60.0)
    assert result["per_class"] == pytest.approx({"a": 50.0, "b": 200 / 3})
    assert result["confusion"] == [[1, 0, 1], [1, 2, 0], [0, 0, 0]]
    figure = plot_confusion_matrix(result["confusion"], ["a", "b", "c"], title="t")
    assert figure.axes[0].get_title() == "t"
    plt.close(figure)


def test_classification_metrics_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        classification_metrics(torch.zeros(3, 2), torch.zeros(3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics(torch.zeros(2, 2), torch.tensor([0, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        class_weights(None, [], TEMPLATES)


def test_real_tiny_model_weights(tiny_model) -> None:
    weights = class_weights(tiny_model, ["airport", "dense residential"], templates=TEMPLATES[:4])
    assert weights.shape == (2, tiny_model.embed_dim)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights.norm(dim=1), torch.ones(2))
    # One template: the weight is just that prompt's embedding.
    single = class_weights(tiny_model, ["airport"], templates=("a satellite image of {}.",))
    torch.testing.assert_close(
        single[0], tiny_model.encode_text(["a satellite image of airport."])[0]
    )


def test_read_templates(tmp_path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("# mine\n\na photo of {}.\n  an image of {}.  \n")
    assert read_templates(str(path)) == ("a photo of {}.", "an image of {}.")
    path.write_text("a photo of a thing.\n")
    with pytest.raises(ValueError, match="exactly one"):
        read_templates(str(path))
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no template"):
        read_templates(str(path))
