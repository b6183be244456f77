"""The k-space renderer in backend-neutral ``keras.ops`` (TensorFlow or JAX): the numpy
renderer's arithmetic, differentiable in the five parameters, compiled per grid shape."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from galparam.kspace.fourier import box_grid
from galparam.kspace.grid import choose_grid
from galparam.kspace.tables import Tables

# k = 0 has s = k**0.5 with an infinite derivative; the epsilon keeps automatic gradients finite.
KSQ_EPS = 1e-12


class KerasRenderer:
    """The renderer in backend-neutral ``keras.ops``, differentiable in flux, n, hlr, g1, g2.

    The grid (N, k-box) is chosen on the host from the parameter values, as in `render_numpy`
    (it is piecewise constant in the parameters, so it carries no gradient); each group of
    galaxies sharing (N, H) is one batched evaluation, fold and inverse FFT with static shapes.

    Parameters
    ----------
    tables : Tables
    dtype : "float32" or "float64"
    jit : compile one function per (N, H) group shape (XLA under TensorFlow, jax.jit under JAX).
        Gradients through a compiled function work (TensorFlow traces the backward pass too).
    box_step : the k-box half-width is padded to a multiple of this (fewer distinct shapes to
        compile); default 8 with ``jit``, else 1.
    """

    def __init__(self, tables: Tables, *, dtype="float32", jit=False, box_step=None):
        from keras import ops

        self.tables = tables
        self.dtype = dtype
        self.box_step = box_step if box_step is not None else (8 if jit else 1)
        self.jit = jit
        self._ops = ops
        # (Nn, 2, M, 4): each node's s-spline coefficients and their n-spline second derivatives
        self.coef = ops.convert_to_tensor(np.stack([tables.coef, tables.coef_d2], axis=1), dtype=dtype)
        self.psf_coef = ops.convert_to_tensor(tables.psf_coef, dtype=dtype)  # (M, 4)
        self.M = tables.sersic.shape[1]
        self._consts: dict = {}
        self._compiled: dict = {}

    # -- static per-(N, H) constants --------------------------------------------------------
    def _grid_consts(self, N, H):
        key = (N, H)
        c = self._consts.get(key)
        if c is None:
            ops, dt = self._ops, self.dtype
            g = box_grid(N, H, self.tables.pixel_scale, np.float64)
            # post-fold phase: the half-pixel centring exp(iπa/N) (see :func:`~galparam.kspace.fourier.pixel_factor`) times a
            # shift of stamp/2 pixels, exp(-2πi·(stamp/2)·a/N), so the stamp is the grid's first
            # stamp×stamp corner; a is the folded index in [0, N)
            a = np.arange(N)
            th1 = np.pi * a * (1 - self.tables.stamp) / N
            th = th1[:, None] + th1[None, :]
            c = dict(
                kxx=ops.convert_to_tensor(g["kxx"].ravel(), dt),
                kxy=ops.convert_to_tensor(g["kxy"].ravel(), dt),
                kyy=ops.convert_to_tensor(g["kyy"].ravel(), dt),
                k=ops.convert_to_tensor(g["k"].ravel(), dt),
                pix=ops.convert_to_tensor((g["py"][:, None] * g["px"][None, :]).ravel(), dt),
                amx=ops.convert_to_tensor(np.broadcast_to(g["mx"][None, :], g["k"].shape).ravel(), "int32"),
                amy=ops.convert_to_tensor(np.broadcast_to(np.abs(g["my"])[:, None], g["k"].shape).ravel(), "int32"),
                cos=ops.convert_to_tensor(np.cos(th), dt),
                sin=ops.convert_to_tensor(np.sin(th), dt),
            )
            self._consts[key] = c
        return c

    # -- one group ---------------------------------------------------------------------------
    def render_group(self, flux, n, hlr, g1, g2, psf_fwhm, h, *, N: int, H: int):
        """(B,) tensors (psf_fwhm may be a Python float shared by all), h (B,) int GalSim box
        half-widths ≤ H → (B, stamp, stamp) tensor."""
        if not self.jit:
            return self._render_group(flux, n, hlr, g1, g2, psf_fwhm, h, N=N, H=H)
        ops = self._ops
        fn = self._compiled.get((N, H))
        if fn is None:
            fn = self._compiled[(N, H)] = self._compile(N, H)
        if np.isscalar(psf_fwhm):
            psf_fwhm = np.full((1,), psf_fwhm)
        # XLA compiles per shape: pad the group to a power of two (≥ 8) by repeating its first
        # galaxy, so a few shapes serve every batch; images do not depend on their batch-mates.
        B = int(ops.shape(flux)[0])
        Bp = max(8, 1 << (B - 1).bit_length())
        args = [ops.convert_to_tensor(v, self.dtype) for v in (flux, n, hlr, g1, g2)]
        fw = ops.convert_to_tensor(psf_fwhm, self.dtype)
        h = ops.convert_to_tensor(h, "int32")
        if Bp > B:
            pad = ops.zeros((Bp - B,), "int32")
            idx = ops.concatenate([ops.arange(B, dtype="int32"), pad])
            args = [ops.take(a, idx, axis=0) for a in args]
            h = ops.take(h, idx, axis=0)
            if fw.shape[0] != 1:
                fw = ops.take(fw, idx, axis=0)
        out = fn(*args, fw, h)
        return out[:B] if Bp > B else out

    def group_function(self, N: int, H: int):
        """The drawing of one (N, H) group as a plain function ``(flux, n, hlr, g1, g2, psf_fwhm, h)
        → (B, stamp, stamp)`` for a caller's own trace (jax.jit, jax.linearize): the grid's constants
        are made now, eagerly, so that none is created inside the trace."""
        self._grid_consts(N, H)

        def draw(flux, n, hlr, g1, g2, psf_fwhm, h):
            return self._render_group(flux, n, hlr, g1, g2, psf_fwhm, h, N=N, H=H)

        return draw

    def _compile(self, N, H):
        import keras

        f = self.group_function(N, H)
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            v = tf.TensorSpec([None], self.dtype)
            sig = [v, v, v, v, v, v, tf.TensorSpec([None], tf.int32)]
            return tf.function(f, jit_compile=True, input_signature=sig)
        if backend == "jax":
            import jax

            return jax.jit(f)
        return f

    def _render_group(self, flux, n, hlr, g1, g2, psf_fwhm, h, *, N, H):
        ops, dt, t = self._ops, self.dtype, self.tables
        c = self._grid_consts(N, H)
        M = self.M
        flux, n, hlr, g1, g2 = (ops.convert_to_tensor(v, dt) for v in (flux, n, hlr, g1, g2))
        psf_fwhm = ops.convert_to_tensor(psf_fwhm, dt)

        gal = self._sersic_rows(flux, n)

        F = self._galaxy_spectrum(gal, hlr, g1, g2, c)  # (B, P)

        # PSF (Moffat at |k|·fwhm) × pixel response × fold sign
        sp = ops.sqrt(c["k"][None, :] * ops.reshape(psf_fwhm, (-1, 1))) * (1.0 / t.s_step)
        prow = ops.minimum(ops.floor(sp), float(M - 1))
        psf = self._horner(ops.take(self.psf_coef, ops.cast(prow, "int32"), axis=0), sp - prow)
        F = F * (psf * c["pix"][None, :])

        # GalSim's own k-box (half-width h ≤ H): exact zeros outside (skipped on the host when
        # no galaxy needs it; always applied inside a compiled function)
        if not (isinstance(h, np.ndarray) and np.all(h == H)):
            hcol = ops.reshape(ops.convert_to_tensor(h, "int32"), (-1, 1))
            inside = ops.logical_and(c["amx"][None, :] <= hcol, c["amy"][None, :] <= hcol)
            F = F * ops.cast(inside, dt)

        # fold modulo N: ky (rows, first index -H), then kx (columns, first index 0)
        F = ops.reshape(F, (-1, 2 * H + 1, H + 1))
        F = self._fold(F, N, H, axis=1)
        F = self._fold(F, N, 0, axis=2)  # (B, N, N)

        # image = 2·Re ifft2(phase·P): the kx < 0 half is the complex conjugate mirror
        re, _ = ops.ifft2((F * c["cos"], F * c["sin"]))
        s = t.stamp
        return 2.0 * re[:, :s, :s]

    def _sersic_rows(self, flux, n):
        """Each galaxy's radial table (B·M, 4), times its flux: the cubic spline in n between the
        bracketing nodes (C² in n)."""
        ops, t = self._ops, self.tables
        x = (n - float(t.n_nodes[0])) / float(t.n_step)
        j = ops.clip(ops.floor(x), 0.0, float(len(t.n_nodes) - 2))
        u = x - j
        v = 1.0 - u
        w = [v, u, v * v * v - v, u * u * u - u]  # weights of C_j, C_j+1, D_j, D_j+1
        jj = ops.cast(j, "int32")
        lo, hi = ops.take(self.coef, jj, axis=0), ops.take(self.coef, jj + 1, axis=0)
        # explicit adds in a fixed order (an einsum's matmul kernel may depend on the batch size)
        w = [wq * flux for wq in w]  # the flux scales the table (M rows) rather than the k-box
        gal = w[0][:, None, None] * lo[:, 0]
        gal = gal + w[1][:, None, None] * hi[:, 0]
        gal = gal + w[2][:, None, None] * lo[:, 1]
        gal = gal + w[3][:, None, None] * hi[:, 1]
        return ops.reshape(gal, (-1, 4))

    def lattice_images(self, flux, n, hlr, g1, g2, psf_fwhm, N, h, *, H: int):
        """Images of galaxies each on its own FFT size ``N`` (B,) and k-box ``h`` (B,) ≤ ``H``, all
        in one static shape: the k-box on the integer lattice m (kx = m_x·dk, dk = 2π/(N·scale)
        per galaxy), and the inverse transform summed directly at the stamp's pixels,

            image(y, x) = (2/N²) Re Σ_m F(m) exp(iπ·m_y·(2y + 1 − S)/N) exp(iπ·m_x·(2x + 1 − S)/N)

        (two real matrix products per axis): the stamp of the folded N×N inverse FFT that
        :meth:`render_group` takes, with no fold and no FFT, so N may differ from galaxy to galaxy
        inside a compiled function (images drawn on the device). The cost grows with H, not N.
        Same arithmetic as :meth:`render_group` otherwise; (B,) tensors in, (B, S, S) out."""
        ops, dt, t = self._ops, self.dtype, self.tables
        M, S = self.M, t.stamp
        flux, n, hlr, g1, g2, psf_fwhm = (ops.convert_to_tensor(v, dt) for v in (flux, n, hlr, g1, g2, psf_fwhm))
        N = ops.convert_to_tensor(N, "int32")
        gal = self._sersic_rows(flux, n)
        mx = np.arange(0, H + 1)
        my = np.arange(-H, H + 1)
        lat = dict(
            kxx=np.broadcast_to(mx[None, :] ** 2, (len(my), len(mx))).ravel(),
            kxy=(2 * my[:, None] * mx[None, :]).ravel(),
            kyy=np.broadcast_to(my[:, None] ** 2, (len(my), len(mx))).ravel(),
            k=np.hypot(my[:, None], mx[None, :]).ravel(),
        )
        lat = {key: ops.convert_to_tensor(value, dt) for key, value in lat.items()}
        dk = 2.0 * np.pi / (ops.cast(N, dt) * t.pixel_scale)
        F = self._galaxy_spectrum(gal, hlr, g1, g2, lat, k_unit=dk)  # k = m·dk
        sp = ops.sqrt(lat["k"][None, :] * ops.reshape(psf_fwhm * dk, (-1, 1))) * (1.0 / t.s_step)
        prow = ops.minimum(ops.floor(sp), float(M - 1))
        F = F * self._horner(ops.take(self.psf_coef, ops.cast(prow, "int32"), axis=0), sp - prow)
        F = ops.reshape(F, (-1, 2 * H + 1, H + 1))
        # pixel response sinc(m/N) per axis (the kx = 0 column halved: the half-plane's sum is
        # twice its real part), and GalSim's own k-box: zeros beyond h
        hcol = ops.reshape(ops.convert_to_tensor(h, "int32"), (-1, 1))
        Nf = ops.reshape(ops.cast(N, dt), (-1, 1))
        mxs, mys = ops.convert_to_tensor(mx, dt), ops.convert_to_tensor(my, dt)
        px = self._sinc(mxs[None, :] / Nf) * ops.cast(ops.convert_to_tensor(mx, "int32")[None, :] <= hcol, dt)
        px = px * ops.convert_to_tensor(np.where(mx == 0, 0.5, 1.0), dt)[None, :]
        py = self._sinc(mys[None, :] / Nf) * ops.cast(ops.abs(ops.convert_to_tensor(my, "int32"))[None, :] <= hcol, dt)
        F = F * px[:, None, :] * py[:, :, None]
        # phases reduced exactly in integers: m·(2y + 1 − S) mod 2N, then the angle π·that/N
        pix = np.arange(S)
        Ni = ops.reshape(N, (-1, 1, 1))

        def trig(m):
            p = ops.convert_to_tensor((m[None, :] * (2 * pix[:, None] + 1 - S))[None], "int32")  # (1, S, L)
            angle = ops.cast(ops.mod(p, 2 * Ni), dt) * (np.pi / ops.cast(Ni, dt))
            return ops.cos(angle), ops.sin(angle)  # (B, S, L)

        cy, sy = trig(my)
        cx, sx = trig(mx)
        rows_c, rows_s = ops.matmul(cy, F), ops.matmul(sy, F)  # (B, S, H+1)
        img = ops.matmul(rows_c, ops.transpose(cx, (0, 2, 1))) - ops.matmul(rows_s, ops.transpose(sx, (0, 2, 1)))
        return img * ops.reshape(2.0 / (ops.cast(N, dt) * ops.cast(N, dt)), (-1, 1, 1))

    def _galaxy_spectrum(self, gal, hlr, g1, g2, k, k_unit=None):
        """The galaxies' transforms (B, P) on the k-box points ``k`` (kxx, kxy, kyy: (P,) tensors,
        in units of ``k_unit`` (B,) where given) from their radial tables ``gal`` (B·M, 4)."""
        ops, t, M = self._ops, self.tables, self.M
        # hlr²·|A k|², A GalSim's shear matrix; epsilon keeps d(ksq**0.25) finite at k = 0
        # (products, not ** 2: a vectorised pow can round differently from the scalar one, which
        # would make an image depend on its batch size)
        # scaled by 1/s_step⁴ so that ksq**0.25 is the table position directly
        gsq = g1 * g1 + g2 * g2
        hh = hlr * hlr / (1.0 - gsq) * (1.0 / t.s_step**4)
        if k_unit is not None:
            hh = hh * k_unit * k_unit
        p1, m1 = 1.0 + g1, 1.0 - g1
        cxx = hh * (p1 * p1 + g2 * g2)
        cxy = hh * 2.0 * g2
        cyy = hh * (m1 * m1 + g2 * g2)
        ksq = cxx[:, None] * k["kxx"] + cxy[:, None] * k["kxy"] + cyy[:, None] * k["kyy"]
        pos = ops.sqrt(ops.sqrt(ksq + KSQ_EPS / t.s_step**4))
        row = ops.minimum(ops.floor(pos), float(M - 1))  # floor: no gradient, as it should be
        B = ops.shape(hlr)[0]
        irow = ops.cast(row, "int32") + (ops.arange(B, dtype="int32") * M)[:, None]
        return self._horner(ops.take(gal, irow, axis=0), pos - row)

    def _sinc(self, x):
        """sin(πx)/(πx), 1 at 0."""
        ops = self._ops
        safe = ops.where(x == 0, 1.0, x)
        return ops.where(x == 0, 1.0, ops.sin(np.pi * safe) / (np.pi * safe))

    def _horner(self, cf, tt):
        return cf[..., 0] + tt * (cf[..., 1] + tt * (cf[..., 2] + tt * cf[..., 3]))

    def _fold(self, x, N, offset, axis):
        """Sum along ``axis`` modulo N (index i has frequency i - offset): pad, reshape, sum."""
        ops = self._ops
        L = x.shape[axis]
        lead = (-offset) % N
        R = -(-(lead + L) // N)
        pad = [[0, 0], [0, 0], [0, 0]]
        pad[axis] = [lead, R * N - lead - L]
        x = ops.pad(x, pad)
        # slices added in a fixed order, so the result does not depend on the batch size
        part = [slice(None)] * 3
        out = None
        for r in range(R):
            part[axis] = slice(r * N, (r + 1) * N)
            out = x[tuple(part)] if out is None else out + x[tuple(part)]
        return out

    # -- whole batch ------------------------------------------------------------------------
    def plan(self, flux, n, hlr, g1, g2, psf_fwhm, *, N=None) -> RenderPlan:
        """The host-side part: per galaxy N and k-box, and the groups drawn together, from
        concrete parameter values (arrays or eager tensors). A plan lets `__call__` run inside
        a trace (jax.jit, jax.grad, tf.function): the grid is piecewise constant in the
        parameters, so a plan stays valid for small parameter changes (a likelihood fit can
        re-plan at each outer step)."""
        ops = self._ops
        host = [
            np.atleast_1d(np.asarray(ops.convert_to_numpy(v), dtype=np.float64)).ravel() for v in (flux, n, hlr, g1, g2)
        ]
        B = max(len(v) for v in host)
        host = [np.broadcast_to(v, (B,)) for v in host]
        fw = np.asarray(ops.convert_to_numpy(psf_fwhm), dtype=np.float64)
        shared = float(fw) if fw.ndim == 0 else None
        Ns, hs, Hs = choose_grid(self.tables, *host, np.broadcast_to(fw, (B,)), N=N, box_step=self.box_step)
        keys = np.stack([Ns, Hs], axis=1)
        groups = []
        for key in np.unique(keys, axis=0):
            sel = np.flatnonzero((keys == key).all(axis=1))
            groups.append((int(key[0]), int(key[1]), sel, hs[sel]))
        order = np.concatenate([g[2] for g in groups])
        inv = None if len(groups) == 1 else np.argsort(order)
        return RenderPlan(B=B, groups=groups, inverse=inv, shared_fwhm=shared)

    def __call__(self, flux, n, hlr, g1, g2, psf_fwhm, *, N=None, plan=None):
        """(B,) parameters (tensors or arrays) → (B, stamp, stamp) tensor, differentiable in
        flux, n, hlr, g1, g2. A scalar ``psf_fwhm`` is shared (its PSF evaluated once per
        group). Without a ``plan`` one is made from the values (eager execution only)."""
        ops = self._ops
        if plan is None:
            plan = self.plan(flux, n, hlr, g1, g2, psf_fwhm, N=N)
        B = plan.B
        params = [ops.reshape(ops.convert_to_tensor(v, self.dtype), (-1,)) for v in (flux, n, hlr, g1, g2)]
        params = [p if p.shape[0] == B else ops.broadcast_to(p, (B,)) for p in params]
        if plan.shared_fwhm is None:
            fw_all = ops.reshape(ops.convert_to_tensor(psf_fwhm, self.dtype), (-1,))
        outs = []
        for N_, H_, sel, h in plan.groups:
            if len(plan.groups) == 1:
                args = params
                fw = plan.shared_fwhm if plan.shared_fwhm is not None else fw_all
            else:
                idx = ops.convert_to_tensor(sel, "int32")
                args = [ops.take(p, idx, axis=0) for p in params]
                fw = plan.shared_fwhm if plan.shared_fwhm is not None else ops.take(fw_all, idx, axis=0)
            outs.append(self.render_group(*args, fw, h, N=N_, H=H_))
        if plan.inverse is None:
            return outs[0]
        return ops.take(ops.concatenate(outs, axis=0), ops.convert_to_tensor(plan.inverse, "int32"), axis=0)


@dataclass
class RenderPlan:
    """Host-side grouping of a batch (see `KerasRenderer.plan`): per group (N, H, member
    indices, GalSim k-box half-widths h), and the permutation back to the batch order."""

    B: int
    groups: list
    inverse: np.ndarray | None
    shared_fwhm: float | None
