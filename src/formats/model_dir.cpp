// Reads and writes the seed system's model directory: one text file per layer plus raw tensors in npdata/.
#include "nibble/model_dir.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string_view>

#include "nibble/error.h"
#include "nibble/file_util.h"

namespace nibble {

namespace fs = std::filesystem;

namespace {

// Every layer type the format knows. One table so that new precisions add their layers here only.
constexpr auto kLayerTypes = std::to_array<std::string_view>({
    "ResNetQuantized",
    "Conv2d",
    "ReLU",
    "Quantize",
    "MaxPool2d",
    "AvgPool2d",
    "Linear",
    "Scale",
    "Sequential",
    "BottleneckQuantized",
    // nibble's extensions (docs/model-format.md): any graph, float layers, float <-> integer.
    "GraphQuantized",
    "QuantizeFloat",
    "Dequantize",
    "Add",
    "Op",
});

// Beyond this a declared shape is surely corrupt; checking first keeps the element count from overflowing.
constexpr int64_t kMaxElements = int64_t{1} << 48;

bool is_known_type(std::string_view t) {
  return std::find(kLayerTypes.begin(), kLayerTypes.end(), t) != kLayerTypes.end();
}


std::string at_line(const std::string& file, int line) { return fmt::format("{}:{}", file, line); }

std::optional<int64_t> parse_int(std::string_view s) {
  int64_t v = 0;
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, v);
  if (s.empty() || ec != std::errc() || p != end) return std::nullopt;
  return v;
}

// Parses "ndims:v1 v2 ..." (or a bare integer when `allow_plain`) into `out`. Returns an empty string on
// success, otherwise the problem.
std::string parse_tuple(std::string_view s, bool allow_plain, std::vector<int64_t>& out) {
  out.clear();
  const size_t colon = s.find(':');
  if (colon == std::string_view::npos) {
    if (allow_plain) {
      if (auto v = parse_int(s)) {
        out.push_back(*v);
        return {};
      }
    }
    return fmt::format("expected a tuple 'ndims:v1 v2 ...', got {}", excerpt(s));
  }
  const auto n = parse_int(s.substr(0, colon));
  if (!n || *n < 0)
    return fmt::format("bad tuple {}: the count before ':' must be an integer >= 0", excerpt(s));
  std::string_view rest = s.substr(colon + 1);
  while (!rest.empty()) {
    const size_t sp = rest.find(' ');
    const std::string_view tok = rest.substr(0, sp);
    rest = sp == std::string_view::npos ? std::string_view{} : rest.substr(sp + 1);
    if (tok.empty()) continue;
    const auto v = parse_int(tok);
    if (!v) return fmt::format("bad tuple {}: {} is not an integer", excerpt(s), excerpt(tok));
    out.push_back(*v);
  }
  if (static_cast<int64_t>(out.size()) != *n) {
    return fmt::format("bad tuple {}: declares {} values but holds {}", excerpt(s), *n, out.size());
  }
  return {};
}

// A tuple value starts with its count and a ':'; checking those at load time reports a bad one with its line.
bool looks_like_tuple(std::string_view v) {
  size_t i = 0;
  while (i < v.size() && v[i] >= '0' && v[i] <= '9') ++i;
  return i > 0 && i < v.size() && v[i] == ':';
}

// A tensor declaration is "<type>,<ndims>:<dims>"; recognising the shape (not just the type) lets an
// unknown type be reported as such instead of being taken for a plain string.
bool looks_like_tensor(std::string_view v) {
  const size_t comma = v.find(',');
  if (comma == std::string_view::npos || comma == 0) return false;
  for (char c : v.substr(0, comma)) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) return false;
  }
  return looks_like_tuple(v.substr(comma + 1));
}

std::string known_dtypes() {
  std::vector<std::string_view> names;
  for (int i = 0; i < kDTypeCount; ++i) names.push_back(dtype_name(static_cast<DType>(i)));
  return fmt::format("{}", fmt::join(names, " "));
}

struct TensorDecl {
  DType dtype;
  Shape shape;
};

// Parses a tensor declaration; fails at `where` when it is malformed.
TensorDecl parse_tensor_decl(const std::string& key, std::string_view value, const std::string& where) {
  const size_t comma = value.find(',');
  if (comma == std::string_view::npos) {
    fail(where, "tensor '{}': expected 'dtype,ndims:d1 d2 ...', got {}", key, excerpt(value));
  }
  const std::string_view type_text = value.substr(0, comma);
  const auto dtype = dtype_from_name(type_text);
  if (!dtype)
    fail(where, "tensor '{}': unknown dtype {} (known: {})", key, excerpt(type_text), known_dtypes());
  TensorDecl d{*dtype, {}};
  const std::string problem = parse_tuple(value.substr(comma + 1), false, d.shape);
  if (!problem.empty()) fail(where, "tensor '{}': {}", key, problem);
  int64_t numel = 1;
  for (int64_t dim : d.shape) {
    if (dim < 0) fail(where, "tensor '{}': negative dimension in {}", key, excerpt(value));
    if (dim != 0 && numel > kMaxElements / dim)
      fail(where, "tensor '{}': shape {} is too large", key, excerpt(value));
    numel *= dim;
  }
  return d;
}

// Checks a field's value the way the reader will see it, so that the writer never produces a file the
// reader rejects.
void check_plain_value(const std::string& key, std::string_view value, const std::string& where) {
  if (looks_like_tensor(value)) {
    fail(where, "'{}' looks like a tensor declaration but has no '!<path>' line after it", key);
  }
  if (looks_like_tuple(value)) {
    std::vector<int64_t> unused;
    const std::string problem = parse_tuple(value, false, unused);
    if (!problem.empty()) fail(where, "'{}': {}", key, problem);
  }
}

// The path of a tensor's data inside the model directory: the data reference without its first component
// (the directory's recorded name). Refuses anything that could reach outside the directory.
fs::path data_path_in_dir(const std::string& ref, const std::string& where) {
  const fs::path p(ref);
  if (ref.empty() || p.is_absolute() || p.has_root_name()) {
    fail(where, "data path {} must be relative, like 'model/npdata/conv1.bias'", excerpt(ref));
  }
  fs::path rest;
  int count = 0;
  for (const fs::path& part : p) {
    const std::string s = part.string();
    if (s.empty() || s == "." || s == "..") {
      fail(where, "data path {} may not contain empty, '.' or '..' components", excerpt(ref));
    }
    if (count++ > 0) rest /= part;
  }
  if (count < 2)
    fail(where, "data path {} needs the model name then a file, like 'model/npdata/x'", excerpt(ref));
  return rest;
}

// Refuses `file` when it resolves (through symbolic links) to a place outside `root`: the
// path checks of the data references are only lexical.
void check_inside(const fs::path& root, const fs::path& file, const std::string& where) {
  std::error_code ec;
  const fs::path r = fs::canonical(root, ec);
  if (ec) fail(root.string(), "cannot resolve the directory: {}", ec.message());
  const fs::path f = fs::canonical(file, ec);
  if (ec) fail(where, "cannot resolve the path: {}", ec.message());
  auto ri = r.begin(), fi = f.begin();
  for (; ri != r.end(); ++ri, ++fi) {
    if (fi == f.end() || *ri != *fi) fail(where, "is a link to {}, outside the model directory", excerpt(f.string()));
  }
}

Tensor load_tensor(const fs::path& root, const fs::path& file, const TensorDecl& decl, const std::string& key,
                   const std::string& ref_where) {
  const std::string where = file.string();
  std::error_code ec;
  const auto st = fs::status(file, ec);
  if (!fs::exists(st)) fail(where, "no such file (the data of tensor '{}' declared at {})", key, ref_where);
  if (!fs::is_regular_file(st))
    fail(where, "not a regular file (the data of tensor '{}' declared at {})", key, ref_where);
  check_inside(root, file, where);
  const uintmax_t size = fs::file_size(file, ec);
  if (ec) fail(where, "cannot read its size: {}", ec.message());
  const size_t need = dtype_storage_bytes(decl.dtype, checked_numel(decl.shape, where));
  if (size != need) {
    fail(where, "holds {} bytes but {} {} needs {}", size, dtype_name(decl.dtype), shape_str(decl.shape),
         need);
  }
  Tensor t(decl.dtype, decl.shape);
  if (need == 0) return t;
  std::ifstream f(file, std::ios::binary);
  if (!f) fail(where, "cannot open file: {}", std::strerror(errno));
  f.read(reinterpret_cast<char*>(t.bytes()), static_cast<std::streamsize>(need));
  if (f.gcount() != static_cast<std::streamsize>(need))
    fail(where, "read error (file changed while reading?)");
  return t;
}

LayerFile read_layer_file(const fs::path& dir, const std::string& name) {
  LayerFile layer;
  layer.name = name;
  layer.path = (dir / name).string();
  const std::string& file = layer.path;
  check_inside(dir, dir / name, file);
  const std::string text = read_file(file);
  if (text.empty()) fail(file, "empty file, expected the layer type on line 1");

  // The first line ending decides the file's style; a line ending the other way is accepted and written
  // back in the file's style, as editors that mix the two are common.
  const size_t first_nl = text.find('\n');
  layer.eol = (first_nl != std::string::npos && first_nl > 0 && text[first_nl - 1] == '\r') ? "\r\n" : "\n";
  layer.final_eol = text.back() == '\n';
  std::vector<std::string_view> lines;
  const std::string_view all(text);
  size_t start = 0;
  while (start < all.size()) {
    size_t nl = all.find('\n', start);
    if (nl == std::string_view::npos) nl = all.size();
    std::string_view line = all.substr(start, nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    start = nl + 1;
  }

  for (size_t i = 0; i < lines.size(); ++i) {
    // A '\r' inside a line would be taken for a line break by other readers of the format.
    if (lines[i].find('\r') != std::string_view::npos) {
      fail(at_line(file, static_cast<int>(i) + 1), "stray carriage return in {}", excerpt(lines[i]));
    }
  }
  layer.type = std::string(lines[0]);
  if (!is_known_type(layer.type)) {
    fail(at_line(file, 1), "unknown layer type {} (known: {})", excerpt(layer.type),
         fmt::join(kLayerTypes, " "));
  }

  std::map<std::string, int, std::less<>> seen;
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::string_view line = lines[i];
    const int lineno = static_cast<int>(i) + 1;
    const std::string where = at_line(file, lineno);
    if (!line.empty() && line[0] == '!') {
      fail(where, "data line {} has no tensor declaration on the line before", excerpt(line));
    }
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos) fail(where, "expected 'key=value', got {}", excerpt(line));
    LayerField field;
    field.key = std::string(line.substr(0, eq));
    field.value = std::string(line.substr(eq + 1));
    field.line = lineno;
    if (field.key.empty()) fail(where, "empty key in {}", excerpt(line));
    if (auto [it, inserted] = seen.emplace(field.key, lineno); !inserted) {
      fail(where, "duplicate key '{}' (first on line {})", field.key, it->second);
    }
    const bool next_is_ref = i + 1 < lines.size() && !lines[i + 1].empty() && lines[i + 1][0] == '!';
    if (next_is_ref || looks_like_tensor(field.value)) {
      const TensorDecl decl = parse_tensor_decl(field.key, field.value, where);
      if (!next_is_ref) {
        fail(where, "tensor '{}' must be followed by a line '!<path of its data>'", field.key);
      }
      field.is_tensor = true;
      field.data_ref = std::string(lines[i + 1].substr(1));
      ++i;
      const std::string ref_where = at_line(file, lineno + 1);
      const fs::path rel = data_path_in_dir(field.data_ref, ref_where);
      field.tensor = load_tensor(dir, dir / rel, decl, field.key, ref_where);
    } else {
      check_plain_value(field.key, field.value, where);
    }
    layer.fields.push_back(std::move(field));
  }
  return layer;
}

void write_bytes(const fs::path& file, const void* data, size_t n) {
  std::ofstream f(file, std::ios::binary | std::ios::trunc);
  if (!f) fail(file.string(), "cannot create file: {}", std::strerror(errno));
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  f.flush();
  if (!f) fail(file.string(), "write failed: {}", std::strerror(errno));
}

bool has_line_break(std::string_view s) { return s.find_first_of("\r\n") != std::string_view::npos; }

// Checks everything the reader would reject before anything is written, and returns the text of the layer
// file. `where` names the layer for messages.
std::string layer_text(const std::string& key, const LayerFile& layer, const std::string& where) {
  if (!layer.name.empty() && layer.name != key) {
    fail(where, "is stored under the name '{}' but calls itself '{}'", key, layer.name);
  }
  if (key.empty() || key == "." || key == ".." || key[0] == '.' || key.find('/') != std::string::npos ||
      key.find('\\') != std::string::npos || key.find('\0') != std::string::npos || has_line_break(key)) {
    fail(where, "layer name {} is not a plain file name", excerpt(key));
  }
  if (!is_known_type(layer.type)) fail(where, "unknown layer type {}", excerpt(layer.type));
  if (layer.eol != "\r\n" && layer.eol != "\n") fail(where, "line ending must be \\r\\n or \\n");
  std::string text = layer.type + layer.eol;
  std::set<std::string, std::less<>> keys;
  for (const LayerField& f : layer.fields) {
    const std::string fwhere = fmt::format("{} ({})", where, f.key);
    if (f.key.empty() || f.key[0] == '!' || f.key.find('=') != std::string::npos || has_line_break(f.key)) {
      fail(where, "bad key {}", excerpt(f.key));
    }
    if (!keys.insert(f.key).second) fail(where, "duplicate key '{}'", f.key);
    if (has_line_break(f.value)) fail(fwhere, "value contains a line break");
    text += f.key + "=" + f.value + layer.eol;
    if (!f.is_tensor) {
      check_plain_value(f.key, f.value, where);
      continue;
    }
    const TensorDecl decl = parse_tensor_decl(f.key, f.value, where);
    if (!f.tensor.defined() && shape_numel(decl.shape) != 0) fail(fwhere, "tensor has no data");
    if (decl.dtype != f.tensor.dtype() || decl.shape != f.tensor.shape()) {
      fail(fwhere, "declared as {} but the tensor is {}", excerpt(f.value), tensor_value(f.tensor));
    }
    if (has_line_break(f.data_ref)) fail(fwhere, "data path contains a line break");
    text += "!" + f.data_ref + layer.eol;
  }
  if (!layer.final_eol) text.resize(text.size() - layer.eol.size());
  return text;
}

}  // namespace

std::string tensor_value(const Tensor& t) {
  return fmt::format("{},{}:{}", dtype_name(t.dtype()), t.rank(), fmt::join(t.shape(), " "));
}

// --- LayerFile ---------------------------------------------------------------------------------------

namespace {

std::string field_where(const LayerFile& layer, const LayerField* f) {
  const std::string& file = layer.path.empty() ? layer.name : layer.path;
  return f != nullptr && f->line > 0 ? at_line(file, f->line) : file;
}

const LayerField& need_field(const LayerFile& layer, const std::string& key) {
  const LayerField* f = layer.find(key);
  if (f == nullptr) fail(field_where(layer, nullptr), "{} layer has no '{}'", layer.type, key);
  return *f;
}

}  // namespace

const LayerField* LayerFile::find(const std::string& key) const {
  for (const LayerField& f : fields) {
    if (f.key == key) return &f;
  }
  return nullptr;
}

int64_t LayerFile::get_int(const std::string& key) const {
  const LayerField& f = need_field(*this, key);
  const auto v = parse_int(f.value);
  if (!v) fail(field_where(*this, &f), "'{}': expected an integer, got {}", key, excerpt(f.value));
  return *v;
}

bool LayerFile::get_bool(const std::string& key) const {
  const LayerField& f = need_field(*this, key);
  if (f.value == "True") return true;
  if (f.value == "False") return false;
  fail(field_where(*this, &f), "'{}': expected True or False, got {}", key, excerpt(f.value));
}

std::vector<int64_t> LayerFile::get_tuple(const std::string& key) const {
  const LayerField& f = need_field(*this, key);
  std::vector<int64_t> out;
  const std::string problem = parse_tuple(f.value, true, out);
  if (!problem.empty()) fail(field_where(*this, &f), "'{}': {}", key, problem);
  return out;
}

const std::string& LayerFile::get_string(const std::string& key) const {
  return need_field(*this, key).value;
}

const Tensor& LayerFile::get_tensor(const std::string& key) const {
  const LayerField& f = need_field(*this, key);
  if (!f.is_tensor) fail(field_where(*this, &f), "'{}' is not a tensor (value {})", key, excerpt(f.value));
  return f.tensor;
}

std::vector<std::string> split_name_list(const std::string& value) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i <= value.size()) {
    const size_t j = std::min(value.find(',', i), value.size());
    out.push_back(value.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

const LayerFile& ModelDir::layer(const std::string& name) const {
  const auto it = layers.find(name);
  if (it == layers.end()) fail(path, "the model has no layer '{}'", name);
  return it->second;
}

// --- compute_mode ------------------------------------------------------------------------------------

std::vector<NumberType> parse_compute_mode(const std::string& mode, const std::string& where) {
  const auto malformed = [&]() {
    fail(where, "malformed compute_mode {}: expected types such as 'u4s4s32' (s, u or f, then bits)",
         excerpt(mode));
  };
  if (mode.empty()) malformed();
  std::vector<NumberType> out;
  size_t i = 0;
  while (i < mode.size()) {
    const char kind = mode[i];
    if (kind != 's' && kind != 'u' && kind != 'f') malformed();
    size_t j = ++i;
    while (j < mode.size() && mode[j] >= '0' && mode[j] <= '9') ++j;
    const auto bits = parse_int(std::string_view(mode).substr(i, j - i));
    if (!bits || *bits < 1 || *bits > 64) malformed();
    out.push_back({kind, static_cast<int>(*bits)});
    i = j;
  }
  return out;
}

// --- Directory ---------------------------------------------------------------------------------------

ModelDir read_model_dir(const std::string& path) {
  std::error_code ec;
  const fs::path dir(path);
  const auto st = fs::status(dir, ec);
  if (!fs::exists(st)) fail(path, "no such model directory");
  if (!fs::is_directory(st)) fail(path, "not a directory; expected a model directory");
  if (!fs::is_regular_file(dir / "model", ec)) {
    fail(path, "not a model directory: it has no 'model' root layer file");
  }

  // Sorted so that, of several bad files, the same one is always reported.
  std::vector<std::string> names;
  fs::directory_iterator it(dir, ec);
  if (ec) fail(path, "cannot list the directory: {}", ec.message());
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    // Hidden files (editor and OS droppings) are not layers; npdata/ and other folders hold no layers.
    if (name.empty() || name[0] == '.') continue;
    std::error_code ec2;
    if (it->is_regular_file(ec2)) names.push_back(name);
  }
  if (ec) fail(path, "cannot list the directory: {}", ec.message());
  std::sort(names.begin(), names.end());

  ModelDir model;
  model.path = path;
  for (const std::string& name : names) model.layers.emplace(name, read_layer_file(dir, name));
  return model;
}

void write_model_dir(const ModelDir& model, const std::string& path) {
  std::string target = path;
  // "out/" would otherwise put the temporary directory inside the target's name ("out/.tmp.N").
  while (target.size() > 1 && target.back() == '/') target.pop_back();
  if (target.empty()) fail(path, "empty output path");
  std::error_code ec;
  if (fs::exists(fs::symlink_status(target, ec))) fail(path, "already exists; refusing to overwrite it");
  if (!model.has_layer("model")) fail(path, "the model has no 'model' root layer");

  // Everything is checked and rendered before the first byte is written.
  struct Pending {
    fs::path rel;
    const void* data;
    size_t size;
  };
  std::vector<Pending> files;
  std::vector<std::string> texts;
  texts.reserve(model.layers.size());        // `files` points into these strings, so they must not move
  std::map<std::string, std::string> owner;  // relative output path -> what claims it
  for (const auto& [name, layer] : model.layers) {
    const std::string where = fmt::format("{}: layer '{}'", path, name);
    texts.push_back(layer_text(name, layer, where));
    if (!owner.emplace(name, "layer " + name).second) fail(where, "two layers write '{}'", name);
    files.push_back({name, texts.back().data(), texts.back().size()});
    for (const LayerField& f : layer.fields) {
      if (!f.is_tensor) continue;
      const std::string fwhere = fmt::format("{} ({})", where, f.key);
      const fs::path rel = data_path_in_dir(f.data_ref, fwhere);
      const std::string claim = fmt::format("tensor '{}' of layer '{}'", f.key, name);
      if (auto [prev, inserted] = owner.emplace(rel.generic_string(), claim); !inserted) {
        fail(fwhere, "data path {} is also used by {}", excerpt(f.data_ref), prev->second);
      }
      files.push_back({rel, f.tensor.bytes(), f.tensor.nbytes()});
    }
  }
  const fs::path tmp = target + ".tmp." + std::to_string(::getpid());
  // A leftover from an earlier process that had our pid and died mid-write.
  fs::remove_all(tmp, ec);
  TempOutput guard(tmp.string());  // an interrupt removes it
  if (!fs::create_directory(tmp, ec) || ec) {
    fail(path, "cannot create the temporary directory {}: {}", tmp.string(), ec ? ec.message() : "it exists");
  }
  try {
    for (const Pending& p : files) {
      const fs::path out = tmp / p.rel;
      fs::create_directories(out.parent_path());
      write_bytes(out, p.data, p.size);
    }
    fs::rename(tmp, target);
    guard.release();
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(tmp, ec);
    fail(path, "cannot write the model: {}", e.code().message());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace nibble
