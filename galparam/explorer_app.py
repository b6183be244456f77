"""The explorer's Streamlit app: layout and widgets only (the numbers come from
:mod:`galparam.explorer`). Started by ``galparam-explore``, which passes the runs and the dataset
in the environment (:data:`galparam.explorer.RUNS_ENV`, :data:`galparam.explorer.DATASET_ENV`).
"""

from __future__ import annotations

import os
import time

import numpy as np
import streamlit as st

from galparam import explorer
from galparam.errors import GalparamError
from galparam.parameters import LABEL_NAMES, LABEL_UNITS
from galparam.render import KSpaceRenderer, renderer_for

SLIDER_LABELS = {
    "flux": "flux (counts)",
    "sersic_n": "Sérsic index n",
    "hlr": "half-light radius (arcsec)",
    "shear_amplitude": "shear amplitude |g|",
    "shear_angle_deg": "shear angle β (degrees)",
    "psf_fwhm": "PSF FWHM (arcsec)",
    "sigma": "noise σ (counts)",
}


@st.cache_resource
def _renderer():
    return renderer_for(KSpaceRenderer.NAME)


@st.cache_resource
def _estimators(runs: tuple):
    return explorer.check_runs(runs)


@st.cache_resource
def _dataset(path: str):
    dataset = explorer.load(path)
    return dataset, explorer.metadata(dataset)


def _inputs():
    runs = tuple(p for p in os.environ.get(explorer.RUNS_ENV, "").split(os.pathsep) if p)
    return runs, os.environ.get(explorer.DATASET_ENV) or None


def _images(pairs, kind, width=200):
    st.image(
        [explorer.stretch(image, kind) for image, _ in pairs],
        caption=[caption for _, caption in pairs],
        width=width,
        clamp=True,
    )


def simulate_page(estimators):
    st.header("Simulate a galaxy")
    values = {}
    with st.sidebar:
        st.subheader("Galaxy and observation")
        for name, (low, high, default, step) in explorer.SLIDERS.items():
            values[name] = st.slider(SLIDER_LABELS[name], low, high, default, step, key=name)
        values["poisson"] = st.checkbox("Poisson noise", value=True, key="poisson")
        values["seed"] = int(st.number_input("noise seed", 0, 2**31 - 1, 0, key="seed"))
        stretch = st.radio("stretch", ("linear", "log"), horizontal=True, key="stretch")
    point = explorer.Point(**values)
    started = time.perf_counter()
    try:
        view = explorer.draw(point, _renderer())
    except GalparamError as exc:
        st.error(f"Cannot draw this galaxy: {exc}")
        return
    low, high = explorer.TRAINING_SNR_WINDOW
    inside = "inside" if view.in_window else "outside"
    st.markdown(
        f"g1 = **{point.g1:+.4f}**, g2 = **{point.g2:+.4f}** · SNR = **{view.snr:.1f}** "
        f"({inside} the training window {low:g}–{high:g})"
    )
    _images([(view.noiseless, "noiseless"), (view.noisy, "noisy"), (view.psf, "PSF")], stretch)

    st.subheader("Cramér–Rao bound at this point")
    bound = view.bound.std.to_frame("bound (std)").T
    bound.columns = [f"{n} ({LABEL_UNITS[n]})" if LABEL_UNITS[n] else n for n in LABEL_NAMES]
    st.dataframe(bound, key="bound")
    st.caption("correlation matrix of the bound")
    st.dataframe(view.bound.correlation.round(3), key="correlation")

    if estimators:
        st.subheader("Estimates of the loaded runs")
        try:
            st.dataframe(explorer.estimate(view, estimators), key="estimates")
        except GalparamError as exc:
            st.error(f"A run cannot measure this image: {exc}")
    st.caption(f"drawn in {time.perf_counter() - started:.2f} s")

    if st.button("Fit by maximum likelihood", key="fit"):
        started = time.perf_counter()
        result, errors, residual = explorer.fit(view, _renderer())
        st.markdown(
            f"Fit {'converged' if result.converged else 'did NOT converge'} in {result.iterations} iterations, "
            f"{time.perf_counter() - started:.2f} s"
        )
        table = np.vstack([result.theta, errors.to_numpy()])
        st.dataframe(
            {"": ["estimate", "error/bound"], **{n: table[:, i] for i, n in enumerate(LABEL_NAMES)}}, key="fit_table"
        )
        _images([(residual, "residual (noisy - fitted model)")], "linear")


def dataset_page(dataset_path, estimators):
    st.header("Browse a dataset")
    if not dataset_path:
        st.info("No dataset loaded: start the explorer with --dataset DATA.npz")
        return
    try:
        dataset, table = _dataset(dataset_path)
    except GalparamError as exc:
        st.error(f"Cannot load {dataset_path}: {exc}")
        return
    st.caption(f"{dataset_path}: {len(table):,} images ({dataset.spec.name})")
    ranges = {}
    with st.sidebar:
        st.subheader("Filters")
        for column in explorer.FILTER_COLUMNS:
            low, high = float(table[column].min()), float(table[column].max())
            if high > low:
                ranges[column] = st.slider(column, low, high, (low, high), key=f"filter_{column}")
    chosen = explorer.select(table, ranges)
    st.markdown(f"**{len(chosen):,}** images match the filters")
    st.dataframe(chosen.head(1000), key="metadata")
    if estimators and len(chosen):
        st.subheader("Predictions against each image's bound")
        name = st.selectbox("run", list(estimators), key="run")
        count = st.number_input("images (the first of the selection)", 1, 2000, min(200, len(chosen)), key="count")
        try:
            result = explorer.predictions(dataset, estimators[name], chosen.index[: int(count)].to_numpy())
        except GalparamError as exc:
            st.error(f"{name} cannot measure these images: {exc}")
        else:
            st.caption("sort by a column's header: the largest errors in units of the bound show where the run fails")
            st.dataframe(result, key="predictions")
    first = chosen.index[:8].to_numpy()
    if len(first):
        st.subheader("The first images of the selection")
        _images(
            [
                (
                    dataset.img[i],
                    f"#{i}: n {table.at[i, 'sersic_n']:.2f}, r {table.at[i, 'hlr']:.2f}, SNR {table.at[i, 'snr']:.0f}",
                )
                for i in first
            ],
            "linear",
            width=150,
        )


def main():
    st.set_page_config(page_title="galparam explorer", layout="wide")
    runs, dataset_path = _inputs()
    estimators = {}
    try:
        estimators = _estimators(runs)
    except GalparamError as exc:
        st.error(f"Cannot load the runs: {exc}")
    page = st.sidebar.radio("page", ("Simulate", "Dataset"), key="page")
    if page == "Simulate":
        simulate_page(estimators)
    else:
        dataset_page(dataset_path, estimators)


main()
