"""Fresh training images drawn on the device, inside the compiled training step (Keras on JAX).

The numpy path (:mod:`galparam.fresh`) draws in CPU processes and ships images to the device; on
a GPU that leaves the device waiting. :class:`DeviceDrawer` draws the same model where the
training runs: the spec's priors, the k-space renderer (its ``keras.ops`` form,
:class:`galparam.kspace.KerasRenderer`, float32), the SNR window (a candidate outside it is drawn
again, all parameters, as the numpy path does), Poisson and Gaussian noise. Its random numbers
come from a counter-based key of (seed, epoch, sample index, candidate): an image depends on
nothing else, not on the batch size, the device count or a resumption.

The images are not the numpy path's bytes (other random numbers), but the same model: each galaxy
on its own grid (the numpy path's FFT size and GalSim's k-box, chosen on the device), summed at the
stamp's pixels (:meth:`galparam.kspace.KerasRenderer.lattice_images`, one static shape for grids
that differ from galaxy to galaxy), so an image of given parameters equals the numpy renderer's to
float32 rounding (tests: ≤ 1e-4 of the peak; ~1e-6 measured), and the drawn parameters and SNRs
follow the numpy path's distributions.

Training on them: :meth:`DeviceDrawer.attach` replaces a model's ``train_step`` by one that turns
each batch of sample indices into images and scaled labels before Keras's own step; the
validation set stays the fixed one (:mod:`galparam.fresh`).
"""

from __future__ import annotations

import numpy as np

from galparam import backend
from galparam.errors import GalparamError
from galparam.kspace import KerasRenderer
from galparam.kspace.grid import choose_grid, galsim_maxk_stepk, grid_size, kbox_half
from galparam.render import KSpaceRenderer, renderer_for
from galparam.specs import DatasetSpec

MAX_ATTEMPTS = 64
"""Candidates a sample draws at most for the SNR window; a sample still outside it keeps its last
(the numpy path draws on; at the study's acceptance rates the chance is below 1e-20)."""

BOX_STEP = 8
"""The shared k-box half-width is a multiple of this."""


def prior_box(spec: DatasetSpec, tables, *, samples: int = 200_000) -> int:
    """H: the widest k-box half-width (units of each galaxy's own dk) of the galaxies of the prior
    on their own grids, rounded up to :data:`BOX_STEP`: the static shape every galaxy is drawn in.

    Found over ``samples`` draws of the prior and its corners (radius, shear, PSF at their ends,
    every tabulated index in range); a galaxy beyond it (none was, in the tests) keeps the box H.
    """
    rng = np.random.default_rng(0)
    u = rng.random((samples, len(spec.draw_priors)))
    _, n, hlr, a, b, fwhm, _ = spec.parameters_of(u)
    p = spec.priors
    nodes = tables.n_nodes[(tables.n_nodes >= p["sersic_n"].low) & (tables.n_nodes <= p["sersic_n"].high)]
    corners = np.meshgrid(
        np.unique(np.concatenate([[p["sersic_n"].low, p["sersic_n"].high], nodes])),
        [p["hlr"].low, p["hlr"].high],
        [0.0, float(np.max(np.hypot(a, b)))],
        [p["psf_fwhm"].low, p["psf_fwhm"].high] if spec.psf is None else [0.0],
    )
    cn, ch, cg, cf = (x.ravel() for x in corners)
    n, hlr, g1, g2, fwhm = (
        np.concatenate([x, y]) for x, y in ((n, cn), (hlr, ch), (a, cg), (b, np.zeros_like(cg)), (fwhm, cf))
    )
    _, h, _ = choose_grid(tables, np.ones_like(n), n, hlr, g1, g2, fwhm, box_step=1)
    return int(-(-h.max() // BOX_STEP) * BOX_STEP)


class DeviceDrawer:
    """Draws a dataset spec's galaxies on the device (see the module docstring).

    Parameters
    ----------
    spec : DatasetSpec
        The prior, SNR window, noise and geometry (the k-space renderer's; a Moffat PSF, centred
        galaxies: the stamp model's PSF images and offsets are drawn by the numpy path only).
    seed : int
        The stream's seed (an experiment's fresh images: the spec's seed).

    Raises
    ------
    GalparamError
        A spec the device cannot draw, or a Keras backend other than JAX.
    """

    def __init__(self, spec: DatasetSpec, seed: int):
        if backend.name() != "jax":
            raise GalparamError(
                f"images drawn on the device need Keras's JAX backend (KERAS_BACKEND=jax); this process uses {backend.name()}"
            )
        if spec.renderer != KSpaceRenderer.NAME:
            raise GalparamError(f"{spec.source}: the device draws with the kspace renderer, not {spec.renderer}")
        if spec.stamp_model:
            raise GalparamError(
                f"{spec.source}: the device draws centred galaxies with a Moffat PSF; this spec's stamp model "
                "(PSF images, offsets, sky) is drawn on the host (leave draw_on: host)"
            )
        self.spec = spec
        self.seed = int(seed)
        self.tables = renderer_for(KSpaceRenderer.NAME, spec.geometry).tables
        self.H = prior_box(spec, self.tables)
        self._renderer = KerasRenderer(self.tables, dtype="float32")
        self.shape = spec.geometry.shape

    # -- traced pieces -----------------------------------------------------------------------
    def parameters(self, u):
        """Galaxy parameters (B, 7): flux, n, hlr, g1, g2, psf_fwhm, sigma, from deviates u (B, 7)
        in :data:`galparam.specs.DRAW_ORDER` (the priors' own transforms)."""
        import jax.numpy as jnp

        return jnp.stack(self.spec.parameters_of(u, xp=jnp), axis=1)

    def noiseless(self, params):
        """(B, S, S) float32 noiseless images of parameters (B, ≥ 6), each galaxy on its own grid
        (:func:`galparam.kspace.choose_grid`'s N and GalSim's k-box), computed on the device."""
        import jax.numpy as jnp

        flux, n, hlr, g1, g2, fwhm = (params[:, j] for j in range(6))
        maxk, stepk = galsim_maxk_stepk(self.tables, n, hlr, g1, g2, fwhm, xp=jnp)
        N = grid_size(self.tables, n, hlr, g1, g2, fwhm, stepk, xp=jnp)
        h = jnp.minimum(kbox_half(maxk, N, self.tables.pixel_scale, xp=jnp), self.H)
        return self._renderer.lattice_images(flux, n, hlr, g1, g2, fwhm, N, h, H=self.H)

    def draw(self, epoch, index):
        """Sample ``index`` (B,) int of epoch ``epoch``: a dict of ``img``, ``img_nonoise`` (B, S, S),
        ``label`` (B, 5) (flux, n, hlr, g1, g2), ``psf_fwhm``, ``sigma``, ``snr`` (B,) and
        ``attempts`` (B,) int, all on the device (jit-able)."""
        import jax
        import jax.numpy as jnp

        root = jax.random.fold_in(jax.random.key(self.seed % 2**32), epoch)
        samples = jax.vmap(lambda i: jax.random.fold_in(root, i))(index)
        # a sample's candidates draw from stream 0, its noise from stream 1
        candidates = jax.vmap(lambda s: jax.random.fold_in(s, 0))(samples)
        window = self.spec.snr_window

        def candidate(keys):
            u = jax.vmap(lambda key: jax.random.uniform(key, (7,)))(keys)
            params = self.parameters(u)
            clean = self.noiseless(params)
            snr = jnp.sqrt(jnp.sum(clean * clean, axis=(1, 2))) / params[:, 6]
            ok = jnp.ones_like(snr, bool) if window is None else (snr >= window[0]) & (snr <= window[1])
            return params, clean, snr, ok

        B = index.shape[0]
        params, clean, snr, ok = candidate(jax.vmap(lambda s: jax.random.fold_in(s, 0))(candidates))
        attempts = jnp.ones((B,), "int32")
        retry = max(8, B // 4)  # candidates drawn again per round: the rejected rows only

        def going(state):
            _, _, _, ok, attempts = state
            return jnp.any(~ok & (attempts < MAX_ATTEMPTS))

        def again(state):
            params, clean, snr, ok, attempts = state
            # up to `retry` rejected rows draw their next candidate (numbered by their own
            # attempts, so a sample's draws do not depend on its batch-mates); B marks no row
            rows = jnp.nonzero(~ok & (attempts < MAX_ATTEMPTS), size=retry, fill_value=B)[0]
            safe = jnp.minimum(rows, B - 1)
            keys = jax.vmap(jax.random.fold_in)(candidates[safe], attempts[safe])
            p1, c1, s1, ok1 = candidate(keys)
            return (
                params.at[rows].set(p1, mode="drop"),
                clean.at[rows].set(c1, mode="drop"),
                snr.at[rows].set(s1, mode="drop"),
                ok.at[rows].set(ok1, mode="drop"),
                attempts.at[rows].add(1, mode="drop"),
            )

        params, clean, snr, ok, attempts = jax.lax.while_loop(going, again, (params, clean, snr, ok, attempts))
        noise_keys = jax.vmap(lambda s: jax.random.fold_in(s, 1))(samples)
        img = jax.vmap(self._noisy)(noise_keys, clean, params[:, 6])
        return {
            "img": img,
            "img_nonoise": clean,
            "label": params[:, :5],
            "psf_fwhm": params[:, 5],
            "sigma": params[:, 6],
            "snr": snr,
            "attempts": attempts,
        }

    def _noisy(self, key, clean, sigma):
        """Poisson noise on the galaxy's counts (where the spec has it), then Gaussian read noise."""
        import jax
        import jax.numpy as jnp

        poisson_key, gauss_key = jax.random.split(key)
        light = clean
        if self.spec.poisson_noise:
            light = jax.random.poisson(poisson_key, jnp.clip(clean, 0.0, None)).astype(clean.dtype)
        return light + sigma * jax.random.normal(gauss_key, clean.shape, clean.dtype)

    # -- training ------------------------------------------------------------------------------
    def attach(self, model, *, label_affine, image_key: str = "img") -> None:
        """Make ``model`` (a built, compiled Keras model taking images, predicting labels) train on
        images drawn inside its compiled step: each training batch it is given is then ``(keys,)``,
        keys (B, 2) int32 rows of (epoch, sample index) (:class:`galparam.pipelines.SampleBatches`).

        Parameters
        ----------
        model : keras.Model
            Its ``train_step`` is replaced on this instance (what it saves is unchanged); its
            compiled losses and metrics are built here from a drawn batch's shapes.
        label_affine : (scale, offset)
            The label scaling, ``label · scale + offset`` (the run's :class:`~galparam.data.MinMaxScaler`).
        image_key : {"img", "img_nonoise"}
            The images it trains on: noisy, or noiseless (an experiment's ``images: noiseless``).
        """
        import jax.numpy as jnp
        from keras.src.trainers.data_adapters.data_adapter_utils import unpack_x_y_sample_weight

        scale, offset = (jnp.asarray(np.asarray(v, np.float32)) for v in label_affine)
        keras_step = model.train_step

        def train_step(state, data):
            keys = unpack_x_y_sample_weight(data)[0]
            drawn = self.draw(keys[0, 0], keys[:, 1])
            return keras_step(state, (drawn[image_key][..., None], drawn["label"] * scale + offset))

        sample = (np.zeros((1, *self.shape, 1), np.float32), np.zeros((1, 5), np.float32))
        model._symbolic_build(data_batch=sample)  # its losses and metrics, from real shapes (not the keys')
        model.train_step = train_step
