// The model directory format of the seed system: one text file per layer, raw tensors in npdata/.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nibble/tensor.h"

namespace nibble {

// One `key=value` line of a layer file, or a tensor declaration with its data.
struct LayerField {
  std::string key;
  std::string value;     // raw text after '='; for a tensor "dtype,ndims:d1 d2 ..."
  bool is_tensor = false;
  std::string data_ref;  // tensors: the text after '!' on the next line ("model/npdata/conv1.bias")
  Tensor tensor;         // tensors: the data (4-bit types packed as in the file)
  int line = 0;          // 1-based line of the `key=value` line in the file read; 0 if built in memory
};

// The declaration text of a tensor field for `t`: "s4,4:64 64 1 1". The writer checks that a
// tensor field's value matches its tensor, so code that builds a model sets value from this.
std::string tensor_value(const Tensor& t);

// One layer file. Fields keep their order so that writing reproduces the file exactly.
struct LayerFile {
  std::string name;  // file name: the module path with '.' -> '_' ("layer1_0_conv1"), "model" for the root
  std::string type;  // first line: "Conv2d", "Quantize", ...
  std::vector<LayerField> fields;
  std::string eol = "\r\n";  // the line ending the file uses
  bool final_eol = true;     // whether the last line ends with `eol` (the writer reproduces either)
  std::string path;          // the file it was read from, for error messages; empty if built in memory

  const LayerField* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }
  // Typed reads; each throws nibble::Error naming the file and key when the value is
  // missing or malformed.
  int64_t get_int(const std::string& key) const;
  bool get_bool(const std::string& key) const;  // "True" / "False"
  std::vector<int64_t> get_tuple(const std::string& key) const;  // "2:7 7" -> {7, 7}; "3" -> {3}
  const std::string& get_string(const std::string& key) const;
  const Tensor& get_tensor(const std::string& key) const;
};

// A whole model directory.
struct ModelDir {
  std::string path;  // the directory it was read from
  std::map<std::string, LayerFile> layers;  // by file name

  const LayerFile& layer(const std::string& name) const;  // throws nibble::Error if absent
  bool has_layer(const std::string& name) const { return layers.count(name) != 0; }
};

// Parses `compute_mode` strings such as "u4s4s32", "u31u16u4" or "s32f32f32" into their types
// (each "s"/"u"/"f" + bit count). Throws nibble::Error naming `where` when malformed.
struct NumberType {
  char kind;  // 's', 'u' or 'f'
  int bits;
  bool operator==(const NumberType&) const = default;
};
std::vector<NumberType> parse_compute_mode(const std::string& mode, const std::string& where);

// A list of layer names as GraphQuantized models store it: "a,b,c" -> {a, b, c} ("" -> {""}).
std::vector<std::string> split_name_list(const std::string& value);

// Reads every layer file of the directory and the tensors they reference. Tensor paths are
// "<dir name>/npdata/<file>", relative to the directory's parent; the directory's own name
// may differ from the recorded one (a renamed copy still loads). Errors name the file (and
// line): malformed text, a missing npdata file, a size that does not match the declared
// shape, an unknown dtype.
ModelDir read_model_dir(const std::string& path);

// Writes the model to `path` (which must not exist) through a temporary directory renamed
// into place. A model read from disk is reproduced byte for byte.
void write_model_dir(const ModelDir& model, const std::string& path);

}  // namespace nibble
