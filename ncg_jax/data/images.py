"""Image resizing and decoding shared by the dataset builders and the OOD sets (PIL)."""
import io

import numpy as np


def resize_crop(image: np.ndarray, resize: int, crop: int, channels: int = 3) -> np.ndarray:
  """Shorter side to `resize` (PIL bilinear, antialiased), then the centre `crop` x `crop`
  (torchvision's Resize + CenterCrop arithmetic), as `channels` (1: grayscale, 3: RGB).
  uint8 HWC (or HW) in, uint8 [crop, crop, channels] out."""
  from PIL import Image
  img = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
  w, h = img.size
  size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
  img = img.convert("L" if channels == 1 else "RGB")
  if img.size != size:
    img = img.resize(size, Image.BILINEAR)
  w, h = img.size
  top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
  out = np.asarray(img.crop((left, top, left + crop, top + crop)), np.uint8)
  return out[..., None] if channels == 1 else out


def decode(image_bytes: bytes) -> np.ndarray:
  """An encoded image (PNG, JPEG, ...) as uint8 RGB."""
  from PIL import Image
  with Image.open(io.BytesIO(image_bytes)) as im:
    return np.asarray(im.convert("RGB"), np.uint8)
