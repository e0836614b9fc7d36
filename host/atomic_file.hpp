// Atomic file replacement, shared by checkpoint saves and the command line's
// --metrics-json, and the POSIX file descriptor wrapper both readers and
// writers use.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace lowbit {

/// The text of errno value `error`.
std::string errno_text(int error);

/// errno when a system call failed, else 0; read before building any message.
int errno_if(bool failed);

/// A file descriptor, closed on destruction; close() reports the error.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor();
  int get() const { return fd_; }
  /// Closes now; returns 0 or the errno of close().
  int close();

 private:
  int fd_;
};

/// Bytes to write: a pointer and a length.
using ByteParts = std::vector<std::pair<const void*, std::size_t>>;

/// Writes the concatenation of `parts` to `path` so that readers see either
/// the old file or the whole new one: a uniquely named temporary file
/// `path`.tmp.<pid>.<n> in the same directory (O_EXCL), full writes, fsync,
/// close, rename over `path`, fsync of the directory. On failure the
/// temporary file is removed, `path` is untouched unless only the final
/// directory fsync failed, and lowbit::Error names `path` and the errno text.
void write_file_atomically(const std::string& path, const ByteParts& parts);

}  // namespace lowbit
