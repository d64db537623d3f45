// Calibration histograms, threshold selection and the calibration table file.
#include "quant/calibration.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <unordered_set>

#include "nibble/error.h"
#include "nibble/file_util.h"

namespace nibble::quant {

namespace {


bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }

// Parses all of `s` as a double; nothing else may follow the number.
bool parse_double(std::string_view s, double& v) {
  const char* end = s.data() + s.size();
  const auto [p, ec] = std::from_chars(s.data(), end, v);
  return !s.empty() && ec == std::errc() && p == end;
}

// ---- threshold search ----

// About this many candidates are scanned before the neighbourhood of the best one is refined.
constexpr int64_t kMaxCandidates = 512;

// The i in [first, last] minimizing cost(i): a scan of at most about kMaxCandidates evenly spaced
// values (always including `last`), then every value within one stride of the best. Ties go to
// the larger i.
template <typename Cost>
int64_t search_min(int64_t first, int64_t last, Cost cost) {
  const int64_t stride = std::max<int64_t>(1, (last - first + kMaxCandidates - 1) / kMaxCandidates);
  int64_t best = last;
  double best_cost = cost(last);
  const auto consider = [&](int64_t i) {
    const double c = cost(i);
    if (c < best_cost || (c == best_cost && i > best)) {
      best = i;
      best_cost = c;
    }
  };
  for (int64_t i = first; i < last; i += stride) consider(i);
  const int64_t lo = std::max(first, best - stride + 1);
  const int64_t hi = std::min(last - 1, best + stride - 1);
  for (int64_t i = lo; i <= hi; ++i) {
    if ((i - first) % stride != 0) consider(i);  // the scan already tried the others
  }
  return best;
}

// The upper edge of bin k - 1, i.e. k bin widths.
double edge(const AbsHistogram& h, int64_t k) { return h.limit() * static_cast<double>(k) / h.bins(); }

double percentile_threshold(const AbsHistogram& h, double percentile) {
  // cum / total >= percentile / 100, without dividing: exact whenever percentile * total is.
  const double target = percentile * static_cast<double>(h.total());
  const std::vector<int64_t>& counts = h.counts();
  int64_t cum = 0;
  for (size_t j = 0; j < counts.size(); ++j) {
    cum += counts[j];
    if (counts[j] > 0 && static_cast<double>(cum) * 100.0 >= target) return edge(h, static_cast<int64_t>(j) + 1);
  }
  return h.limit();  // unreachable for a non-empty histogram: the last non-empty bin reaches 100%
}

// Where Q is zero but P is not, KL(P || Q) is infinite; such bins get this probability instead,
// which makes their divergence large but finite.
constexpr double kSmoothing = 1e-12;

constexpr int64_t kEntropyBins = 2048;

double entropy_threshold(const AbsHistogram& h, int levels) {
  // The divergence is measured on at most kEntropyBins bins (TensorRT's resolution). Finer bins
  // make a peaked distribution look costly to merge and pull the threshold far too low: on the
  // ReLU outputs of a small CNN, 8192 bins clipped an 8-bit stem activation to 4% of its range.
  const std::vector<int64_t>& counts = h.counts();
  const int64_t merge = std::max<int64_t>(1, static_cast<int64_t>(counts.size()) / kEntropyBins);
  const int64_t bins = static_cast<int64_t>(counts.size()) / merge;
  std::vector<double> c(static_cast<size_t>(bins), 0.0);
  for (size_t j = 0; j < counts.size(); ++j) {
    c[std::min<size_t>(j / static_cast<size_t>(merge), static_cast<size_t>(bins) - 1)] += static_cast<double>(counts[j]);
  }
  // A spike of exact zeros (ReLU outputs) lands in bin 0 and would dominate the divergence although
  // zero is represented exactly at any threshold; like TensorRT-derived calibrators, take bin 0 to
  // hold as much as its neighbour.
  if (bins >= 2) c[0] = c[1];

  // Prefix sums over bins [0, k): counts, non-empty bins and c * log(c), so that each candidate
  // costs one step per group rather than one per bin.
  std::vector<double> sum(static_cast<size_t>(bins) + 1, 0.0);
  std::vector<int64_t> nonzero(static_cast<size_t>(bins) + 1, 0);
  std::vector<double> clogc(static_cast<size_t>(bins) + 1, 0.0);
  for (int64_t j = 0; j < bins; ++j) {
    sum[j + 1] = sum[j] + c[j];
    nonzero[j + 1] = nonzero[j] + (c[j] > 0 ? 1 : 0);
    clogc[j + 1] = clogc[j] + (c[j] > 0 ? c[j] * std::log(c[j]) : 0.0);
  }
  const double total = sum[bins];
  if (total == 0) return percentile_threshold(h, 100.0);  // everything sits in bin 0

  // KL(P || Q) for a threshold of i bins. With N = total, P_j = pc_j / N where pc_j = c_j, plus the
  // mass beyond the threshold for j = i - 1, so KL = sum_j pc_j * (log pc_j - log Q_j) / N - log N.
  // Bin j belongs to group j * groups / i, i.e. group g spans [ceil(g * i / groups), ceil((g + 1) * i / groups)).
  // Within a group, Q is the group's mass (normalized by the kept mass K) spread over its non-empty bins.
  const int64_t groups = static_cast<int64_t>(levels) + 1;
  const double log_total = std::log(total);
  const double log_smoothing = std::log(kSmoothing);
  const auto divergence = [&](int64_t i) {
    const double kept = sum[i];
    if (kept == 0) return std::numeric_limits<double>::infinity();
    double acc = 0;
    double log_q_last = log_smoothing;  // log Q of bin i - 1
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t a = (g * i + groups - 1) / groups;
      const int64_t b = ((g + 1) * i + groups - 1) / groups;
      const int64_t filled = nonzero[b] - nonzero[a];
      if (filled == 0) continue;
      const double log_q = std::log(std::max(kSmoothing, (sum[b] - sum[a]) / (static_cast<double>(filled) * kept)));
      const int64_t end = b == i ? i - 1 : b;  // bin i - 1 is added below, with the outliers
      acc += (clogc[end] - clogc[a]) - (sum[end] - sum[a]) * log_q;
      if (b == i && c[i - 1] > 0) log_q_last = log_q;
    }
    const double last = c[i - 1] + (total - kept);
    if (last > 0) acc += last * (std::log(last) - log_q_last);
    return acc / total - log_total;
  };
  const int64_t first = std::min(groups, bins);
  const int64_t best = search_min(first, bins, divergence);
  return best == bins ? h.limit() : edge(h, best * merge);
}

double mse_threshold(const AbsHistogram& h, int levels) {
  const std::vector<int64_t>& counts = h.counts();
  const int64_t bins = static_cast<int64_t>(counts.size());
  std::vector<double> below(static_cast<size_t>(bins) + 1, 0.0);  // values in bins [0, k)
  for (int64_t j = 0; j < bins; ++j) below[j + 1] = below[j] + static_cast<double>(counts[j]);
  // Costs in units of bin_width^2. A bin centre (j + 0.5) lies within a threshold of k bins exactly
  // when j < k.
  const auto error = [&](int64_t k) {
    const double step = static_cast<double>(k) / levels;
    double clipped = 0;
    for (int64_t j = k; j < bins; ++j) {
      const double d = static_cast<double>(j - k) + 0.5;
      clipped += static_cast<double>(counts[j]) * d * d;
    }
    return below[k] * (step * step / 12.0) + clipped;
  };
  return edge(h, search_min(1, bins, error));
}

}  // namespace

// ---- AbsHistogram ----

AbsHistogram::AbsHistogram(double limit, int bins) : limit_(limit), scale_(0.0) {
  if (bins < 1) throw std::invalid_argument(fmt::format("AbsHistogram: bin count must be at least 1, got {}", bins));
  if (!std::isfinite(limit)) fail("", "calibration histogram limit must be finite, got {}", limit);
  // A limit so small that bins / limit overflows still sends 0 to bin 0 and everything else to the last bin.
  if (limit > 0) scale_ = std::min(static_cast<double>(bins) / limit, std::numeric_limits<double>::max());
  counts_.assign(static_cast<size_t>(bins), 0);
}

void AbsHistogram::add(const float* x, int64_t n) {
  int64_t* counts = counts_.data();
  int64_t nans = 0;
  if (scale_ == 0.0) {
    for (int64_t k = 0; k < n; ++k) nans += std::isnan(x[k]) ? 1 : 0;
    counts[0] += n - nans;
  } else {
    const double scale = scale_;
    const int64_t last = static_cast<int64_t>(counts_.size()) - 1;
    const auto top = static_cast<double>(counts_.size());
    for (int64_t k = 0; k < n; ++k) {
      const float v = x[k];
      if (std::isnan(v)) {
        ++nans;
        continue;
      }
      const double b = std::fabs(static_cast<double>(v)) * scale;
      ++counts[b < top ? static_cast<int64_t>(b) : last];
    }
  }
  total_ += n - nans;
  nan_count_ += nans;
}

void AbsHistogram::merge(const AbsHistogram& other) {
  if (other.limit_ != limit_ || other.counts_.size() != counts_.size()) {
    fail("", "cannot merge calibration histograms of different ranges ({} bins over [0, {}] and {} bins over [0, {}])",
         counts_.size(), limit_, other.counts_.size(), other.limit_);
  }
  for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
  total_ += other.total_;
  nan_count_ += other.nan_count_;
}

// ---- MinMax ----

void MinMax::add(const float* x, int64_t n) {
  if (n <= 0) return;
  // Comparisons with NaN are false, so NaN never becomes the minimum or the maximum.
  float lo_f = std::numeric_limits<float>::infinity();
  float hi_f = -std::numeric_limits<float>::infinity();
  for (int64_t k = 0; k < n; ++k) {
    const float v = x[k];
    if (v < lo_f) lo_f = v;
    if (v > hi_f) hi_f = v;
  }
  if (lo_f <= hi_f) {
    lo = std::min(lo, static_cast<double>(lo_f));
    hi = std::max(hi, static_cast<double>(hi_f));
  }
}

void MinMax::merge(const MinMax& other) {
  lo = std::min(lo, other.lo);
  hi = std::max(hi, other.hi);
}

double MinMax::abs_max() const { return empty() ? 0.0 : std::max(std::fabs(lo), std::fabs(hi)); }

// ---- CalibSpec ----

std::string CalibSpec::text() const {
  switch (method) {
    case CalibMethod::max:
      return "max";
    case CalibMethod::percentile:
      return fmt::format("percentile:{}", percentile);
    case CalibMethod::entropy:
      return "entropy";
    case CalibMethod::mse:
      return "mse";
  }
  return "max";
}

CalibSpec CalibSpec::parse(const std::string& s) {
  CalibSpec spec;
  if (s == "max") {
    spec.method = CalibMethod::max;
  } else if (s == "entropy") {
    spec.method = CalibMethod::entropy;
  } else if (s == "mse") {
    spec.method = CalibMethod::mse;
  } else if (s.starts_with("percentile:")) {
    spec.method = CalibMethod::percentile;
    double p = 0;
    if (!parse_double(std::string_view(s).substr(11), p) || !(p > 0 && p <= 100)) {
      fail("", "bad calibration method {}: the percentile must be a number in (0, 100]", excerpt(s));
    }
    spec.percentile = p;
  } else {
    fail("", "unknown calibration method {} (expected max, percentile:P, entropy or mse)", excerpt(s));
  }
  return spec;
}

// ---- threshold ----

double choose_threshold(const AbsHistogram& h, const CalibSpec& spec, int levels) {
  if (levels < 1) throw std::invalid_argument(fmt::format("choose_threshold: levels must be at least 1, got {}", levels));
  if (spec.method == CalibMethod::percentile && !(spec.percentile > 0 && spec.percentile <= 100)) {
    throw std::invalid_argument(fmt::format("choose_threshold: percentile {} is outside (0, 100]", spec.percentile));
  }
  if (h.total() == 0 || !(h.limit() > 0)) return 0.0;
  switch (spec.method) {
    case CalibMethod::max:
      return h.limit();
    case CalibMethod::percentile:
      return percentile_threshold(h, spec.percentile);
    case CalibMethod::entropy:
      return entropy_threshold(h, levels);
    case CalibMethod::mse:
      return mse_threshold(h, levels);
  }
  return h.limit();
}

// ---- calibration table ----

namespace {

// Magnitudes from here on round to infinity as f32 (FLT_MAX plus half a unit in the last place).
constexpr double kF32Overflow = 0x1.ffffffp127;

constexpr std::string_view kLineForm = "'<tensor> <method> <lo> <hi>'";

std::string format_table(const CalibTable& t, const std::string& where) {
  std::string out;
  for (const std::string& c : t.comments) {
    // Reading splits lines at '\n' and drops a '\r' before it, so neither could come back.
    if (c.find('\n') != std::string::npos || c.ends_with('\r')) {
      fail(where, "calibration comment {} does not fit on one line", excerpt(c));
    }
    out += c.empty() ? "#\n" : "# " + c + "\n";
  }
  std::unordered_set<std::string> seen;
  for (const CalibEntry& e : t.entries) {
    if (e.tensor.empty()) fail(where, "a calibration entry has an empty tensor name");
    if (std::any_of(e.tensor.begin(), e.tensor.end(), is_space)) {
      fail(where, "tensor name {} contains whitespace and cannot be written to a calibration table", excerpt(e.tensor));
    }
    if (e.tensor[0] == '#') {
      fail(where, "tensor name {} starts with '#' and cannot be written to a calibration table", excerpt(e.tensor));
    }
    if (!seen.insert(e.tensor).second) fail(where, "duplicate calibration entry for tensor {}", excerpt(e.tensor));
    CalibSpec spec;
    try {
      spec = CalibSpec::parse(e.method);
    } catch (const Error& err) {
      fail(where, "tensor {}: {}", excerpt(e.tensor), err.problem());
    }
    for (const double v : {e.lo, e.hi}) {
      if (!std::isfinite(v)) fail(where, "tensor {}: range [{}, {}] is not finite", excerpt(e.tensor), e.lo, e.hi);
      if (std::fabs(v) >= kF32Overflow) fail(where, "tensor {}: {} is outside the f32 range", excerpt(e.tensor), v);
    }
    if (e.lo > e.hi) fail(where, "tensor {}: inverted range [{}, {}]", excerpt(e.tensor), e.lo, e.hi);
    out += fmt::format("{} {} {:.9g} {:.9g}\n", e.tensor, spec.text(), e.lo, e.hi);
  }
  return out;
}

}  // namespace

const CalibEntry* CalibTable::find(const std::string& tensor) const {
  for (const CalibEntry& e : entries) {
    if (e.tensor == tensor) return &e;
  }
  return nullptr;
}

std::string format_calib(const CalibTable& t) { return format_table(t, ""); }

void write_calib(const CalibTable& t, const std::string& path) { write_file_atomic(path, format_table(t, path)); }

CalibTable parse_calib(const std::string& text, const std::string& path) {
  CalibTable table;
  std::unordered_map<std::string, int64_t> first_line;
  std::string_view rest = text;
  int64_t line_no = 0;
  std::vector<std::string_view> fields;
  while (!rest.empty()) {
    ++line_no;
    const size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);

    size_t start = 0;
    while (start < line.size() && is_space(line[start])) ++start;
    if (start == line.size()) continue;
    if (line[start] == '#') {
      std::string_view c = line.substr(start + 1);
      if (!c.empty() && c[0] == ' ') c.remove_prefix(1);
      table.comments.emplace_back(c);
      continue;
    }

    const std::string where = fmt::format("{}:{}", path, line_no);
    fields.clear();
    for (size_t i = start; i < line.size();) {
      if (is_space(line[i])) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < line.size() && !is_space(line[j])) ++j;
      fields.push_back(line.substr(i, j - i));
      i = j;
    }
    if (fields.size() != 4) {
      fail(where, "expected {}, got {} field{}", kLineForm, fields.size(), fields.size() == 1 ? "" : "s");
    }

    CalibEntry e;
    e.tensor = std::string(fields[0]);
    try {
      e.method = CalibSpec::parse(std::string(fields[1])).text();
    } catch (const Error& err) {
      fail(where, "{}", err.problem());
    }
    const auto number = [&](std::string_view tok, const char* name) {
      std::string_view digits = tok;
      if (digits.size() > 1 && digits[0] == '+' && digits[1] != '-' && digits[1] != '+') digits.remove_prefix(1);
      double v = 0;
      const char* end = digits.data() + digits.size();
      const auto [p, ec] = std::from_chars(digits.data(), end, v);
      if (p != end || (ec != std::errc() && ec != std::errc::result_out_of_range)) {
        fail(where, "{} {} of tensor {} is not a number", name, excerpt(tok), excerpt(e.tensor));
      }
      if (ec == std::errc() && !std::isfinite(v)) {
        fail(where, "{} of tensor {} is not finite: {}", name, excerpt(e.tensor), excerpt(tok));
      }
      if (ec != std::errc() || std::fabs(v) >= kF32Overflow) {
        fail(where, "{} {} of tensor {} is outside the f32 range", name, excerpt(tok), excerpt(e.tensor));
      }
      return static_cast<double>(static_cast<float>(v));
    };
    e.lo = number(fields[2], "lo");
    e.hi = number(fields[3], "hi");
    if (e.lo > e.hi) fail(where, "inverted range for tensor {}: lo {} > hi {}", excerpt(e.tensor), e.lo, e.hi);
    const auto [it, inserted] = first_line.emplace(e.tensor, line_no);
    if (!inserted) fail(where, "duplicate tensor {} (first given on line {})", excerpt(e.tensor), it->second);
    table.entries.push_back(std::move(e));
  }
  return table;
}

CalibTable read_calib(const std::string& path) { return parse_calib(read_file(path), path); }

double fp8_activation_scale(const CalibEntry& e) {
  return static_cast<float>(std::max(std::abs(e.lo), std::abs(e.hi)) / 448.0);
}

}  // namespace nibble::quant
