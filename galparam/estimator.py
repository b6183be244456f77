"""A trained model as a measuring instrument: images in, the five parameters out, in physical units.

A run folder written by :func:`galparam.train.train` is usable alone::

    from galparam import load_estimator
    estimator = load_estimator("runs/xception-v1-small")
    table = estimator.predict(images)            # DataFrame: flux, sersic_n, hlr, g1, g2
    table = estimator.predict(images, psf_images) # models trained with the PSF input (v3)
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from tqdm.auto import tqdm

from galparam import backend
from galparam.data import MinMaxScaler, load_dataset, with_channel
from galparam.errors import GalparamError
from galparam.evaluate.uncertainty import fit_calibration
from galparam.models import FAMILIES
from galparam.models.heads import decode
from galparam.parameters import LABEL_NAMES
from galparam.runs import AUTOKERAS_FAMILY, RunFolder

DENOISERS = tuple(name for name, family in FAMILIES.items() if family.restores_images)
"""The families whose runs restore images (loaded with :func:`load_denoiser`)."""

_CHUNK = 8192  # images converted to a tensor at a time


def _check_image_stack(images, image_shape, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != tuple(image_shape):
        raise GalparamError(
            f"{what} have shape {images.shape}; this model takes (N, {image_shape[0]}, {image_shape[1]})"
        )
    if not np.isfinite(images).all():
        raise GalparamError(f"{what} hold NaN or infinite values")
    return images


class Estimator:
    """A trained network with its scalers.

    Parameters
    ----------
    model : keras.Model
        The Xception regressor (inputs ``image`` and maybe ``psf``), or the autoencoder (input
        ``noisy_image``; its ``encoder`` and ``decoder`` layers are used).
    family : str
        The run's family (:data:`galparam.models.FAMILIES`, or ``autokeras``): its declaration
        says which layer predicts the labels and which draws images.
    label_scaler : MinMaxScaler
        Maps the network's label outputs back to physical units.
    image_scaler : MinMaxScaler, optional
        The autoencoder's noiseless-image scaling (for :meth:`reconstruct`).
    psf_input : bool
        Whether the model takes the PSF image.
    denoiser : Denoiser, optional
        A two-stage run's first stage: images are restored by it before the network sees them.
    uncertainty : {"none", "diagonal", "full"}
        The Xception's uncertainty head (:mod:`galparam.models.heads`).
    calibration : array_like of shape (5,), optional
        Factors on each label's predicted spread (the run's ``calibration.json``).
    interval_calibration : dict, optional
        Level (0.68, 0.95) → factors (5,) on the uncalibrated spread whose central intervals cover
        that level (``calibration.json``'s ``intervals``; :func:`galparam.evaluate.uncertainty.interval_factors`).
    """

    def __init__(
        self,
        model,
        family: str,
        label_scaler: MinMaxScaler,
        image_scaler=None,
        *,
        psf_input=False,
        denoiser=None,
        uncertainty: str = "none",
        calibration=None,
        interval_calibration=None,
    ):
        self.model = model
        self.uncertainty = uncertainty
        self.calibration = None if calibration is None else np.asarray(calibration, dtype=np.float64)
        self.interval_calibration = (
            None
            if interval_calibration is None
            else {float(k): np.asarray(v, dtype=np.float64) for k, v in interval_calibration.items()}
        )
        self.family = family
        self.label_scaler = label_scaler
        self.image_scaler = image_scaler
        self.psf_input = bool(psf_input)
        self.denoiser = denoiser
        declared = FAMILIES.get(family)
        self._predictor = getattr(declared, "predictor", None)
        self._decoder = getattr(declared, "decoder", None)
        self._net = model.get_layer(self._predictor) if self._predictor else model
        self.image_shape = tuple(self._net.inputs[0].shape[1:3])

    def _check_images(self, images, what: str) -> np.ndarray:
        return _check_image_stack(images, self.image_shape, what)

    @property
    def interval_scale(self) -> dict[float, np.ndarray] | None:
        """Level → factors (5,) on the calibrated spread that give each level's interval its own
        calibrated width (σ × z(level) × factor); None where the run has no per-level calibration."""
        if self.interval_calibration is None:
            return None
        spread = np.ones(len(LABEL_NAMES)) if self.calibration is None else self.calibration
        return {level: f / spread for level, f in self.interval_calibration.items()}

    def predict_scaled(self, images, psf_images=None, *, batch_size: int | None = None) -> np.ndarray:
        """The network's raw outputs (labels in the scaler's range); see :meth:`predict`."""
        images = self._check_images(images, "images")
        if self.psf_input:
            if psf_images is None:
                raise GalparamError("this model was trained with the PSF image as a second input: pass psf_images")
            psf_images = self._check_images(psf_images, "psf_images")
            if len(psf_images) == 1:
                psf_images = np.broadcast_to(psf_images, images.shape)
            if len(psf_images) != len(images):
                raise GalparamError(f"{len(psf_images)} PSF images for {len(images)} images; give one, or one each")
        elif psf_images is not None:
            raise GalparamError("this model takes no PSF input; call predict without psf_images")
        out = []
        for start in range(0, len(images), _CHUNK):
            chunk = images[start : start + _CHUNK]
            if self.denoiser is not None:
                chunk = self.denoiser.denoise(chunk, batch_size=batch_size or 256)
            x = with_channel(chunk)
            if self.psf_input:
                x = {"image": x, "psf": with_channel(psf_images[start : start + _CHUNK])}
            y = backend.predict(self._net, x, batch_size=batch_size)
            out.append(np.asarray(y["labels"] if isinstance(y, dict) else y))  # a joint model's two outputs
        return np.concatenate(out) if out else np.empty((0, len(LABEL_NAMES)), np.float32)

    def predict_distribution(self, images, psf_images=None, *, batch_size: int | None = None, calibrated: bool = True):
        """Each image's estimate and, with an uncertainty head, its covariance, in physical units.

        Returns
        -------
        mean : ndarray of shape (N, 5)
        covariance : ndarray of shape (N, 5, 5) or None
            None without an uncertainty head; scaled by the run's calibration unless ``calibrated`` is false.
        """
        mean, cov = decode(self.predict_scaled(images, psf_images, batch_size=batch_size), self.uncertainty)
        mean = self.label_scaler.inverse_transform(mean)
        if cov is None:
            return mean, None
        scale = self.label_scaler.affine()[0]
        cov = cov / np.outer(scale, scale)
        return mean, calibrated_covariance(cov, self.calibration if calibrated else None)

    def predict(self, images, psf_images=None, *, batch_size: int | None = None) -> pd.DataFrame:
        """Estimate the five parameters of each image (and, with an uncertainty head, their spreads).

        Parameters
        ----------
        images : array_like of shape (N, S, S) or (N, S, S, 1)
            Galaxy images in counts, as the training images (same size and pixel scale).
        psf_images : array_like of shape (N, S, S) or (1, S, S), optional
            The PSF image of each galaxy (or one for all); required by models trained with the PSF input.
        batch_size : int, optional
            Images per forward pass (default 256; on JAX 1,024, every pass of a call in one
            compiled loop on the device: :func:`galparam.backend.predict`).

        Returns
        -------
        DataFrame
            Columns :data:`galparam.parameters.LABEL_NAMES` (flux in counts, hlr in arcsec); with an
            uncertainty head also ``flux_std`` ... ``g2_std`` (calibrated), the half-widths of the
            calibrated 68 % and 95 % central intervals ``flux_ci68`` ... ``g2_ci95`` (each level
            calibrated on its own: the estimate ± ``_ci95`` covers 95 % of the validation split's
            truths), and with a full covariance the correlations ``corr_flux_sersic_n`` ... ``corr_g1_g2``.

        Raises
        ------
        GalparamError
            On a wrong image size, NaN values, or a missing or unexpected PSF input.
        """
        mean, cov = self.predict_distribution(images, psf_images, batch_size=batch_size)
        return _table(mean, cov, correlations=self.uncertainty == "full", interval_scale=self.interval_scale)

    def reconstruct(self, labels, *, batch_size: int = 256) -> np.ndarray:
        """The decoder's noiseless image of each row of physical ``labels`` (N, 5), in counts (a
        family with a decoder: the autoencoder)."""
        if self._decoder is None or self.image_scaler is None:
            raise GalparamError("only an autoencoder run reconstructs images")
        scaled = self.label_scaler.transform(np.asarray(labels, dtype=np.float64))
        decoder = self.model.get_layer(self._decoder)
        images = np.asarray(decoder.predict(scaled, batch_size=batch_size, verbose=0))[..., 0]
        return self.image_scaler.inverse_transform(images.reshape(-1, 1)).reshape(images.shape).astype(np.float32)


def calibrated_covariance(cov, factors):
    """Covariances (N, 5, 5) with one calibration factor per label on the spreads; unchanged
    without ``factors``."""
    return cov if factors is None else cov * np.outer(factors, factors)


def _table(mean, cov, correlations: bool, interval_scale=None) -> pd.DataFrame:
    """The estimates, their spreads (``<label>_std``), with ``interval_scale`` the calibrated
    intervals' half-widths (``<label>_ci68`` ...) and, with ``correlations``, ``corr_<a>_<b>``."""
    table = pd.DataFrame(mean, columns=list(LABEL_NAMES))
    if cov is None:
        return table
    std = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    for k, name in enumerate(LABEL_NAMES):
        table[f"{name}_std"] = std[:, k]
    for level, scale in (interval_scale or {}).items():
        half_width = std * scale * stats.norm.ppf(0.5 + level / 2)
        for k, name in enumerate(LABEL_NAMES):
            table[f"{name}_ci{round(100 * level)}"] = half_width[:, k]
    if correlations:
        for i, j in zip(*np.triu_indices(len(LABEL_NAMES), 1), strict=True):
            table[f"corr_{LABEL_NAMES[i]}_{LABEL_NAMES[j]}"] = cov[:, i, j] / (std[:, i] * std[:, j])
    return table


class Ensemble:
    """A deep ensemble: runs of one experiment with different seeds, combined (Lakshminarayanan et al. 2017).

    The estimate is the members' mean; its covariance is the mixture's: the mean of the members'
    covariances (none for members without an uncertainty head) plus the covariance of their
    estimates about the mean.

    Members calibrated one by one give an over-dispersed mixture (their disagreement adds to
    spreads that already cover): :meth:`calibrate` (what :func:`load_ensemble` does on the
    members' shared validation split) fits the ensemble's own factors, as a run's are fitted.

    Parameters
    ----------
    members : sequence of Estimator
        At least two, all taking the same inputs.

    Raises
    ------
    GalparamError
        With fewer than two members, or members that differ in image size or PSF input.
    """

    calibration = interval_calibration = None
    not_calibrated: str | None = None
    """Why :func:`load_ensemble` left the ensemble uncalibrated (None where it calibrated it)."""

    def __init__(self, members):
        self.members = list(members)
        if len(self.members) < 2:
            raise GalparamError(f"an ensemble needs at least two runs, got {len(self.members)}")
        first = self.members[0]
        for m in self.members[1:]:
            if m.image_shape != first.image_shape or m.psf_input != first.psf_input:
                raise GalparamError(
                    "the ensemble's runs differ in image size or PSF input; give runs of one experiment"
                )
        self.psf_input = first.psf_input
        self.image_shape = first.image_shape

    interval_scale = Estimator.interval_scale

    def calibrate(self, images, truth, psf_images=None, *, batch_size: int | None = None) -> dict:
        """Fit the ensemble's calibration on images with known ``truth`` (N, 5): one factor per label
        on the mixture's spread and one per level for the intervals, as
        :func:`galparam.train.calibrate` fits a run's; returns the factors."""
        mean, cov = self.predict_distribution(images, psf_images, batch_size=batch_size, calibrated=False)
        std = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
        self.calibration, self.interval_calibration = fit_calibration(truth, mean, std)
        return {"factors": self.calibration, "intervals": self.interval_calibration}

    def predict_distribution(self, images, psf_images=None, *, batch_size: int | None = None, calibrated: bool = True):
        """The ensemble's estimates (N, 5) and covariances (N, 5, 5), physical units (scaled by the
        ensemble's own calibration where :meth:`calibrate` ran, unless ``calibrated`` is false;
        the members' calibrations always apply)."""
        outputs = [m.predict_distribution(images, psf_images, batch_size=batch_size) for m in self.members]
        means = np.stack([mean for mean, _ in outputs])
        mean = means.mean(axis=0)
        spread = means - mean
        cov = np.einsum("mni,mnj->nij", spread, spread) / len(self.members)
        member_covs = [c for _, c in outputs if c is not None]
        if member_covs:
            cov = cov + np.mean(member_covs, axis=0)
        return mean, calibrated_covariance(cov, self.calibration if calibrated else None)

    def predict(self, images, psf_images=None, *, batch_size: int | None = None) -> pd.DataFrame:
        """As :meth:`Estimator.predict`: the estimates, ``<label>_std`` (and, once calibrated,
        ``<label>_ci68`` and ``<label>_ci95``) and the correlations."""
        mean, cov = self.predict_distribution(images, psf_images, batch_size=batch_size)
        return _table(mean, cov, correlations=True, interval_scale=self.interval_scale)


def load_ensemble(run_dirs, *, calibrate: bool = True, batch_size: int | None = None) -> Ensemble:
    """A deep ensemble of runs of one experiment (other seeds), calibrated on their validation split.

    Parameters
    ----------
    run_dirs : sequence of path-like
        At least two finished runs.
    calibrate : bool
        Fit the ensemble's calibration (:meth:`Ensemble.calibrate`) on the validation split the
        runs share (one dataset, the same split: runs of one experiment); runs that share none, or
        whose dataset is gone, give an uncalibrated ensemble.
    batch_size : int
        Images per forward pass of the calibration.

    Raises
    ------
    GalparamError
        As :func:`load_estimator` and :class:`Ensemble`.
    """
    run_dirs = [Path(r) for r in run_dirs]
    ensemble = Ensemble([load_estimator(r) for r in run_dirs])
    if not calibrate:
        return ensemble
    infos = [RunFolder(r).info() for r in run_dirs]
    paths = {str(Path(i["dataset"]["path"]).resolve()) for i in infos}
    splits = [RunFolder(r).validation_indices(i) for r, i in zip(run_dirs, infos, strict=True)]
    val = splits[0]
    shared = len(paths) == 1 and all(np.array_equal(split, val) for split in splits)
    if not shared or len(val) < 10 or infos[0].get("images", "noisy") != "noisy":
        ensemble.not_calibrated = "its runs share no validation split of noisy images (not one experiment's)"
        return ensemble
    if not Path(next(iter(paths))).is_file():
        ensemble.not_calibrated = f"their dataset {next(iter(paths))} is gone"
        return ensemble
    ds = load_dataset(next(iter(paths)), mmap=True)
    psf = ds.psf_images(val) if ensemble.psf_input else None
    ensemble.calibrate(ds.img[val], ds.label[val], psf, batch_size=batch_size)
    return ensemble


class Denoiser:
    """A trained denoiser (EDSR, RDN) with its image scaling: noisy images in, restored ones out, in counts.

    Parameters
    ----------
    model : keras.Model
        Input ``image``, output ``denoised``, both in the image scaler's units.
    image_scaler : MinMaxScaler
        The run's noiseless-image scaling (counts → [0, 1] over the training split's range).
    name, family, model_sha256 : str
        What the run was (recorded by the runs that use it).
    """

    def __init__(self, model, image_scaler: MinMaxScaler, *, name="", family="", model_sha256=""):
        self.model = model
        self.image_scaler = image_scaler
        self.name, self.family, self.model_sha256 = name, family, model_sha256
        self.image_shape = tuple(model.inputs[0].shape[1:3])

    def scale(self, images) -> np.ndarray:
        """Counts → the model's units (float32, with the channel axis)."""
        images = np.asarray(images)
        return with_channel(self.image_scaler.transform(images.reshape(-1, 1)).reshape(images.shape))

    def unscale(self, scaled) -> np.ndarray:
        """The model's units → counts (float32, without the channel axis)."""
        scaled = np.asarray(scaled)[..., 0]
        return self.image_scaler.inverse_transform(scaled.reshape(-1, 1)).reshape(scaled.shape).astype(np.float32)

    def denoise(self, images, *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Restore noisy images.

        Parameters
        ----------
        images : array_like of shape (N, S, S) or (N, S, S, 1)
            Noisy images in counts, as the denoiser's training images.
        batch_size : int
            Images per forward pass.
        progress : bool
            Show a progress bar.

        Returns
        -------
        ndarray of shape (N, S, S), float32, counts

        Raises
        ------
        GalparamError
            On a wrong image size or NaN values.
        """
        images = _check_image_stack(images, self.image_shape, "images")
        out = np.empty(images.shape, np.float32)
        with tqdm(total=len(images), unit="img", desc="denoise", disable=not progress) as bar:
            for start in range(0, len(images), _CHUNK):
                chunk = images[start : start + _CHUNK]
                scaled = self.model.predict(self.scale(chunk), batch_size=batch_size, verbose=0)
                out[start : start + len(chunk)] = self.unscale(scaled)
                bar.update(len(chunk))
        return out

    def describe(self, run_dir) -> dict:
        """The ``denoiser`` entry of a run that uses it."""
        return {
            "run": str(Path(run_dir).resolve()),
            "name": self.name,
            "family": self.family,
            "model_sha256": self.model_sha256,
        }


def _load_model(run: RunFolder):
    import keras

    if not run.model_path.exists():
        raise GalparamError(f"{run.path}: {run.model_path.name} is missing")
    try:
        return keras.models.load_model(run.model_path, compile=False)
    except (ValueError, OSError) as exc:
        raise GalparamError(f"{run.model_path}: cannot be loaded ({str(exc).splitlines()[0]})") from None


def load_denoiser(run_dir, *, expected_sha256: str | None = None) -> Denoiser:
    """Load a finished denoiser run (family ``edsr`` or ``rdn``).

    Parameters
    ----------
    run_dir : path-like
        The denoiser's run folder.
    expected_sha256 : str, optional
        The SHA-256 its model must have (what a two-stage run recorded): a denoiser trained again
        since is refused.

    Raises
    ------
    GalparamError
        If the folder is missing, unfinished, not a denoiser, or its model changed.
    """
    run = RunFolder(run_dir)
    try:
        info = run.info()
    except GalparamError as exc:
        raise GalparamError(f"denoiser: {exc}") from None
    if info["family"] not in DENOISERS:
        raise GalparamError(
            f"denoiser: {run.path} is a run of family {info['family']}; a denoiser is a run of {' or '.join(DENOISERS)}"
        )
    sha = run.model_sha256() if run.model_path.exists() else ""
    if sha != info.get("model_sha256"):
        raise GalparamError(f"denoiser: {run.model_path}: differs from the model its run.json records (altered?)")
    if expected_sha256 is not None and sha != expected_sha256:
        raise GalparamError(
            f"denoiser: {run.path} has changed since this run used it (model SHA-256 {sha[:12]}…, "
            f"recorded {expected_sha256[:12]}…); train this run again on it"
        )
    return Denoiser(
        _load_model(run),
        MinMaxScaler.load(run.image_scaler_path),
        name=info["name"],
        family=info["family"],
        model_sha256=sha,
    )


def load_estimator(run_dir) -> Estimator:
    """Load a finished training run folder as an :class:`Estimator`.

    A two-stage run (an Xception trained on a denoiser's images) loads its denoiser too, from
    the folder it recorded, and checks that it is the same model.

    Raises
    ------
    GalparamError
        If the folder is missing, unfinished, or not a galparam run; if it is a denoiser's (load
        it with :func:`load_denoiser`); if a two-stage run's denoiser is missing or changed.
    """
    run = RunFolder(run_dir)
    info = run.info()
    if info["family"] in DENOISERS:
        raise GalparamError(
            f"{run.path}: a {info['family']} denoiser restores images and estimates no parameters; "
            "load it with galparam.estimator.load_denoiser, or give a run that names it as its denoiser"
        )
    if info["family"] == AUTOKERAS_FAMILY:
        import autokeras  # noqa: F401  (registers the layers of AutoKeras' exported models)
    model = _load_model(run)
    decodes = getattr(FAMILIES.get(info["family"]), "decoder", None) is not None
    image_scaler = MinMaxScaler.load(run.image_scaler_path) if decodes else None
    denoiser = None
    recorded = info.get("denoiser")
    if recorded is not None and not info.get("joint", False):
        denoiser = load_denoiser(recorded["run"], expected_sha256=recorded["model_sha256"])
    calibration = intervals = None
    if run.calibration_path.exists():
        saved = json.loads(run.calibration_path.read_text())
        calibration = [saved["factors"][name] for name in LABEL_NAMES]
        if "intervals" in saved:  # runs calibrated before the per-level intervals have only the factors
            intervals = {int(level) / 100: [f[name] for name in LABEL_NAMES] for level, f in saved["intervals"].items()}
    return Estimator(
        model,
        info["family"],
        MinMaxScaler.load(run.scaler_path),
        image_scaler,
        psf_input=info.get("psf_input", False),
        denoiser=denoiser,
        uncertainty=info.get("uncertainty", "none"),
        calibration=calibration,
        interval_calibration=intervals,
    )


def read_image_file(path, key: str | None = None, psf_key: str | None = None, *, need_psf: bool = False):
    """Images (and PSF images) from any npz: ``img``/``psf_img`` as galparam writes them, or named keys.

    Without ``key``, ``img`` is taken if present, else the file's only three-dimensional array.

    Returns
    -------
    images : ndarray of shape (N, S, S)
    psf_images : ndarray or None
        Read only when ``need_psf`` (``psf_img`` unless ``psf_key`` names another array).

    Raises
    ------
    GalparamError
        If the file is missing or not an npz, or the arrays cannot be told apart.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if key is None:
                cubes = [n for n in names if n == "img"] or [n for n in names if z[n].ndim in (3, 4)]
                if len(cubes) != 1:
                    raise GalparamError(
                        f"{path}: cannot tell which array holds the images ({', '.join(names) or 'none'}); name it"
                    )
                key = cubes[0]
            if key not in names:
                raise GalparamError(f"{path}: no array {key!r}; it holds {', '.join(names)}")
            images = z[key]
            psf = None
            if need_psf:
                psf_key = psf_key or "psf_img"
                if psf_key not in names:
                    raise GalparamError(f"{path}: this model needs PSF images, and there is no array {psf_key!r}")
                psf = z[psf_key]
    except FileNotFoundError:
        raise GalparamError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise GalparamError(f"{path}: not a readable npz file ({type(exc).__name__}: {exc})") from None
    return images, psf
