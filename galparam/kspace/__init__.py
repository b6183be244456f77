"""Batched k-space forward model of Sérsic ⊗ Moffat(β=2) ⊗ pixel galaxy stamps, matched to GalSim.

The reference is GalSim 2.8's::

    galsim.Convolve(galsim.Sersic(n, half_light_radius=hlr, flux=flux).shear(g1=g1, g2=g2),
                    galsim.Moffat(beta=2.0, fwhm=psf_fwhm)).drawImage(nx=64, ny=64, scale=0.23)

which GalSim computes as (``GSObject.drawFFT``): the profile's Fourier transform sampled on a
half-plane k-box ``kx = 0..Nk/2, ky = -Nk/2..Nk/2`` (in units of ``dk = 2π/(N·scale)``; the box ends
at the profile's ``maxk`` or at Nyquist, whichever is larger), wrapped (summed modulo N) onto an
N×N grid, inverse-FFT'd, and the central 64×64 cut out. Its N is sized to hold 99.5 % of the flux
(128 to 768 pixels over our prior, 2 % of draws above 384), which is why a cached GalSim draw costs
milliseconds.

This package does the same arithmetic for many galaxies at once:

* The unit Sérsic transform ``F_n(k)`` (flux 1, half-light radius 1) comes from GalSim itself
  (``Sersic.kValue``), tabulated per index on a uniform grid in ``s = sqrt(k)`` and interpolated
  with a C² cubic spline in ``s`` and a C² cubic spline in ``n`` across tabulated indices, so
  derivatives with respect to every parameter are continuous. A galaxy is
  ``flux · F_n(hlr · |A k|)`` with ``A`` GalSim's shear matrix (``Shear.getMatrix()``, symmetric,
  determinant 1): ``Transformation`` evaluates the original profile at ``Aᵀ k``.
* The Moffat PSF (one unit-FWHM table: the FWHM only rescales k) and the pixel response
  ``sinc(kx·scale/2π)·sinc(ky·scale/2π)`` multiply it.
* GalSim centres an even stamp on its true centre, half a pixel below and left of the pixel
  that its FFT treats as the origin: a phase ``exp(+i·(kx+ky)·scale/2)``.
* The k-box is GalSim's (``Nk = 2·ceil(maxk/dk)`` with ``maxk`` the convolution's: the smallest of
  the galaxy's ``maxk_unit/(hlr·minor axis)``, the PSF's and the pixel's; the Nyquist box when
  that is larger), but on an N chosen per galaxy (:func:`grid_size`): the only difference from
  GalSim is then the real-space wrap-around of the profile's far tail, which N controls. At
  GalSim's own N the images agree to ~1e-7 of the peak. N comes from a rule calibrated against
  renders at GalSim's N (:func:`calibrate_grid_rule`: every pixel within 5e-5 of the peak, the
  stamp flux within 5e-4), over (n, major-axis radius, PSF FWHM); on the v1 prior it picks
  96 / 128 / 160 / 192 / 256 / 320 for 45 / 23 / 10 / 11 / 9 / 3 % of galaxies, and never more than
  GalSim's own N. The Moffat β=2 wings alone (1/(1+(R/r0)²) of the flux beyond R) push the stamp
  flux off by 2.4e-4 at N 96 for a 0.5″ PSF and 1e-3 for a 1″ PSF, hence 128 there.
* The k samples are folded (summed modulo N) onto the N×N grid as real numbers: the pixel's sinc
  and the sign that the half-pixel phase takes under folding are applied first, the phase after.
  The kx < 0 half is the mirror conjugate, so the image is 2·Re ifft2 of the folded half-plane
  (kx = 0 column halved).

Measured (GalSim 2.8, 210 draws of the v1 and v3 priors and corners; ``tests/test_kspace.py`` keeps
the check): every pixel
within 1.5e-5 of the peak (median 1.5e-6), stamp flux within 4.1e-4, float32 as float64, numpy as
keras.ops (TensorFlow eager and XLA, JAX). Throughput on the v1 prior, one core, batch 256
(``benchmarks/bench_backends.py`` measures it): numpy 0.45 ms an image (8.5× GalSim's cached drawImage in the same run), keras.ops

The package, along those seams:

* :mod:`~galparam.kspace.tables`: the tables' layout and their splines;
* :mod:`~galparam.kspace.build`: building them from GalSim and calibrating the grid-size rule;
* :mod:`~galparam.kspace.cache`: the table cache on disk (found without GalSim where it is not installed);
* :mod:`~galparam.kspace.grid`: each galaxy's k-box and FFT size;
* :mod:`~galparam.kspace.fourier`: the k-box arithmetic both renderers and the PSF stamps share;
* :mod:`~galparam.kspace.numpy_renderer`: the numpy renderer with its Jacobian and vector-Jacobian product;
* :mod:`~galparam.kspace.keras_renderer`: the same in ``keras.ops``, differentiable;
* :mod:`~galparam.kspace.psf`: PSF stamps, GalSim's drawing of Moffat ⊗ pixel;
* :mod:`~galparam.kspace.stamps`: any stamp (shape, pixel scale, offset, sky, a Moffat or image
  PSF, :class:`galparam.frame.Frame`), with the derivatives by all eight parameters: the model
  ``galparam-measure`` fits to real cutouts.
"""

from galparam.kspace.cache import (
    CACHE_ENV,
    FORMAT_VERSION,
    cache_dir,
    cache_path,
    galsim_version,
    load_tables,
    resolve_table_settings,
    table_file,
    table_settings,
)
from galparam.kspace.grid import choose_grid, enclosing_grid, grid_size
from galparam.kspace.keras_renderer import KerasRenderer, RenderPlan
from galparam.kspace.numpy_renderer import render_numpy
from galparam.kspace.psf import psf_images
from galparam.kspace.tables import N_RANGE, Tables

__all__ = [
    "CACHE_ENV",
    "FORMAT_VERSION",
    "N_RANGE",
    "KerasRenderer",
    "RenderPlan",
    "Tables",
    "cache_dir",
    "cache_path",
    "choose_grid",
    "enclosing_grid",
    "galsim_version",
    "grid_size",
    "load_tables",
    "psf_images",
    "render_numpy",
    "resolve_table_settings",
    "table_file",
    "table_settings",
]
