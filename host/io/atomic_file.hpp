// Output files, shared by checkpoint saves and the command line's
// --metrics-json: atomic replacement of regular files, in-place writes to
// FIFOs and devices; and the POSIX file descriptor wrapper both readers and
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

/// Writes the concatenation of `parts` to `path`, or to the file a symbolic
/// link at `path` leads to (the link stays).
///
/// A regular file, or a name that does not exist yet, is replaced
/// atomically, so that readers see either the old file or the whole new one:
/// a uniquely named temporary file <target>.tmp.<pid>.<n> in the target's
/// directory (O_EXCL), full writes, fsync, close, rename over the target,
/// fsync of the directory. On failure the temporary file is removed, the
/// target is untouched unless only the final directory fsync failed, and
/// lowbit::Error names `path` and the errno text. Temporary files of the
/// same target left by writers that are no longer running (killed mid-save)
/// are removed first.
///
/// Anything else is written in place, appending, as a shell's `>>` would: a
/// FIFO, a character or block device (/dev/null), or an open file named
/// through /proc (/dev/stdout, /proc/self/fd/N), which stays the same file.
/// A directory throws.
void write_file(const std::string& path, const ByteParts& parts);

/// Why write_file(`path`) would fail, checked without writing anything; ""
/// when it should succeed. For a command line to refuse an unwritable output
/// before a long run rather than at its end.
std::string write_problem(const std::string& path);

}  // namespace lowbit
