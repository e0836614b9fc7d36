// Checkpoint files in the safetensors format
// (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
// length, a JSON header, then the raw little-endian tensor bytes. PyTorch and
// Hugging Face tools read them. lowbit adds a CRC-32 of the whole file to the
// metadata so that any truncation or bit flip is detected on load.
//
// Files written here are ordinary safetensors files: the header is compact
// JSON whose first entry is "__metadata__" with the checksum as its first
// key, padded with spaces so the data starts at a multiple of 8 bytes, and
// the tensors follow back to back in the order given.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lowbit::safetensors {

/// Element types, named in the file as "F32", "F64", "I32", "I64", "U8", "U32".
enum class DType { F32, F64, I32, I64, U8, U32 };

/// One named tensor. The shape [] is a scalar (one element); a shape with a
/// zero dimension is an empty tensor (no data bytes), as in PyTorch.
struct Tensor {
  std::string name;  ///< non-empty, unique in its file, not "__metadata__"
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;  ///< dimensions >= 0
  /// The elements in row-major order, little-endian: exactly
  /// product(shape) · dtype_size(dtype) bytes.
  std::vector<std::uint8_t> data;
};

struct File {
  /// save() writes the data in this order; load() returns the tensors in the
  /// order of their data in the file, so a save/load round trip keeps it.
  std::vector<Tensor> tensors;
  /// The "__metadata__" entry (UTF-8 strings). load() includes kChecksumKey.
  std::map<std::string, std::string> metadata;
};

/// Metadata key of the file checksum, owned by save(): 8 lowercase hex digits
/// of the CRC-32 (zlib's) of the whole file as written, computed with these
/// 8 digits read as "00000000".
inline constexpr const char* kChecksumKey = "lowbit.crc32";

/// Bytes of one element of `dtype`.
std::size_t dtype_size(DType dtype);

/// Writes `file` atomically: a temporary file `path`.tmp.<pid>.<n> in the same
/// directory, fsync, rename over `path`, fsync of the directory. Any failure
/// throws lowbit::Error with the path and the system's reason; the temporary
/// file is removed and, unless only the final directory fsync failed, `path`
/// is left as it was. A symbolic link is followed and kept (its target is
/// replaced); a FIFO or a device (/dev/null, /dev/stdout) is written into,
/// not replaced. Temporary files of `path` whose writer no longer runs are
/// removed. Invalid input (see Tensor; metadata that already holds
/// kChecksumKey; names or metadata that are not UTF-8) throws before any file
/// is created.
void save(const std::string& path, const File& file);

/// Reads the whole file and verifies it: the header length, then the
/// checksum (which must be where save() writes it, so a damaged file reads as
/// "truncated" or "corrupted" rather than as whatever its header now says),
/// then the header: JSON with no repeated keys, known dtypes, shapes, and
/// offsets that tile the data section exactly with no trailing bytes. Any
/// problem throws lowbit::Error naming the file and what is wrong.
/// Safetensors files from other writers lack the checksum and are rejected.
File load(const std::string& path);

}  // namespace lowbit::safetensors
