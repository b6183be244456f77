import json

import numpy as np
import pytest

from galparam.data import load_dataset, split_indices
from galparam.errors import DatasetError, GalparamError
from galparam.io import write_npz_atomic
from galparam.simulate import simulate


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    from conftest import make_spec

    out = tmp_path_factory.mktemp("data") / "good.npz"
    return simulate(make_spec(size=8), out, jobs=1, progress=False).output


def _copy_with(good, tmp_path, **changes):
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path = tmp_path / "bad.npz"
    write_npz_atomic(path, arrays)
    return path


def test_load_good(good):
    ds = load_dataset(good)
    assert len(ds) == 8 and ds.label.dtype == np.float32 and ds.spec.name == "tiny"


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "nope.npz")


def test_not_an_npz(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("hello")
    with pytest.raises(DatasetError, match="not a readable npz"):
        load_dataset(path)


def test_truncated(good, tmp_path):
    path = tmp_path / "cut.npz"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DatasetError, match="not a readable npz"):
        load_dataset(path)


def test_missing_key(good, tmp_path):
    with pytest.raises(DatasetError, match="missing img_nonoise"):
        load_dataset(_copy_with(good, tmp_path, img_nonoise=None))


def test_nans(good, tmp_path):
    with np.load(good) as z:
        img = z["img"].copy()
    img[3, 5, 5] = np.nan
    with pytest.raises(DatasetError, match="img holds 1 NaN"):
        load_dataset(_copy_with(good, tmp_path, img=img))


def test_wrong_shape_and_dtype(good, tmp_path):
    with np.load(good) as z:
        label, snr = z["label"], z["snr"]
    with pytest.raises(DatasetError, match=r"label has shape \(8, 4\)"):
        load_dataset(_copy_with(good, tmp_path, label=label[:, :4]))
    with pytest.raises(DatasetError, match="snr has dtype float64"):
        load_dataset(_copy_with(good, tmp_path, snr=snr.astype(np.float64)))


def test_label_out_of_range(good, tmp_path):
    with np.load(good) as z:
        label = z["label"].copy()
    label[2, 2] = -0.1
    with pytest.raises(DatasetError, match="hlr of image 2 is out of range"):
        load_dataset(_copy_with(good, tmp_path, label=label))


def test_pickled_objects_are_refused(good, tmp_path):
    path = tmp_path / "pickled.npz"
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["spec"] = np.array([{"evil": 1}], dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(DatasetError):
        load_dataset(path)


def test_split_is_deterministic_and_checked():
    train, val = split_indices(200, 0.1)
    assert (train == np.arange(180)).all() and (val == np.arange(180, 200)).all()
    with pytest.raises(GalparamError, match=r"\[0, 1\)"):
        split_indices(10, 1.5)


def test_scaler_json_round_trip(tmp_path):
    from galparam.data import MinMaxScaler
    from galparam.parameters import LABEL_NAMES

    rng = np.random.default_rng(1)
    labels = rng.uniform([3e4, 0.5, 0.1, -0.6, -0.6], [4e5, 6, 0.6, 0.6, 0.6], size=(100, 5))
    scaler = MinMaxScaler((-1, 1), names=LABEL_NAMES).fit(labels)
    scaled = scaler.transform(labels)
    assert scaled.dtype == np.float32 and scaled.min() == pytest.approx(-1) and scaled.max() == pytest.approx(1)
    scaler.save(tmp_path / "scaler.json")
    again = MinMaxScaler.load(tmp_path / "scaler.json")
    np.testing.assert_array_equal(again.transform(labels), scaled)
    np.testing.assert_allclose(again.inverse_transform(scaled), labels, rtol=1e-6)
    assert json.loads((tmp_path / "scaler.json").read_text())["names"] == list(LABEL_NAMES)
    (tmp_path / "bad.json").write_text('{"kind": "minmax"}')
    with pytest.raises(GalparamError, match="not a galparam scaler"):
        MinMaxScaler.load(tmp_path / "bad.json")
    with pytest.raises(GalparamError, match="NaN"):
        MinMaxScaler().fit(np.array([[np.nan]]))
