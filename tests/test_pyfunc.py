"""The pyfunc's request handling without a server: the whole request is checked before any
image is generated, and the PNG answer decodes to exactly the array answer's pixels."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import TinyPipeline
from PIL import Image

from acgan.errors import AcganError
from acgan.models.ensemble import Ensemble
from acgan.registry.pyfunc import predict_frame, predict_png


@pytest.fixture(scope="module")
def ensemble(tiny_trained: TinyPipeline) -> Ensemble:
    return Ensemble.load(tiny_trained.model_dirs)


def frame(*rows: tuple[Any, ...]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=["class_label", "n", "seed"])


def test_png_rows_decode_to_the_array_pixels(ensemble: Ensemble) -> None:
    name7 = ensemble.class_names[7]
    request = frame((0, 3, 1), (name7, 2.0, 1))  # a class by name; JSON may send n as 2.0
    arrays = predict_frame(ensemble, request, max_images=5)
    rows = predict_png(ensemble, request, max_images=5)
    assert rows["class_label"].tolist() == arrays["labels"].tolist() == [0, 0, 0, 7, 7]
    assert rows["index"].tolist() == [0, 1, 2, 0, 1] and rows["class_name"].iloc[3] == name7
    pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in rows["png_base64"]]
    assert np.array_equal(np.stack(pixels), arrays["images"])
    assert predict_png(ensemble, request, 5)["png_base64"].tolist() == rows["png_base64"].tolist()
    no_seed = predict_png(ensemble, pd.DataFrame({"class_label": [0], "n": [3]}), 5)
    assert (
        no_seed["png_base64"].tolist()
        == predict_png(ensemble, frame((0, 3, 0)), 5)["png_base64"].tolist()
    )  # seed defaults to 0


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        (((0, 3, 0), (7, 3, 0)), "6 images requested (n summed over the rows); this model serves "),
        (((0, 10**12, 0),), "at most 5 per request"),
        (((0, 1, 0), ("unicorn", 1, 0)), "'unicorn' is not in this ensemble; valid classes: 0="),
        (((0, 0, 0),), "n=0; pass a whole number >= 1"),
        (((0, 2.5, 0),), "n=2.5"),
        (((0, 1, -3),), "seed=-3"),
    ],
)
def test_bad_requests_fail_before_anything_is_generated(
    ensemble: Ensemble, monkeypatch: pytest.MonkeyPatch, rows: tuple[Any, ...], words: str
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(Ensemble, "generate", lambda self, *a, **k: calls.append(a))
    for predict in (predict_png, predict_frame):
        with pytest.raises(AcganError, match="^model input: |^class_label ") as err:
            predict(ensemble, frame(*rows), max_images=5)
        assert words in str(err.value) and "\n" not in str(err.value)
    assert calls == []  # not even the valid rows before the bad one
