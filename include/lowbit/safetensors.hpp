// Checkpoint files in the safetensors format
// (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
// length, a JSON header, then the raw little-endian tensor bytes. PyTorch and
// Hugging Face tools read them. lowbit adds a CRC-32 of the whole file to the
// metadata so that any truncation or bit flip is detected on load.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lowbit::safetensors {

enum class DType { F32, F64, I32, I64, U8, U32 };

struct Tensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> data;  ///< exactly product(shape) · dtype size bytes
};

struct File {
  std::vector<Tensor> tensors;                 ///< stored in this order
  std::map<std::string, std::string> metadata;  ///< the "__metadata__" entry
};

/// Metadata key of the file checksum (8 lowercase hex digits); save() owns it.
inline constexpr const char* kChecksumKey = "lowbit.crc32";

/// Bytes of one element of `dtype`.
std::size_t dtype_size(DType dtype);

/// Writes `file` atomically: a temporary file in the same directory, fsync,
/// rename over `path`, fsync of the directory. On any failure `path` is left
/// as it was and lowbit::Error is thrown. Tensor names must be unique and
/// non-empty, and data sizes must match their shapes.
void save(const std::string& path, const File& file);

/// Reads and verifies a file written by save(): header structure, dtypes,
/// shapes, offsets that tile the data exactly, and the checksum. Any problem
/// throws lowbit::Error naming the file and what is wrong.
File load(const std::string& path);

}  // namespace lowbit::safetensors
