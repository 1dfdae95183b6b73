"""`benchmarks.common.model_flops`, the FLOP count behind the GPU benchmarks' MFU, against
closed forms and a brute-force count of the multiply-adds that touch a real input; and the
plain networks the benchmarks time beside ncg_jax's CNN002; the per-layer
convolution benchmark's two frameworks on the same arrays."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks.common import model_flops


def brute_conv_macs(b, h, w, cin, cout, k, stride, pad):
  """Multiply-adds of a k x k convolution whose input index lands inside the image."""
  ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
  taps = sum(1 for oy, ox, ky, kx in itertools.product(range(ho), range(wo), range(k), range(k))
             if 0 <= oy * stride + ky - pad < h and 0 <= ox * stride + kx - pad < w)
  return b * cin * cout * taps


def test_dense_forward_and_gradient():
  x, w = jnp.ones((8, 64)), jnp.ones((64, 32))
  assert model_flops(lambda x, w: x @ w, x, w) == 2 * 8 * 64 * 32
  # value and both gradients: three matrix products of the same size
  f = jax.value_and_grad(lambda x, w: jnp.sum(x @ w), argnums=(0, 1))
  assert model_flops(f, x, w) == 3 * 2 * 8 * 64 * 32


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 1), (1, 0)])
def test_convolution_counts_real_taps_forward_and_backward(stride, pad):
  x, w = jnp.ones((2, 9, 9, 3)), jnp.ones((3, 3, 3, 4))
  conv = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  forward = 2 * brute_conv_macs(2, 9, 9, 3, 4, 3, stride, pad)
  assert model_flops(conv, x, w) == forward
  # the data gradient (a transposed, lhs-dilated convolution for stride 2) and the weight
  # gradient each do the forward's multiply-adds once more
  grads = jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1))
  assert model_flops(grads, x, w) == 3 * forward


def test_loops_count_every_iteration_and_dead_code_none():
  w = jnp.ones((16, 16))
  body = lambda i, v: v @ w
  assert model_flops(lambda v: lax.fori_loop(0, 10, body, v), jnp.ones((4, 16))) == 10 * 2 * 4 * 16 * 16
  assert model_flops(lambda v: (v @ w, v)[1], jnp.ones((4, 16))) == 0


def test_the_benchmarks_plain_networks_are_ncg_jax_cnn002():
  """The plain Flax and NCHW `lax` CNN002s the benchmarks time beside ncg_jax's: the `lax`
  one with ncg_jax's weights gives its logits; the Flax one has its parameter shapes."""
  from benchmarks.common import PlainCNN002, plain_lax_cnn002
  from ncg_jax import models
  model = models.create("cnn002", 9)
  x = jnp.asarray(np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32))
  params, _ = models.init(model, jax.random.key(0), x[:1])
  params["head"]["kernel"] = 0.05 * jax.random.normal(jax.random.key(1), (200, 9))
  ours = model.apply({"params": params}, x)[0]
  np.testing.assert_allclose(plain_lax_cnn002(params)(x.transpose(0, 3, 1, 2)), ours,
                             rtol=1e-4, atol=1e-5)
  plain = PlainCNN002(9).init(jax.random.key(0), x[:1])["params"]
  assert sorted(a.shape for a in jax.tree.leaves(plain)) == sorted(
      a.shape for a in jax.tree.leaves(params))


@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv4"])
def test_conv_layers_benchmark_times_the_same_convolutions_in_both_frameworks(layer):
  """`benchmarks.conv_layers` compares ncg_jax's three convolutions of a layer with PyTorch's
  channels-last ones: both must compute the same arrays, in the same layout once converted."""
  from benchmarks import conv_layers
  size, c_in, c_out = conv_layers.CNN002_CONVS[layer]
  x, w, dy = conv_layers.layer_arrays(np.random.default_rng(1), 2, size, c_in, c_out)
  mine, theirs = conv_layers.jax_passes(x, w, dy), conv_layers.torch_passes(x, w, dy)
  for p in conv_layers.PASSES:
    want = np.asarray(mine[p]())
    got = conv_layers.torch_result_as_nhwc(p, theirs[p]())
    assert got.shape == want.shape, p
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=p)
