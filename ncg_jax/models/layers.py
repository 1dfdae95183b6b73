"""Layers shared by the model zoo, written so XLA:CPU compiles their gradients well."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Literal

from ncg_jax import functional

_DN = ("NHWC", "HWIO", "NHWC")


def max_pool_2x2(x_BxHxWxC: jnp.ndarray) -> jnp.ndarray:
  """2x2 max pooling with stride 2 (H and W even): XLA's `reduce_window` max when evaluated,
  reshape + max when differentiated.

  `nn.max_pool` lowers to `reduce_window`, whose gradient is `select_and_scatter`,
  which XLA:CPU runs as a slow scalar loop; the reshape form differentiates into an
  elementwise compare-and-select. Same values and, away from ties, the same gradient.
  Undifferentiated, `reduce_window` is the faster of the two inside XLA:CPU's fused
  forward (CNN002's logits at batch 256: 27.6 against 28.8 ms, bitwise equal; paired calls,
  `benchmarks/RESULTS.md`), so only the derivative takes the reshape form (`custom_jvp`:
  gradient programs are those of the reshape form itself).

  At an exact tie inside a window, JAX's derivative of `max` shares the gradient among the
  tied elements; XLA's `select_and_scatter` and PyTorch's `MaxPool2d` (the NCG paper's
  CNN002) give all of it to the first maximum in row-major window order.
  Tied zeros carry no gradient past a ReLU either way. Tied positive maxima (windows whose
  positive maximum two or more elements reach) were 0.3-1.0% of the first pooling's windows
  and none of the second's, counted on the 323 ID test images through the three pixel-space
  CNN002 checkpoints of a `make demo` run (a `/tmp` probe, 2026-12-01). Matching PyTorch here
  would change the robust trainings' figures, so it is recorded rather than changed.

  Traced for an input gradient (`functional.traces_input_gradient`: ODIN, the attacks), the
  same derivative counts each window's maxima from its four positions instead of summing a
  stored mask: bitwise the same gradient, and faster there (paired calls against the mask
  form: ODIN's perturbation through CNN002 0.95-0.97, TRADES(6) and PGD-AT train steps
  0.95-0.98), but slower inside a parameter gradient (1.03-1.06), which keeps the form above
  (`benchmarks/RESULTS.md`).
  """
  _, h, w, _ = x_BxHxWxC.shape
  if h % 2 or w % 2:
    raise ValueError(f"max_pool_2x2 needs an even height and width, got {h} x {w}")
  if functional.traces_input_gradient():
    return _max_pool_2x2_for_input_gradient(x_BxHxWxC)
  return _max_pool_2x2(x_BxHxWxC)


@jax.custom_jvp
def _max_pool_2x2(x_BxHxWxC):
  return lax.reduce_window(x_BxHxWxC, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _max_pool_2x2_by_reshape(x_BxHxWxC):
  b, h, w, c = x_BxHxWxC.shape
  return x_BxHxWxC.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


_max_pool_2x2.defjvp(lambda primals, tangents: jax.jvp(_max_pool_2x2_by_reshape, primals, tangents))


@jax.custom_vjp
def _max_pool_2x2_for_input_gradient(x_BxHxWxC):
  return _max_pool_2x2_by_reshape(x_BxHxWxC)


def _pool_input_gradient_fwd(x):
  y = _max_pool_2x2_by_reshape(x)
  return y, (x, y)


def _pool_input_gradient_bwd(res, ct):
  """JAX's derivative of the reshape form, (ct / count) * [x == max] with count the window's
  number of maxima, the count added up from the window's four positions."""
  x, y = res
  b, h, w, c = x.shape
  xr = x.reshape(b, h // 2, 2, w // 2, 2, c)
  count = sum((xr[:, :, i, :, j, :] == y).astype(ct.dtype) for i in range(2) for j in range(2))
  g = (ct / count)[:, :, None, :, None, :] * (xr == y[:, :, None, :, None, :]).astype(ct.dtype)
  return (g.reshape(x.shape),)


_max_pool_2x2_for_input_gradient.defvjp(_pool_input_gradient_fwd, _pool_input_gradient_bwd)


def _conv(x, w, padding):
  return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x_BxHxWxI: jnp.ndarray, w_HxWxIxO: jnp.ndarray, padding: str = "VALID"):
  """Stride-1 2-D convolution (NHWC, HWIO) whose input gradient is itself a canonical
  NHWC/HWIO convolution.

  JAX's own transpose rule expresses the input gradient as a convolution with kernel
  labels `01oi`. When the kernel is a loop constant (an attack's inner loop closes over
  the parameters), XLA:CPU folds the kernel transpose into that layout and misses its fast
  convolution path: conv2's input gradient in CNN002 took 330 ms instead of about 10 ms,
  making 10 TRADES steps in `fori_loop` 7x slower than unrolled. Here the flipped,
  transposed kernel is materialised behind an optimization barrier, so the layout stays
  canonical. Values and gradients equal `lax.conv_general_dilated`'s. Under differentiation
  a convolution with at most three input channels is computed as shifted multiply-adds
  (`_conv2d_fwd`), bit for bit XLA:CPU's convolution and faster there.
  """
  return _conv(x_BxHxWxI, w_HxWxIxO, padding)


# `conv2d`'s forward under differentiation computes convolutions with at most this many input
# channels, at least this many output channels and at most this many terms per patch
# (kh * kw * input channels) as shifted multiply-adds (`_conv_by_taps`). Eigen cuts longer
# patches into blocks whose length follows the caches and the output width (here 288 terms
# with 32 outputs, 144 with one), and a single chain then differs; 27 (3 x 3 x 3) stays far
# below any such block on other machines too (7 x 7 x 3 was bitwise equal here, and is left out)
_TAPS_MAX_IN, _TAPS_MIN_OUT, _TAPS_MAX_TERMS = 3, 8, 27


def _conv_by_taps(x, w, padding):
  """The stride-1 convolution as one multiply-add per kernel tap and input channel, in
  (kh, kw, in-channel) order: bitwise XLA:CPU's Eigen convolution where that runs one
  multiply-add chain over the patch from +0 (checked in `tests/test_models.py` for 1-3 input
  channels, 8-64 outputs, 3 x 3 and 5 x 5 kernels, 'VALID' and 'SAME'), and XLA fuses it into
  one elementwise loop.

  XLA:CPU contracts `a * b + c` into a fused multiply-add, and `p + q` of two products into
  fma(p's factors, q rounded); so the chain below is fma(x_1, w_1, x_0 w_0), then fma(x_k,
  w_k, acc) for each further tap, Eigen's chain except that it starts from x_0 w_0 instead of
  from +0: the two differ only while the sum is a zero, in its sign, hence the final `where`
  (Eigen's chain never ends at -0)."""
  kh, kw, ci, _ = w.shape
  if padding == "SAME":
    x = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  h, ww = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  terms = [x[:, i:i + h, j:j + ww, c:c + 1] * w[i, j, c][None, None, None, :]
           for i in range(kh) for j in range(kw) for c in range(ci)]
  acc = terms[1] + terms[0] if len(terms) > 1 else terms[0]
  for t in terms[2:]:
    acc = acc + t
  return jnp.where(acc == 0, jnp.zeros((), acc.dtype), acc)


def _uses_taps(w) -> bool:
  kh, kw, ci, co = w.shape
  return ci <= _TAPS_MAX_IN and co >= _TAPS_MIN_OUT and kh * kw * ci <= _TAPS_MAX_TERMS


def _channels_first_copy(x):
  """x (N, H, W, C) as a (C, H, W, N) array that XLA:CPU materialises as such.

  A gradient program needs a few-channel layer's output twice: as (N, H, W, C') for the next
  convolution and transposed, (C', H, W, N), for that convolution's weight gradient. XLA
  fuses the taps into both. Read from an (N, H, W, C) input, the transposed fusion gathers
  one scalar per tap and batch element (CNN002's conv1 with its ReLU at batch 128: 3.46 ms);
  read from a (C, H, W, N) copy of the input it runs along contiguous rows (0.61 ms, and the
  (N, H, W, C') fusion 0.68 ms against 0.63). The copy is made inside a conditional on a
  runtime value, with the same transpose in both branches, because XLA otherwise folds the
  transpose back into its consumers; its result is flat (1-D has one layout), because layout
  assignment would otherwise give it the input's physical layout and make the transpose a
  no-op."""
  n, h, w, c = x.shape
  to_chwn = lambda v: v.transpose(3, 1, 2, 0).reshape(-1)
  flat = lax.cond(jnp.isnan(x.reshape(-1)[:1]).any(), to_chwn, to_chwn, x)
  return flat.reshape(c, h, w, n)


def _conv2d_fwd(x, w, padding):
  """The forward under differentiation. On XLA:CPU's Eigen path a convolution with one to
  three input channels spends most of its time packing patches (batch 64, with ReLU: CNN002's
  conv1 1.9 ms, as `_conv_by_taps` 0.5 ms; 3 -> 16 'SAME' on 32 x 32: 3.4 and 1.1 ms; 3 -> 64:
  5.0 and 3.1 ms), so such convolutions run as taps here, bitwise the same, read from a
  channels-first copy of the input (`_channels_first_copy`), which is also the residual the
  weight gradient reads. CNN002, interleaved medians on the 2-core VM: parameter gradient at
  batch 128 66.2 -> 59.8 ms with the taps and a further 3.5% with the copy, input gradient
  44.2 -> 41.8 ms, ODIN's perturbation at batch 256 85.7 -> 82.0 ms, all bitwise equal;
  `make demo`'s results byte-identical (`benchmarks/RESULTS.md`). One output channel is left
  to `_conv` (Eigen's matrix-vector path sums in another order). The primal function keeps
  `_conv`, which XLA fuses into the whole-network YNN forward."""
  if _uses_taps(w):
    x = _channels_first_copy(x).transpose(3, 1, 2, 0)  # read (and kept) through the copy
    return _conv_by_taps(x, w, padding), (x, w)
  return _conv(x, w, padding), (x, w)


def _input_gradient(dy, w, padding):
  """The full correlation of dy with the spatially flipped, I/O-swapped kernel."""
  kh, kw = w.shape[:2]
  w_t = lax.optimization_barrier(jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))
  if padding == "VALID":
    pads = ((kh - 1, kh - 1), (kw - 1, kw - 1))
  else:  # SAME, odd kernels
    pads = ((kh // 2, kh // 2), (kw // 2, kw // 2))
  return lax.conv_general_dilated(dy, w_t, (1, 1), pads, dimension_numbers=_DN)


# traced for a sign-only input gradient, convolutions with at most this many input channels
# take `_input_gradient_by_matmul` (XLA:CPU's transposed convolution with so few outputs runs
# as matrix-vector products); its own bound, though equal to the forward taps' `_TAPS_MAX_IN`
_MATMUL_GRADIENT_MAX_IN = 3


def _input_gradient_by_matmul(dy, w, padding):
  """`_input_gradient` for a few-input-channel kernel as one matrix product and shifted adds:
  p[b, y, x, t, i] = sum_o dy[b, y, x, o] w[t, i, o] for each tap t = (u, v), then dx[b, y,
  x, i] = sum_t p[b, y - u, x - v, t, i] (Dumoulin and Visin, "A guide to convolution
  arithmetic", 2016: the transposed convolution as the scatter of each output's kernel-sized
  contribution). Same value, summed in another order than XLA:CPU's convolution (CNN002's
  input gradient at batch 256 within 2.3e-7 of its largest element); XLA:CPU runs its
  one-channel transposed convolution as matrix-vector products, 4.7 against 1.2 ms at batch
  128 (`benchmarks/RESULTS.md`)."""
  kh, kw, ci, co = w.shape
  _, h, ww, _ = dy.shape
  # summed in float32 for lower-precision models too (as XLA's convolutions accumulate)
  p = jnp.einsum("byxo,tio->byxti", dy, w.reshape(kh * kw, ci, co),
                 preferred_element_type=jnp.float32)
  dx = None
  for u in range(kh):
    for v in range(kw):
      shifted = jnp.pad(p[:, :, :, u * kw + v], ((0, 0), (u, kh - 1 - u), (v, kw - 1 - v), (0, 0)))
      dx = shifted if dx is None else dx + shifted
  if padding == "SAME":  # odd kernels: the input is the middle of the full correlation
    dx = dx[:, kh // 2:kh // 2 + h, kw // 2:kw // 2 + ww]
  return dx.astype(dy.dtype)


def _weight_gradient(x, dy, w, padding):
  return jax.vjp(lambda w_: _conv(x, w_, padding), w)[1](dy)[0]


def _conv2d_bwd(padding, res, dy):
  x, w = res
  return _input_gradient(dy, w, padding), _weight_gradient(x, dy, w, padding)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d_sign_only(x_BxHxWxI, w_HxWxIxO, padding="VALID"):
  """`conv2d` for a few-input-channel kernel whose input gradient is read only for its signs
  (`functional.traces_sign_only_gradient`): its input gradient by `_input_gradient_by_matmul`."""
  return _conv(x_BxHxWxI, w_HxWxIxO, padding)


def _conv2d_sign_only_bwd(padding, res, dy):
  x, w = res
  return _input_gradient_by_matmul(dy, w, padding), _weight_gradient(x, dy, w, padding)


_conv2d_sign_only.defvjp(_conv2d_fwd, _conv2d_sign_only_bwd)


def conv2d_for_backend(x_BxHxWxI: jnp.ndarray, w_HxWxIxO: jnp.ndarray,
                       padding: str = "VALID") -> jnp.ndarray:
  """`conv2d` when the default backend is the CPU, else XLA's own convolution and gradient.

  On an H100 the custom gradient is no faster (cuDNN runs XLA's data gradient as its own
  `dgrad` kernels, the custom one as forward kernels on the flipped kernel, in about the same
  time): WRN-40-10 bf16 batch 128, CE step 6,057 img/s with it and 6,145 without, TRADES 821
  and 840, compile 20 s and 6 s (`benchmarks/RESULTS.md`). The choice is made when the model
  is traced.

  Traced for an input gradient that is read only for its signs (ODIN, Mahalanobis
  preprocessing: `functional.traces_sign_only_gradient`), a convolution with at most three
  input channels (the network's first) takes its input gradient as a matrix product and
  shifted adds (`_input_gradient_by_matmul`): a gradient element can then change its sign
  only where it is within float rounding of zero, where its step moves the score by about
  as little. The attacks and training keep `conv2d`'s bits."""
  if jax.default_backend() == "cpu":
    if functional.traces_sign_only_gradient() and w_HxWxIxO.shape[2] <= _MATMUL_GRADIENT_MAX_IN:
      return _conv2d_sign_only(x_BxHxWxI, w_HxWxIxO, padding)
    return conv2d(x_BxHxWxI, w_HxWxIxO, padding)
  return _conv(x_BxHxWxI, w_HxWxIxO, padding)


class Conv(nn.Module):
  """`nn.Conv` for stride-1 'VALID'/'SAME' convolutions, built on `conv2d_for_backend`."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  padding: str = "VALID"
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    w = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
    y = conv2d_for_backend(x.astype(self.dtype), w.astype(self.dtype), self.padding)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
      y = y + bias.reshape((1,) * (y.ndim - 1) + (-1,))
    return y


def normalize(x: jnp.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> jnp.ndarray:
  """(x - mean) / std per channel, for models that normalise [0, 1] pixels inside themselves
  (attacks and distances then stay in pixel units). Inputs whose channel count differs from
  the statistics' (e.g. grayscale) use the channel-averaged mean and std."""
  if x.shape[-1] != len(mean):
    mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
  per_channel = lambda v: jnp.asarray(v, x.dtype).reshape((1,) * (x.ndim - 1) + (-1,))
  return (x - per_channel(mean)) / per_channel(std)


def conv(features: int, kernel: int, stride: int = 1, dtype=jnp.float32, name: str | None = None,
         kernel_init=nn.initializers.kaiming_normal()) -> nn.Module:
  """A bias-free 'same'-padded k x k convolution: `Conv` (fast gradients on XLA:CPU) at
  stride 1, `nn.Conv` with symmetric padding k//2 (PyTorch's) when strided."""
  if stride == 1:
    return Conv(features, (kernel, kernel), "SAME", use_bias=False, kernel_init=kernel_init,
                dtype=dtype, name=name)
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, kernel_init=kernel_init, dtype=dtype, name=name)


def batch_norm(train: bool, dtype, name: str | None = None) -> nn.Module:
  """BatchNorm with PyTorch's defaults (momentum 0.1 there = 0.9 here, eps 1e-5)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      name=name)


def _pool_by_reshape(x, window, strides, padding, base_dilation, window_dilation):
  """reduce_window max as slice + reshape + max where windows tile the input (window =
  stride, no padding or dilation; 2 x 2 windows of a 4-D array through `max_pool_2x2`, on
  the CPU with the pooled axes moved to NHWC's places and back, e.g. NCHW's); None where
  they do not."""
  if (tuple(window) != tuple(strides) or any(p != (0, 0) for p in padding)
      or any(d != 1 for d in (*base_dilation, *window_dilation))):
    return None
  keep = tuple(slice(0, n - n % k) for n, k in zip(x.shape, window))
  x = x[keep]
  if tuple(window) == (1, 2, 2, 1):
    return max_pool_2x2(x)
  pooled = [a for a, k in enumerate(window) if k > 1]
  if (x.ndim == 4 and sorted(window) == [1, 1, 2, 2] and pooled[0] > 0
      and jax.default_backend() == "cpu"):  # elsewhere the reshape form below
    rest = [a for a in range(4) if a not in pooled]  # batch first, the other axis last
    to_nhwc = (rest[0], *pooled, rest[1])
    return max_pool_2x2(x.transpose(to_nhwc)).transpose(tuple(to_nhwc.index(a) for a in range(4)))
  split, axes = [], []
  for n, k in zip(x.shape, window):
    if k > 1:
      axes.append(len(split) + 1)
      split += [n // k, k]
    else:
      split.append(n)
  return x.reshape(split).max(axis=tuple(axes))


_NHWC_HWIO = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                      out_spec=(0, 3, 1, 2))


def _default_conv_precision():
  """The precision a convolution records when none is given (None, or what
  `jax_default_matmul_precision` makes of it): what `conv2d`'s own convolutions will use."""
  one = jax.ShapeDtypeStruct((1, 1, 1, 1), jnp.float32)
  return jax.make_jaxpr(lambda a, b: _conv(a, b, "VALID"))(one, one).eqns[0].params["precision"]


def _conv_as_conv2d(x, w, *, window_strides, padding, lhs_dilation, rhs_dilation,
                    dimension_numbers, feature_group_count, batch_group_count, precision,
                    preferred_element_type, **_):
  """A `conv_general_dilated` as `conv2d_for_backend` where that is the same convolution;
  None elsewhere. Other 2-D layouts than NHWC/HWIO (`lax.conv`'s NCHW/OIHW, a PyTorch port's)
  are transposed to it and the output back: same values, and the transposes of consecutive
  layers are XLA's to fold."""
  dn = dimension_numbers
  if (x.ndim != 4 or feature_group_count != 1
      or batch_group_count != 1 or precision != _default_conv_precision()
      or preferred_element_type is not None
      or any(s != 1 for s in (*window_strides, *lhs_dilation, *rhs_dilation))
      or x.dtype != jnp.float32 or w.dtype != jnp.float32
      or any(p < 0 for pair in padding for p in pair)):
    return None
  if dn == _NHWC_HWIO:
    return _padded_conv2d(x, w, padding)
  if jax.default_backend() != "cpu":  # elsewhere XLA's own convolution in any layout
    return None
  # spatial dims keep their order, so the padding pairs stay with them
  (n, c, sy, sx), (o, i, ky, kx), out = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  y = _padded_conv2d(x.transpose(n, sy, sx, c), w.transpose(ky, kx, i, o), padding)
  to_out = [0] * 4  # y is (batch, spatial 0, spatial 1, feature)
  for logical, axis in zip((0, 3, 1, 2), out):
    to_out[axis] = logical
  return y.transpose(to_out)


def _padded_conv2d(x, w, padding):
  """An NHWC/HWIO stride-1 convolution with explicit non-negative `padding` pairs as
  `conv2d_for_backend`: 'VALID', 'SAME', or the input padded first."""
  kh, kw = w.shape[:2]
  if all(p == (0, 0) for p in padding):
    return conv2d_for_backend(x, w, "VALID")
  if kh % 2 and kw % 2 and tuple(map(tuple, padding)) == ((kh // 2,) * 2, (kw // 2,) * 2):
    return conv2d_for_backend(x, w, "SAME")
  return conv2d_for_backend(jnp.pad(x, ((0, 0), *padding, (0, 0))), w, "VALID")


def _eval_rewritten(jaxpr, consts, *args):
  """`jax.core.eval_jaxpr` with the two swaps of `as_ncg_jax_layers`."""
  env = {}
  read = lambda v: v.val if isinstance(v, Literal) else env[v]
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name, out = eqn.primitive.name, None
    if name == "reduce_window_max":
      p = eqn.params
      out = _pool_by_reshape(invals[0], p["window_dimensions"], p["window_strides"],
                             p["padding"], p["base_dilation"], p["window_dilation"])
    elif name == "conv_general_dilated":
      out = _conv_as_conv2d(*invals, **eqn.params)
    elif name == "jit":
      inner = eqn.params["jaxpr"]
      out = _eval_rewritten(inner.jaxpr, inner.consts, *invals)
    if out is None:
      out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
    env.update(zip(eqn.outvars, out if eqn.primitive.multiple_results else [out]))
  return [read(v) for v in jaxpr.outvars]


def as_ncg_jax_layers(fn):
  """A user's function (a plain Flax or `lax` network) with the two layers whose XLA
  gradients are slow on the CPU in the forms ncg_jax's own models use; other operations as
  they are, nested `jax.jit` calls inlined. Same values.

  - Every max pooling whose windows tile its input (`nn.max_pool(x, (2, 2), (2, 2))`:
    window = stride, no padding) as reshape + max (`max_pool_2x2`'s form). XLA
    differentiates `reduce_window` max into `select_and_scatter`, which XLA:CPU runs as a
    scalar loop (~60 of ~190 ms of ODIN through a plain Flax CNN002 at batch 256); the
    reshape form differentiates into an elementwise select. The gradient differs only at
    exact ties inside a window, which XLA gives to the first maximum (as PyTorch does) and
    the reshape form shares (ReLU-then-pool zeros carry no gradient either way).
  - Every stride-1, undilated, ungrouped NHWC/HWIO float32 convolution at the default
    precision (`nn.Conv`'s) as `conv2d_for_backend`, explicit padding other than VALID or
    SAME applied to the input first: the custom VJP on the CPU (its input gradient keeps a
    canonical layout where the kernel is a loop constant), XLA's convolution elsewhere;
    equal up to float rounding.
  - On the CPU, convolutions in other 2-D layouts (PyTorch's NCHW/OIHW, `lax.conv`'s
    default) and 2 x 2 pools over other axes than NHWC's transposed to NHWC, rewritten as
    above, and transposed back; XLA folds the transposes between consecutive layers.
    Through CNN002 written as NCHW `lax` on the 2-core Intel VM: ODIN 218 -> 3,871 img/s,
    PGD-10 at batch 128 6.2 -> 0.89 s (`benchmarks/RESULTS.md`).
  Applied to the user functions whose input gradients ncg_jax takes (ODIN, Mahalanobis
  preprocessing, the attacks); ncg_jax's own models already have these forms, so their
  programs do not change. Applying it twice returns the first wrapper."""
  if getattr(fn, "_ncg_jax_layers", False):
    return fn

  def rewritten(*args):
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
    out = _eval_rewritten(closed.jaxpr, closed.consts, *jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(shapes), out)
  rewritten._ncg_jax_layers = True
  return rewritten
