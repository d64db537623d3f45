// Packs convolution weights into the micro-kernels' layout and caches the result per weight tensor.
#include <algorithm>
#include <cstring>
#include <list>
#include <mutex>

#include "backends/cpu/conv_job.h"
#include <stdexcept>

namespace nibble::cpu {

namespace {

// Raw bytes plus packed layouts beyond this are dropped, oldest first.
constexpr size_t kCacheBudgetBytes = size_t{512} << 20;

std::vector<int8_t> unpacked(const Tensor& w) {
  std::vector<int8_t> v(static_cast<size_t>(w.numel()));
  const uint8_t* raw = w.bytes();
  if (w.dtype() == DType::s4) {
    for (int64_t i = 0; i < w.numel(); ++i)
      v[static_cast<size_t>(i)] = static_cast<int8_t>(unpack_s4(raw, i));
  } else {
    std::memcpy(v.data(), raw, v.size());
  }
  return v;
}

std::shared_ptr<PackedConvWeights> pack(const Tensor& w, int64_t group, int mr, ConvMode mode, bool tile_layout) {
  auto p = std::make_shared<PackedConvWeights>();
  const int lanes = mode == ConvMode::u8s8 ? 4 : 2;
  if (tile_layout && (mode != ConvMode::u8s8 || mr != 16)) throw std::logic_error("the tile weight layout is u8s8 with 16 maps");
  p->mode = mode;
  p->tile_layout = tile_layout;
  p->mr = mr;
  p->groups = group;
  p->maps_per_group = w.dim(0) / group;
  p->m_blocks = (p->maps_per_group + mr - 1) / mr;
  p->k = w.numel() / w.dim(0);
  p->k_steps = (p->k + lanes - 1) / lanes;
  if (tile_layout) p->k_steps = (p->k_steps + kTileSteps - 1) / kTileSteps * kTileSteps;
  const size_t total = static_cast<size_t>(group * p->m_blocks * p->block_elems());
  if (mode == ConvMode::u8s8) {
    p->s8.assign(total, 0);
  } else {
    p->s16.assign(total, 0);
  }
  const std::vector<int8_t> v = unpacked(w);
  int max_abs = 0;
  for (int8_t e : v) max_abs = std::max(max_abs, e < 0 ? -int{e} : int{e});
  p->max_abs = max_abs;
  for (int64_t g = 0; g < group; ++g) {
    for (int64_t mb = 0; mb < p->m_blocks; ++mb) {
      const int64_t block = (g * p->m_blocks + mb) * p->block_elems();
      for (int r = 0; r < mr; ++r) {
        const int64_t mg = mb * mr + r;
        if (mg >= p->maps_per_group) break;
        const int8_t* row = v.data() + (g * p->maps_per_group + mg) * p->k;
        for (int64_t s = 0, k = 0; s < p->k_steps; ++s) {
          const int64_t at = tile_layout ? block + (s / kTileSteps * mr + r) * kTileSteps * 4 + s % kTileSteps * 4
                                         : block + (s * mr + r) * lanes;
          for (int l = 0; l < lanes && k < p->k; ++l, ++k) {
            if (mode == ConvMode::u8s8) {
              p->s8[static_cast<size_t>(at + l)] = row[k];
            } else {
              p->s16[static_cast<size_t>(at + l)] = row[k];
            }
          }
        }
      }
    }
  }
  return p;
}

struct Entry {
  const uint8_t* data;
  DType dtype;
  Shape shape;
  int64_t group;
  int mr;
  ConvMode mode;
  bool tile_layout;
  std::shared_ptr<const void> owner;  // the tensor's storage, kept alive so its address stays its own
  uint64_t writes;                    // its write count when packed
  std::shared_ptr<const PackedConvWeights> packed;

  size_t bytes() const { return packed->s8.size() + packed->s16.size() * 2; }
};

class Cache {
 public:
  std::shared_ptr<const PackedConvWeights> get(const Tensor& w, int64_t group, int mr, ConvMode mode, bool tile_layout) {
    std::shared_ptr<const Entry> hit;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        const Entry& e = **it;
        if (e.data == w.bytes() && e.dtype == w.dtype() && e.shape == w.shape() && e.group == group &&
            e.mr == mr && e.mode == mode && e.tile_layout == tile_layout) {
          hit = *it;
          entries_.splice(entries_.begin(), entries_, it);  // most recently used first
          break;
        }
      }
    }
    if (hit && hit->owner == w.storage_owner() && hit->writes == w.write_count()) {
      return hit->packed;
    }
    auto e = std::make_shared<Entry>();
    e->data = w.bytes();
    e->dtype = w.dtype();
    e->shape = w.shape();
    e->group = group;
    e->mr = mr;
    e->mode = mode;
    e->tile_layout = tile_layout;
    e->owner = w.storage_owner();
    e->writes = w.write_count();
    e->packed = pack(w, group, mr, mode, tile_layout);
    std::lock_guard<std::mutex> lock(mutex_);
    // A stale entry goes; another thread may have dropped it already.
    if (hit && entries_.remove(hit) > 0) bytes_ -= hit->bytes();
    entries_.push_front(e);
    bytes_ += e->bytes();
    while (bytes_ > kCacheBudgetBytes && entries_.size() > 1) {
      bytes_ -= entries_.back()->bytes();
      entries_.pop_back();
    }
    return e->packed;
  }

 private:
  std::mutex mutex_;
  std::list<std::shared_ptr<const Entry>> entries_;
  size_t bytes_ = 0;
};

}  // namespace

std::shared_ptr<const PackedConvWeights> packed_conv_weights(const Tensor& w, int64_t group, int mr,
                                                             ConvMode mode, bool tile_layout) {
  static Cache cache;
  return cache.get(w, group, mr, mode, tile_layout);
}

}  // namespace nibble::cpu
