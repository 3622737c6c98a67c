"""A real published image classifier with its pipeline in the package: EfficientNet-Lite0 (ImageNet,
full-integer uint8 TFLite, 1000 class names inside the .tflite) from the model corpus, fed a photograph
that ships with scikit-learn at its own size. The package's top-5 names equal NumPy pre-processing +
the LiteRT interpreter on the published file + NumPy top-5."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import edgemill.runtime as rt
from bench.corpus.entries import load_entries
from edgemill.pipeline import preprocess
from edgemill.pipeline.spec import parse_preprocess
from edgemill.tensors import TensorSpec

from .conftest import require_corpus, run_cli

pytestmark = pytest.mark.slow
ENTRY = next(e for e in load_entries() if e.id == "efficientnet-lite0-uint8")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> dict:
    require_corpus(ENTRY)
    pytest.importorskip("ai_edge_litert")
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    folder = tmp_path_factory.mktemp("effnet")
    with zipfile.ZipFile(ENTRY.path()) as metadata:  # TFLite metadata: the class names ride inside the model
        names = metadata.read("labels_without_background.txt").decode().splitlines()
    labels = folder / "labels.txt"
    labels.write_text("\n".join(names) + "\n", encoding="utf-8")
    photos = np.stack(sklearn_datasets.load_sample_images().images)  # china.jpg, flower.jpg: 2 x 427 x 640 x 3 RGB
    return {"labels": labels, "names": names, "photos": photos, "folder": folder}


def litert_top5(pre_text: str, photos: np.ndarray, names: list[str]) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    pre = parse_preprocess(pre_text)
    image = preprocess.ModelImage.of(TensorSpec("images", "uint8", (1, 224, 224, 3)), None)
    interpreter = Interpreter(model_path=str(ENTRY.path()))
    interpreter.allocate_tensors()
    index_in = interpreter.get_input_details()[0]["index"]
    index_out = interpreter.get_output_details()[0]["index"]
    rows = []
    for photo in photos:
        interpreter.set_tensor(index_in, preprocess.apply_numpy(pre, image, photo[None]))
        interpreter.invoke()
        scores = interpreter.get_tensor(index_out)[0].astype(np.float64)
        rows.append([names[i] for i in np.argsort(-scores, kind="stable")[:5]])
    return np.array(rows, dtype=object)


def test_published_classifier_takes_photos_and_names_them(classifier: dict, tmp_path: Path) -> None:
    pre_text = "frame=427x640"
    out = tmp_path / "effnet.emp"
    result = run_cli("compile", ENTRY.path(), "-o", out, "--no-measure", "--preprocess", pre_text,
                     "--postprocess", "topk=5", "--labels", classifier["labels"])
    assert result.code == 0, result.err
    model = rt.load(out)
    assert model.backend == "litert" and [(s.dtype, s.shape) for s in model.inputs] == [("uint8", (1, 427, 640, 3))]
    photos = classifier["photos"]
    got = np.concatenate([model.run({model.inputs[0].name: p[None]})["labels"] for p in photos])
    want = litert_top5(pre_text, photos, classifier["names"])
    assert np.array_equal(got, want), (got, want)
    assert "daisy" in got[1]  # flower.jpg: the model sees what the photo shows
    shown = run_cli("inspect", out).out
    assert "resize 427x640 -> 224x224 bilinear" in shown and "labels    1000 class names ('tench', ...)" in shown
