// Output files: atomic replacement of regular files (temporary file, fsync,
// rename, directory fsync) and in-place writes to everything else.
#include "io/atomic_file.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>

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

/// What a write to a path lands on.
struct WriteTarget {
  std::string path;  ///< the file to replace, or to write into when in_place
  bool in_place = false;
  std::string problem;  ///< why it cannot be written at all, or empty
};

bool on_procfs(const std::string& path) {
  struct statfs fs {};
  return ::statfs(directory_of(path).c_str(), &fs) == 0 && fs.f_type == PROC_SUPER_MAGIC;
}

/// The target of the symbolic link `link`, relative to the link's directory.
std::string link_target(const std::string& link, std::string* problem) {
  std::string target(PATH_MAX, '\0');
  const ssize_t length = ::readlink(link.c_str(), target.data(), target.size());
  if (length < 0) {
    const int error = errno;
    *problem = "cannot read the symbolic link " + link + ": " + errno_text(error);
    return {};
  }
  target.resize(static_cast<std::size_t>(length));
  return !target.empty() && target.front() == '/' ? target : directory_of(link) + "/" + target;
}

/// Follows symbolic links at `path` to the file a write should replace, or
/// to what it should write into: replacing a FIFO or a device would take its
/// place in the file system, and a link under /proc (/proc/self/fd/1) names
/// an open file rather than a path, so renaming over its text would detach
/// the process's descriptor (or create a file called "pipe:[1234]").
WriteTarget resolve(const std::string& path) {
  constexpr int kMaxLinks = 40;  // Linux's own limit when it resolves a path
  WriteTarget target;
  target.path = path;
  for (int links = 0;; ++links) {
    struct stat status {};
    if (::lstat(target.path.c_str(), &status) != 0) {
      const int error = errno;
      // A new file; write_problem() says what is wrong with its directory.
      if (error != ENOENT && error != ENOTDIR)
        target.problem = "cannot stat " + target.path + ": " + errno_text(error);
      return target;
    }
    if (S_ISREG(status.st_mode)) return target;
    if (S_ISDIR(status.st_mode)) {
      target.problem = "is a directory" + (target.path == path ? "" : " (" + target.path + ")");
      return target;
    }
    if (!S_ISLNK(status.st_mode) || on_procfs(target.path)) {
      target.in_place = true;
      return target;
    }
    if (links == kMaxLinks) {
      target.problem = "more than " + std::to_string(kMaxLinks) + " levels of symbolic links";
      return target;
    }
    target.path = link_target(target.path, &target.problem);
    if (!target.problem.empty()) return target;
  }
}

/// The process id in `name` when it is `prefix` followed by "<pid>.<n>", the
/// name create_temp() gives; else 0.
pid_t temp_owner(const std::string& name, const std::string& prefix) {
  if (name.compare(0, prefix.size(), prefix) != 0) return 0;
  const std::string rest = name.substr(prefix.size());
  const std::size_t dot = rest.find('.');
  const auto digits = [](const std::string& text) {
    return !text.empty() && text.size() <= 9 &&
           text.find_first_not_of("0123456789") == std::string::npos;
  };
  if (dot == std::string::npos || !digits(rest.substr(0, dot)) || !digits(rest.substr(dot + 1)))
    return 0;
  return static_cast<pid_t>(std::stol(rest.substr(0, dot)));
}

/// Removes the temporary files of `target` whose writer is gone (a save
/// killed before its rename). A live pid keeps its file: it may be a save in
/// progress. Best effort: a failure here must not fail the save.
void remove_stale_temps(const std::string& target) {
  const std::string directory = directory_of(target);
  const std::size_t slash = target.find_last_of('/');
  const std::string prefix =
      (slash == std::string::npos ? target : target.substr(slash + 1)) + ".tmp.";
  const std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(directory.c_str()), ::closedir);
  if (!dir) return;
  while (const dirent* entry = ::readdir(dir.get())) {
    const std::string name = entry->d_name;
    const pid_t owner = temp_owner(name, prefix);
    if (owner > 0 && ::kill(owner, 0) != 0 && errno == ESRCH)
      ::unlink((directory + "/" + name).c_str());
  }
}

void replace_atomically(const std::string& target, const ByteParts& parts,
                        const std::string& where) {
  remove_stale_temps(target);
  std::string temp_path;
  FileDescriptor fd(create_temp(target, where, &temp_path));
  TempFile temp(temp_path);
  for (const auto& [data, size] : parts) write_all(fd.get(), data, size, where, temp.path());
  const int sync_error = errno_if(::fsync(fd.get()) != 0);
  LOWBIT_EXPECTS(sync_error == 0,
                 where + "fsync of " + temp.path() + " failed: " + errno_text(sync_error));
  const int close_error = fd.close();
  LOWBIT_EXPECTS(close_error == 0,
                 where + "closing " + temp.path() + " failed: " + errno_text(close_error));
  const int rename_error = errno_if(::rename(temp.path().c_str(), target.c_str()) != 0);
  LOWBIT_EXPECTS(rename_error == 0, where + "cannot rename " + temp.path() + " over " + target +
                                        ": " + errno_text(rename_error));
  temp.mark_renamed();
  sync_directory(directory_of(target), where);
}

/// O_APPEND: through /proc/self/fd/1 a redirected stdout may be a regular
/// file, and what the process printed before must stay.
void write_in_place(const std::string& target, const ByteParts& parts, const std::string& where) {
  FileDescriptor fd(::open(target.c_str(), O_WRONLY | O_APPEND | O_NOCTTY | O_CLOEXEC));
  const int open_error = errno_if(fd.get() < 0);
  LOWBIT_EXPECTS(open_error == 0, where + "cannot open " + target + " for writing: " +
                                      errno_text(open_error));
  for (const auto& [data, size] : parts) write_all(fd.get(), data, size, where, target);
  const int close_error = fd.close();
  LOWBIT_EXPECTS(close_error == 0,
                 where + "closing " + target + " failed: " + errno_text(close_error));
}

}  // namespace

void write_file(const std::string& path, const ByteParts& parts) {
  const std::string where = path + ": ";
  const WriteTarget target = resolve(path);
  LOWBIT_EXPECTS(target.problem.empty(), where + target.problem);
  if (target.in_place)
    write_in_place(target.path, parts, where);
  else
    replace_atomically(target.path, parts, where);
}

std::string write_problem(const std::string& path) {
  const WriteTarget target = resolve(path);
  if (!target.problem.empty()) return target.problem;
  if (target.in_place) {
    const int error = errno_if(::access(target.path.c_str(), W_OK) != 0);
    return error == 0 ? "" : "cannot write to " + target.path + ": " + errno_text(error);
  }
  // The rename needs the directory: write and search permission on it.
  const std::string directory = directory_of(target.path);
  struct stat status {};
  const int stat_error = errno_if(::stat(directory.c_str(), &status) != 0);
  if (stat_error == ENOENT) return "directory " + directory + " does not exist";
  if (stat_error != 0) return "cannot use directory " + directory + ": " + errno_text(stat_error);
  if (!S_ISDIR(status.st_mode)) return directory + " is not a directory";
  const int access_error = errno_if(::access(directory.c_str(), W_OK | X_OK) != 0);
  if (access_error != 0)
    return "cannot create files in " + directory + ": " + errno_text(access_error);
  return "";
}

}  // namespace lowbit
