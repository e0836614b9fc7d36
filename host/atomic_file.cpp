// Atomic file replacement: temporary file, fsync, rename, directory fsync.
#include "atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "lowbit/error.hpp"

namespace lowbit {

std::string errno_text(int error) { return std::strerror(error); }

int errno_if(bool failed) { return failed ? errno : 0; }

FileDescriptor::~FileDescriptor() {
  if (fd_ >= 0 && ::close(fd_) != 0)
    std::fprintf(stderr, "lowbit: close failed: %s\n", std::strerror(errno));
}

int FileDescriptor::close() {
  const int result = ::close(std::exchange(fd_, -1));
  return result == 0 ? 0 : errno;
}

namespace {

/// The temporary file of a write; removed on destruction unless it was
/// renamed into place.
class TempFile {
 public:
  explicit TempFile(std::string path) : path_(std::move(path)) {}
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    if (!renamed_ && ::unlink(path_.c_str()) != 0 && errno != ENOENT)
      std::fprintf(stderr, "lowbit: cannot remove %s: %s\n", path_.c_str(), std::strerror(errno));
  }
  const std::string& path() const { return path_; }
  void mark_renamed() { renamed_ = true; }

 private:
  std::string path_;
  bool renamed_ = false;
};

std::string directory_of(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

void write_all(int fd, const void* bytes, std::size_t size, const std::string& where,
               const std::string& temp_path) {
  const auto* data = static_cast<const std::uint8_t*>(bytes);
  while (size > 0) {
    const ssize_t written = ::write(fd, data, size);
    // write() returning 0 for a non-empty request means no space was made.
    const int error = written < 0 ? errno : written == 0 ? ENOSPC : 0;
    if (error == EINTR) continue;
    LOWBIT_EXPECTS(error == 0, where + "writing " + temp_path + " failed: " + errno_text(error));
    data += written;
    size -= static_cast<std::size_t>(written);
  }
}

/// Creates a new file beside `path`; the pid and a counter make the name
/// unique, and O_EXCL skips names left over by a crashed process.
int create_temp(const std::string& path, const std::string& where, std::string* temp_path) {
  static std::atomic<unsigned long> counter{0};
  for (;;) {
    *temp_path = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
    const int fd = ::open(temp_path->c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) return fd;
    const int error = errno;
    LOWBIT_EXPECTS(error == EEXIST || error == EINTR, where + "cannot create " + *temp_path +
                                                          ": " + errno_text(error));
  }
}

void sync_directory(const std::string& directory, const std::string& where) {
  FileDescriptor fd(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  int error = errno_if(fd.get() < 0);
  if (error == 0) error = errno_if(::fsync(fd.get()) != 0);
  if (error == 0) error = fd.close();
  LOWBIT_EXPECTS(error == 0, where + "saved, but syncing directory " + directory +
                                 " failed, so the rename may not survive a crash: " +
                                 errno_text(error));
}

}  // namespace

void write_file_atomically(const std::string& path, const ByteParts& parts) {
  const std::string where = path + ": ";
  std::string temp_path;
  FileDescriptor fd(create_temp(path, where, &temp_path));
  TempFile temp(temp_path);
  for (const auto& [data, size] : parts) write_all(fd.get(), data, size, where, temp.path());
  const int sync_error = errno_if(::fsync(fd.get()) != 0);
  LOWBIT_EXPECTS(sync_error == 0,
                 where + "fsync of " + temp.path() + " failed: " + errno_text(sync_error));
  const int close_error = fd.close();
  LOWBIT_EXPECTS(close_error == 0,
                 where + "closing " + temp.path() + " failed: " + errno_text(close_error));
  const int rename_error = errno_if(::rename(temp.path().c_str(), path.c_str()) != 0);
  LOWBIT_EXPECTS(rename_error == 0, where + "cannot rename " + temp.path() +
                                        " over it: " + errno_text(rename_error));
  temp.mark_renamed();
  sync_directory(directory_of(path), where);
}

}  // namespace lowbit
