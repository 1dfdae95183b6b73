"""TFDS builder `imgnet100`: the 100-class ImageNet subset of CMC at 112x112, as the NCG paper.

Classes: the ImageNet-100 list of Tian, Krishnan & Isola, "Contrastive Multiview Coding"
(ECCV 2020; github.com/HobbitLong/CMC, `imagenet100.txt`), sorted by WordNet id, so class
k is the k-th smallest wnid (wo0 = n01558993 robin, wo1 = n01692333 Gila monster, wo2 =
n01729322 hognose snake, as the NCG paper's held-out classes). Images come from TFDS
`imagenet2012` (downloaded by hand: ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
<data_dir>/downloads/manual/), resized so the shorter side is 128 (bilinear, antialiased)
and centre-cropped to 112, as the paper's `aug10` transform; train = the classes' ImageNet
train images (about 1,300 each), test = their 50 validation images each. Stored as uint8
tensors, so reading needs no TensorFlow.
"""
import numpy as np
import tensorflow_datasets as tfds

from ncg_jax.data import images

RESIZE, CROP = 128, 112

WNIDS = (
    "n01558993", "n01692333", "n01729322", "n01735189", "n01749939", "n01773797", "n01820546", "n01855672",
    "n01978455", "n01980166", "n01983481", "n02009229", "n02018207", "n02085620", "n02086240", "n02086910",
    "n02087046", "n02089867", "n02089973", "n02090622", "n02091831", "n02093428", "n02099849", "n02100583",
    "n02104029", "n02105505", "n02106550", "n02107142", "n02108089", "n02109047", "n02113799", "n02113978",
    "n02114855", "n02116738", "n02119022", "n02123045", "n02138441", "n02172182", "n02231487", "n02259212",
    "n02326432", "n02396427", "n02483362", "n02488291", "n02701002", "n02788148", "n02804414", "n02859443",
    "n02869837", "n02877765", "n02974003", "n03017168", "n03032252", "n03062245", "n03085013", "n03259280",
    "n03379051", "n03424325", "n03492542", "n03494278", "n03530642", "n03584829", "n03594734", "n03637318",
    "n03642806", "n03764736", "n03775546", "n03777754", "n03785016", "n03787032", "n03794056", "n03837869",
    "n03891251", "n03903868", "n03930630", "n03947888", "n04026417", "n04067472", "n04099969", "n04111531",
    "n04127249", "n04136333", "n04229816", "n04238763", "n04336792", "n04418357", "n04429376", "n04435653",
    "n04485082", "n04493381", "n04517823", "n04589890", "n04592741", "n07714571", "n07715103", "n07753275",
    "n07831146", "n07836838", "n13037406", "n13040303",
)


def resize_crop(image: np.ndarray) -> np.ndarray:
  """The paper's `aug10`: shorter side 128, centre crop 112, RGB."""
  return images.resize_crop(image, RESIZE, CROP, 3)


def imagenet_labels(imagenet_names) -> np.ndarray:
  """ImageNet label index -> ImgNet100 index (-1 outside the subset)."""
  lookup = {w: i for i, w in enumerate(WNIDS)}
  return np.asarray([lookup.get(w, -1) for w in imagenet_names], np.int64)


class Imgnet100(tfds.core.GeneratorBasedBuilder):
  """ImageNet-100 (CMC class list), 112x112x3, from a prepared TFDS `imagenet2012`."""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(CROP, CROP, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=list(WNIDS)),
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/HobbitLong/CMC",
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    from ncg_jax.data import tfds_io
    name = "imagenet2012"
    to_subset = imagenet_labels(tfds_io.label_names(name, self.data_dir_root))
    return {ours: self._generate_examples(
                tfds_io.open_split(name, theirs, self.data_dir_root, "imgnet100",
                                   decoders={"image": tfds.decode.SkipDecoding()}), to_subset)
            for ours, theirs in (("train", "train"), ("test", "validation"))}

  def _generate_examples(self, source, to_subset):
    for i in range(len(source)):
      record = source[i]
      label = int(to_subset[record["label"]])
      if label >= 0:
        yield i, {"image": resize_crop(images.decode(record["image"])), "label": label, "index": i}
