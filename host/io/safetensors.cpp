// safetensors reading and writing with a whole-file CRC-32 in the metadata,
// atomic saves and strict loads (DESIGN.md §3 checkpoints, §5).
#include "lowbit/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "io/atomic_file.hpp"
#include "lowbit/error.hpp"

namespace lowbit::safetensors {
namespace {

// Keeps the header's key order, so tensors that share an offset (empty ones)
// come back in the order they were saved.
using Json = nlohmann::ordered_json;

constexpr std::size_t kLengthBytes = 8;
constexpr std::size_t kAlignment = 8;  // data section start, as the Hugging Face writer pads
constexpr std::size_t kChecksumDigits = 8;
// The limit of the Hugging Face reader: a longer header is corruption, and
// reading it would only waste memory.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";

struct DTypeInfo {
  DType dtype;
  const char* name;
  std::size_t bytes;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::F32, "F32", 4}, {DType::F64, "F64", 8}, {DType::I32, "I32", 4},
    {DType::I64, "I64", 8}, {DType::U8, "U8", 1},   {DType::U32, "U32", 4},
};

const DTypeInfo& info(DType dtype) {
  for (const DTypeInfo& entry : kDTypes)
    if (entry.dtype == dtype) return entry;
  throw Error("unknown safetensors dtype " + std::to_string(static_cast<int>(dtype)), __FILE__,
              __LINE__);
}

/// save() writes the checksum as the first metadata entry, so every file it
/// writes starts with this text and the digits sit at a fixed place that
/// load() can find without trusting the rest of the header.
std::string checksum_prefix() {
  return std::string("{\"") + kMetadataKey + "\":{\"" + kChecksumKey + "\":\"";
}

/// Bytes of a tensor of `shape`, or false when the count overflows 64 bits.
/// Dimensions must already be known non-negative.
bool tensor_bytes(const std::vector<std::int64_t>& shape, DType dtype, std::uint64_t* bytes) {
  std::uint64_t total = info(dtype).bytes;
  for (const std::int64_t dim : shape)
    if (__builtin_mul_overflow(total, static_cast<std::uint64_t>(dim), &total)) return false;
  *bytes = total;
  return true;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i)
    text += (i > 0 ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

/// CRC-32 of the concatenated `parts`, with the checksum digits at byte
/// `digits_at` read as '0's.
std::uint32_t file_checksum(const ByteParts& parts, std::size_t digits_at) {
  static const std::string zeros(kChecksumDigits, '0');
  uLong crc = crc32_z(0, nullptr, 0);
  std::size_t position = 0;
  for (const auto& [bytes, size] : parts) {
    const auto* data = static_cast<const Bytef*>(bytes);
    std::size_t done = 0;
    while (done < size) {
      const std::size_t at = position + done;
      if (at >= digits_at && at < digits_at + kChecksumDigits) {
        const std::size_t n = std::min(size - done, digits_at + kChecksumDigits - at);
        crc = crc32_z(crc, reinterpret_cast<const Bytef*>(zeros.data()), n);
        done += n;
      } else {
        const std::size_t limit = at < digits_at ? digits_at - at : size - done;
        const std::size_t n = std::min(size - done, limit);
        crc = crc32_z(crc, data + done, n);
        done += n;
      }
    }
    position += size;
  }
  return static_cast<std::uint32_t>(crc);
}

std::string hex8(std::uint32_t value) {
  char text[kChecksumDigits + 1];
  std::snprintf(text, sizeof text, "%08lx", static_cast<unsigned long>(value));
  return text;
}

// ---------------------------------------------------------------- saving

void check_for_save(const File& file, const std::string& where) {
  LOWBIT_EXPECTS(file.metadata.count(kChecksumKey) == 0,
                 where + "metadata key \"" + kChecksumKey + "\" is reserved for the checksum");
  std::set<std::string> names;
  for (const Tensor& tensor : file.tensors) {
    LOWBIT_EXPECTS(!tensor.name.empty(), where + "a tensor has an empty name");
    LOWBIT_EXPECTS(tensor.name != kMetadataKey,
                   where + "\"" + kMetadataKey + "\" is reserved and cannot name a tensor");
    LOWBIT_EXPECTS(names.insert(tensor.name).second,
                   where + "two tensors are named \"" + tensor.name + "\"");
    const std::string what = where + "tensor \"" + tensor.name + "\" ";
    for (const std::int64_t dim : tensor.shape)
      LOWBIT_EXPECTS(dim >= 0, what + "has a negative dimension in shape " +
                                   shape_text(tensor.shape));
    std::uint64_t bytes = 0;
    LOWBIT_EXPECTS(tensor_bytes(tensor.shape, tensor.dtype, &bytes),
                   what + "shape " + shape_text(tensor.shape) + " overflows 64-bit sizes");
    LOWBIT_EXPECTS(bytes == tensor.data.size(),
                   what + "has " + std::to_string(tensor.data.size()) + " data bytes but shape " +
                       shape_text(tensor.shape) + " of " + info(tensor.dtype).name + " needs " +
                       std::to_string(bytes));
  }
}

/// The JSON header with the checksum digits as "00000000", padded with spaces
/// so that the data section starts at a multiple of kAlignment.
std::string header_text(const File& file, const std::string& where) {
  Json metadata = Json::object();
  metadata[kChecksumKey] = std::string(kChecksumDigits, '0');
  for (const auto& [key, value] : file.metadata) metadata[key] = value;
  Json header = Json::object();
  header[kMetadataKey] = std::move(metadata);
  std::uint64_t offset = 0;
  for (const Tensor& tensor : file.tensors) {
    const std::uint64_t end = offset + tensor.data.size();
    header[tensor.name] = Json::object({{"dtype", info(tensor.dtype).name},
                                        {"shape", tensor.shape},
                                        {"data_offsets", Json::array({offset, end})}});
    offset = end;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const Json::exception& e) {
    throw Error(where + "a tensor name or metadata entry is not valid UTF-8 (" + e.what() + ")",
                __FILE__, __LINE__);
  }
  text.append((kAlignment - (kLengthBytes + text.size()) % kAlignment) % kAlignment, ' ');
  return text;
}

// ---------------------------------------------------------------- loading

std::vector<std::uint8_t> read_file(const std::string& path, const std::string& where) {
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  const int open_error = errno_if(fd.get() < 0);
  LOWBIT_EXPECTS(open_error == 0, where + "cannot open: " + errno_text(open_error));
  struct stat status {};
  const int stat_error = errno_if(::fstat(fd.get(), &status) != 0);
  LOWBIT_EXPECTS(stat_error == 0, where + "cannot stat: " + errno_text(stat_error));
  LOWBIT_EXPECTS(S_ISREG(status.st_mode), where + "not a regular file");
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(status.st_size));
  std::size_t size = 0;
  for (;;) {
    if (size == bytes.size()) bytes.resize(size + 4096);  // the file grew since fstat
    const ssize_t got = ::read(fd.get(), bytes.data() + size, bytes.size() - size);
    const int error = errno_if(got < 0);
    if (error == EINTR) continue;
    LOWBIT_EXPECTS(error == 0, where + "read failed: " + errno_text(error));
    if (got == 0) break;
    size += static_cast<std::size_t>(got);
  }
  bytes.resize(size);
  return bytes;
}

/// Parses the header, rejecting repeated keys in any object (a reader that
/// kept the first and one that kept the last would disagree).
Json parse_header(const std::string& text, const std::string& where) {
  std::vector<std::set<std::string>> open_objects;
  std::string repeated;
  const Json::parser_callback_t note_keys = [&](int, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) open_objects.emplace_back();
    if (event == Json::parse_event_t::object_end) open_objects.pop_back();
    if (event == Json::parse_event_t::key && repeated.empty() &&
        !open_objects.back().insert(parsed.get<std::string>()).second)
      repeated = parsed.get<std::string>();
    return true;
  };
  Json header;
  try {
    header = Json::parse(text, note_keys);
  } catch (const Json::exception& e) {
    throw Error(where + "header is not valid JSON: " + e.what(), __FILE__, __LINE__);
  }
  LOWBIT_EXPECTS(repeated.empty(), where + "header repeats the key \"" + repeated + "\"");
  LOWBIT_EXPECTS(header.is_object(), where + "header is not a JSON object");
  return header;
}

/// A JSON integer in [0, 2^63), or false.
bool non_negative(const Json& value, std::uint64_t* out) {
  if (!value.is_number_unsigned()) return false;
  *out = value.get<std::uint64_t>();
  return *out <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
}

struct Entry {
  Tensor tensor;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

Entry parse_entry(const std::string& name, const Json& value, const std::string& where) {
  const std::string what = where + "tensor \"" + name + "\": ";
  LOWBIT_EXPECTS(!name.empty(), where + "a tensor has an empty name");
  LOWBIT_EXPECTS(value.is_object(), what + "entry is not a JSON object");
  for (const auto& field : value.items())
    LOWBIT_EXPECTS(field.key() == "dtype" || field.key() == "shape" ||
                       field.key() == "data_offsets",
                   what + "unknown field \"" + field.key() + "\"");
  Entry entry;
  entry.tensor.name = name;

  LOWBIT_EXPECTS(value.contains("dtype") && value["dtype"].is_string(),
                 what + "missing or non-string \"dtype\"");
  const std::string dtype = value["dtype"].get<std::string>();
  const auto known = std::find_if(std::begin(kDTypes), std::end(kDTypes),
                                  [&](const DTypeInfo& d) { return dtype == d.name; });
  LOWBIT_EXPECTS(known != std::end(kDTypes), what + "unsupported dtype \"" + dtype +
                                                 "\" (F32, F64, I32, I64, U8, U32 are)");
  entry.tensor.dtype = known->dtype;

  LOWBIT_EXPECTS(value.contains("shape") && value["shape"].is_array(),
                 what + "missing or non-array \"shape\"");
  for (const Json& dim : value["shape"]) {
    std::uint64_t size = 0;
    LOWBIT_EXPECTS(non_negative(dim, &size),
                   what + "shape " + value["shape"].dump() + " has a dimension that is not an "
                       "integer in [0, 2^63)");
    entry.tensor.shape.push_back(static_cast<std::int64_t>(size));
  }
  std::uint64_t bytes = 0;
  LOWBIT_EXPECTS(tensor_bytes(entry.tensor.shape, entry.tensor.dtype, &bytes),
                 what + "shape " + shape_text(entry.tensor.shape) + " overflows 64-bit sizes");

  const Json* offsets = value.contains("data_offsets") ? &value["data_offsets"] : nullptr;
  LOWBIT_EXPECTS(offsets != nullptr && offsets->is_array() && offsets->size() == 2 &&
                     non_negative((*offsets)[0], &entry.begin) &&
                     non_negative((*offsets)[1], &entry.end) && entry.begin <= entry.end,
                 what + "\"data_offsets\" is not [begin, end] with 0 <= begin <= end");
  LOWBIT_EXPECTS(entry.end - entry.begin == bytes,
                 what + "data_offsets " + offsets->dump() + " span " +
                     std::to_string(entry.end - entry.begin) + " bytes but shape " +
                     shape_text(entry.tensor.shape) + " of " + dtype + " needs " +
                     std::to_string(bytes));
  return entry;
}

std::map<std::string, std::string> parse_metadata(const Json& value, const std::string& where) {
  LOWBIT_EXPECTS(value.is_object(), where + "\"" + kMetadataKey + "\" is not a JSON object");
  std::map<std::string, std::string> metadata;
  for (const auto& item : value.items()) {
    LOWBIT_EXPECTS(item.value().is_string(),
                   where + "metadata entry \"" + item.key() + "\" is not a string");
    metadata[item.key()] = item.value().get<std::string>();
  }
  return metadata;
}

/// Sorts entries into data order and checks that they tile [0, data_bytes).
void check_tiling(std::vector<Entry>& entries, std::uint64_t data_bytes,
                  const std::string& where) {
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  std::uint64_t cursor = 0;
  for (const Entry& entry : entries) {
    const std::string what = where + "tensor \"" + entry.tensor.name + "\" at data_offsets [" +
                             std::to_string(entry.begin) + ", " + std::to_string(entry.end) +
                             "] ";
    LOWBIT_EXPECTS(entry.begin >= cursor, what + "overlaps the data before it, which ends at " +
                                              std::to_string(cursor));
    LOWBIT_EXPECTS(entry.begin == cursor,
                   what + "leaves a gap after the data before it, which ends at " +
                       std::to_string(cursor));
    cursor = entry.end;
  }
  LOWBIT_EXPECTS(cursor <= data_bytes, where + "truncated: the tensors need " +
                                           std::to_string(cursor) + " data bytes, file has " +
                                           std::to_string(data_bytes));
  LOWBIT_EXPECTS(cursor == data_bytes, where + std::to_string(data_bytes - cursor) +
                                           " trailing bytes after the last tensor");
}

/// The data bytes that the header's tensors claim, or 0 when the header does
/// not say; only used to tell a file cut short from one otherwise corrupted.
std::uint64_t claimed_data_bytes(const std::string& header) {
  const Json json = Json::parse(header, nullptr, /*allow_exceptions=*/false);
  std::uint64_t end = 0;
  if (!json.is_object()) return end;
  for (const auto& item : json.items()) {
    const Json& entry = item.value();
    if (!entry.is_object() || !entry.contains("data_offsets")) continue;
    const Json& offsets = entry["data_offsets"];
    if (offsets.is_array() && offsets.size() == 2 && offsets[1].is_number_unsigned())
      end = std::max(end, offsets[1].get<std::uint64_t>());
  }
  return end;
}

/// Checked before the header is interpreted, so that a corrupted file is
/// reported as such rather than as whatever its damaged header says.
void check_checksum(const std::vector<std::uint8_t>& bytes, const std::string& header,
                    std::uint64_t data_bytes, const std::string& where) {
  const std::string prefix = checksum_prefix();
  LOWBIT_EXPECTS(header.compare(0, prefix.size(), prefix) == 0,
                 where + "no \"" + kChecksumKey + "\" checksum first in \"" + kMetadataKey +
                     "\", where save() writes it (not a lowbit checkpoint, or rewritten by "
                     "another tool)");
  const std::string digits = header.substr(prefix.size(), kChecksumDigits);
  LOWBIT_EXPECTS(digits.size() == kChecksumDigits &&
                     digits.find_first_not_of("0123456789abcdef") == std::string::npos &&
                     header.size() > prefix.size() + kChecksumDigits &&
                     header[prefix.size() + kChecksumDigits] == '"',
                 where + "checksum \"" + digits + "...\" is not 8 lowercase hex digits");
  const std::string computed =
      hex8(file_checksum({{bytes.data(), bytes.size()}}, kLengthBytes + prefix.size()));
  if (computed == digits) return;
  const std::uint64_t claimed = claimed_data_bytes(header);
  LOWBIT_EXPECTS(claimed <= data_bytes, where + "checksum mismatch (file is truncated: the "
                                            "tensors need " + std::to_string(claimed) +
                                            " data bytes, file has " +
                                            std::to_string(data_bytes) + ")");
  throw Error(where + "checksum mismatch (file is corrupted): stored " + digits + ", computed " +
                  computed,
              __FILE__, __LINE__);
}

}  // namespace

std::size_t dtype_size(DType dtype) { return info(dtype).bytes; }

void save(const std::string& path, const File& file) {
  const std::string where = path + ": ";
  check_for_save(file, where);
  std::string header = header_text(file, where);

  std::uint8_t length[kLengthBytes];
  for (std::size_t i = 0; i < kLengthBytes; ++i)
    length[i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(header.size()) >> (8 * i));
  ByteParts parts = {{length, kLengthBytes}, {header.data(), header.size()}};
  for (const Tensor& tensor : file.tensors) parts.emplace_back(tensor.data.data(), tensor.data.size());
  const std::size_t digits_at = checksum_prefix().size();
  header.replace(digits_at, kChecksumDigits, hex8(file_checksum(parts, kLengthBytes + digits_at)));

  write_file(path, parts);
}

File load(const std::string& path) {
  const std::string where = path + ": ";
  const std::vector<std::uint8_t> bytes = read_file(path, where);
  LOWBIT_EXPECTS(bytes.size() >= kLengthBytes,
                 where + "truncated: " + std::to_string(bytes.size()) +
                     " bytes, too short for the 8-byte header length");
  std::uint64_t header_bytes = 0;
  for (std::size_t i = 0; i < kLengthBytes; ++i)
    header_bytes |= std::uint64_t{bytes[i]} << (8 * i);
  LOWBIT_EXPECTS(header_bytes <= kMaxHeaderBytes,
                 where + "header length " + std::to_string(header_bytes) + " is over the " +
                     std::to_string(kMaxHeaderBytes) +
                     "-byte limit (corrupted, or not a safetensors file)");
  const std::uint64_t after_length = bytes.size() - kLengthBytes;
  LOWBIT_EXPECTS(header_bytes <= after_length,
                 where + "truncated: header says " + std::to_string(header_bytes) +
                     " bytes, file has " + std::to_string(after_length) + " after the length");
  const std::string header(reinterpret_cast<const char*>(bytes.data()) + kLengthBytes,
                           header_bytes);
  LOWBIT_EXPECTS(!header.empty() && header[0] == '{',
                 where + "header does not start with '{' (not a safetensors file)");
  const std::uint64_t data_bytes = after_length - header_bytes;
  check_checksum(bytes, header, data_bytes, where);

  const Json json = parse_header(header, where);
  File file;
  std::vector<Entry> entries;
  for (const auto& item : json.items()) {
    if (item.key() == kMetadataKey)
      file.metadata = parse_metadata(item.value(), where);
    else
      entries.push_back(parse_entry(item.key(), item.value(), where));
  }
  check_tiling(entries, data_bytes, where);

  const std::uint8_t* data = bytes.data() + kLengthBytes + header_bytes;
  for (Entry& entry : entries) {
    entry.tensor.data.assign(data + entry.begin, data + entry.end);
    file.tensors.push_back(std::move(entry.tensor));
  }
  return file;
}

}  // namespace lowbit::safetensors
