// Activation calibration: |x| histograms, clipping-threshold selection (max, percentile, entropy,
// mse) and the calibration table file that records the chosen range of each tensor.
//
// The usual flow is two passes over the calibration data: a first pass feeds every activation
// tensor to a MinMax, which fixes the histogram limit; a second pass fills an AbsHistogram per
// tensor with that limit. Because the bin edges depend only on the limit, the histograms (and
// so the thresholds) do not depend on batch size, data order or how the work was split.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace nibble::quant {

// Histogram of |x| over [0, limit] in `bins` equal bins: bin i covers [i * w, (i + 1) * w) with
// w = limit / bins, and values >= limit (infinities included) fall into the last bin. NaN values
// are counted apart (nan_count) and take no part in total() or in any threshold.
class AbsHistogram {
 public:
  // `limit` must be finite (else nibble::Error); a limit <= 0 puts every value into bin 0.
  // `bins` must be at least 1 (else std::invalid_argument).
  explicit AbsHistogram(double limit, int bins = 8192);

  // Adds n values. The bin of x is min(bins - 1, int(|x| * (bins / limit))).
  void add(const float* x, int64_t n);

  // Adds the counts of `other`, which must have the same limit and bin count (else nibble::Error).
  void merge(const AbsHistogram& other);

  int bins() const { return static_cast<int>(counts_.size()); }
  double limit() const { return limit_; }
  double bin_width() const { return limit_ > 0 ? limit_ / static_cast<double>(counts_.size()) : 0.0; }
  const std::vector<int64_t>& counts() const { return counts_; }
  int64_t total() const { return total_; }  // values counted in bins (NaN excluded)
  int64_t nan_count() const { return nan_count_; }

 private:
  double limit_;
  double scale_;  // bins / limit, or 0 when limit <= 0
  std::vector<int64_t> counts_;
  int64_t total_ = 0;
  int64_t nan_count_ = 0;
};

// Running minimum and maximum of the values seen (the first calibration pass). NaN is skipped.
struct MinMax {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();

  void add(const float* x, int64_t n);
  void merge(const MinMax& other);
  bool empty() const { return lo > hi; }
  // The largest |x| seen, the natural AbsHistogram limit; 0 when empty.
  double abs_max() const;
};

enum class CalibMethod { max, percentile, entropy, mse };

// A threshold-selection method as the user names it: "max", "percentile:P", "entropy" or "mse".
struct CalibSpec {
  CalibMethod method = CalibMethod::max;
  double percentile = 99.99;  // used by CalibMethod::percentile only, in (0, 100]

  // The canonical spelling, which parse() accepts: "max", "percentile:99.999", "entropy", "mse".
  std::string text() const;

  // Throws nibble::Error (with no location) for an unknown method or a percentile outside (0, 100].
  static CalibSpec parse(const std::string& s);

  bool operator==(const CalibSpec&) const = default;
};

// The clipping threshold T for a tensor whose |x| histogram is `h`, quantized with `levels`
// positive levels (255 for u8, 127 for s8, 15 for u4, 7 for s4); T is always an upper bin edge,
// at most h.limit(). An empty histogram or a limit <= 0 gives 0, and the caller decides what
// that means. The methods:
//   max         the histogram limit (the true max |x| when a first pass set it).
//   percentile  the upper edge of the first bin at which the cumulative count reaches P% of total.
//   entropy     KL-divergence minimization as in TensorRT's calibrator: for a candidate of i bins
//               (levels + 1 to bins), P is counts[0, i) with the mass beyond added to bin i - 1,
//               and Q is counts[0, i) merged into levels + 1 equal groups, each spread evenly over
//               its non-empty bins; the candidate minimizing KL(P || Q) gives T = i * bin_width.
//               Bin 0 is taken to hold as many values as bin 1, so that a spike of exact zeros
//               (which every threshold represents exactly) does not steer the choice; a bin where
//               Q is zero but P is not gets a tiny probability instead of an infinite divergence.
//               Histograms of more than 2048 bins are first merged to 2048 (TensorRT's
//               resolution): finer bins pull the threshold of peaked ReLU outputs far too low.
//   mse         the bin edge T minimizing the expected squared error, where a bin of n values with
//               centre c costs n * step^2 / 12 (step = T / levels) when c <= T and n * (c - T)^2
//               when clipped.
// entropy and mse first scan at most about 512 candidates spread evenly over the bins, then every
// bin edge next to the best one. Ties go to the larger threshold. All methods are deterministic.
// Throws std::invalid_argument when levels < 1 or the spec's percentile is outside (0, 100].
double choose_threshold(const AbsHistogram& h, const CalibSpec& spec, int levels);

// One line of a calibration table: the range [lo, hi] chosen for a tensor, and how.
struct CalibEntry {
  std::string tensor;
  std::string method;  // a CalibSpec text
  double lo = 0;
  double hi = 0;
};

// The scale of an FP8 (e4m3) activation with this range: max(|lo|, |hi|) / 448, as an f32 value
// (0 for an empty range).
double fp8_activation_scale(const CalibEntry& e);

struct CalibTable {
  std::vector<std::string> comments;  // comment lines without the leading "# ", in file order
  std::vector<CalibEntry> entries;    // in file order

  // The entry for `tensor`, or nullptr. A linear search.
  const CalibEntry* find(const std::string& tensor) const;
};

// The calibration table file is text, one tensor per line:
//   <tensor> <method> <lo> <hi>
// separated by spaces or tabs. Lines whose first non-blank character is '#' are comments; blank
// lines are ignored. Ranges are f32 values: they are written with nine significant digits and
// read back rounded to the nearest f32, so a range of f32 values round-trips exactly.
//
// Writing checks what reading would: a tensor name must be non-empty, free of whitespace and not
// start with '#'; the method must parse as a CalibSpec (it is written in canonical form); lo and
// hi must be finite, within the f32 range and ordered; tensor names must be unique; comments must
// be single lines. A violation throws nibble::Error naming the tensor.
std::string format_calib(const CalibTable& t);
void write_calib(const CalibTable& t, const std::string& path);  // atomically replaces `path`

// Parses a table; every problem throws nibble::Error located at "<path>:<line>". Methods are
// stored in canonical CalibSpec form.
CalibTable parse_calib(const std::string& text, const std::string& path);
CalibTable read_calib(const std::string& path);

}  // namespace nibble::quant
