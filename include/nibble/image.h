// Image files to tensors, and the seed model's ImageNet preprocessing (docs: seed-model-format.md, "Input").
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "nibble/tensor.h"

namespace nibble {

// Larger images are refused before decoding: a corrupt or hostile header must not exhaust memory.
inline constexpr int64_t kMaxImagePixels = int64_t{1} << 26;

// Decodes JPEG (libjpeg-turbo, as PIL does: accurate IDCT, smooth upsampling), PNG (libpng,
// samples as stored, no gamma conversion), BMP, GIF (first frame), TGA and PNM (stb_image) into
// u8 H x W x 3 (HWC). Grey becomes three equal
// channels and alpha is dropped, as PIL's convert("RGB") does. 16-bit PNGs are reduced to 8
// bits. Throws nibble::Error naming `path` when the file is missing, not an image, corrupt,
// larger than kMaxImagePixels or claiming more pixels than its data can hold.
Tensor read_image_rgb(const std::string& path);

// Antialiased bilinear resize of u8 H x W x 3 to f32 out_h x out_w x 3, in exact arithmetic.
//
// Separable; along an axis of n_in samples resized to n_out, with s = n_in / n_out and f = max(s, 1),
// output o is centred at input coordinate c = (o + 0.5) * s (half-pixel centres, align_corners=False)
// and is the normalised weighted sum of the inputs i in
//   [max(floor(c - f + 0.5), 0), min(floor(c + f + 0.5), n_in))
// with weights tri((i + 0.5 - c) / f), tri(t) = max(0, 1 - |t|). For upscaling (f = 1) this is plain
// bilinear interpolation with edge clamping; for downscaling the triangle widens by the factor, so
// every input pixel contributes (antialiasing). This is PIL's BILINEAR filter, which torchvision's
// Resize uses on PIL images, without PIL's 8-bit rounding (see resize_bilinear_pil_u8).
Tensor resize_bilinear_u8(const Tensor& hwc, int64_t out_h, int64_t out_w);

// The same filter with PIL's integer arithmetic, bit-exact with Pillow's Image.resize(BILINEAR) on
// RGB images: weights in 22-bit fixed point (trunc(w * 2^22 + 0.5)), the horizontal pass first,
// rounded to u8, then the vertical pass rounded to u8. Returns u8 out_h x out_w x 3.
Tensor resize_bilinear_pil_u8(const Tensor& hwc, int64_t out_h, int64_t out_w);

// torchvision's Resize(shorter) size rule: the shorter side becomes `shorter` and the longer side
// int(shorter * long / short), truncated, not rounded (300 x 451 -> 256 x 384). Returns {h, w}.
std::pair<int64_t, int64_t> resize_shorter_side_dims(int64_t h, int64_t w, int64_t shorter);

// torchvision's CenterCrop offset, int(round((size - crop) / 2.0)) with Python's round half to
// even: 33 / 2 -> 16 but 35 / 2 -> 18. `size` must be >= `crop`.
int64_t center_crop_offset(int64_t size, int64_t crop);

// The seed model's input: shorter side to 256 (resize_bilinear_pil_u8 with resize_shorter_side_dims),
// centre crop 224 x 224 (center_crop_offset), per channel x = (p / 255 - mean) / std with ImageNet
// mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), then round(x * 127 / 2.64) clamped to
// [-127, 127]. Takes u8 H x W x 3, returns s8 3 x 224 x 224 (CHW). Bit-exact with torchvision's
// Resize(256), CenterCrop(224), ToTensor, Normalize on the same RGB pixels (and so with the seed
// model's golden inputs, made that way from PNG photos). Only the cropped window of the resized
// image is computed, so extreme aspect ratios cost no more memory than the crop.
Tensor preprocess_imagenet_s8(const Tensor& hwc_u8);

// Class names, one per line, in index order (data/imagenet_classes.txt). A final newline and
// CR-LF line ends are accepted; throws nibble::Error naming `path` when it cannot be read, holds
// no names or has an empty line.
std::vector<std::string> read_class_names(const std::string& path);

}  // namespace nibble
