// Output files (host/atomic_file.hpp): a regular file is replaced atomically,
// through a symbolic link too (the link stays); a FIFO, a device or an open
// file named through /proc is written into, never replaced; temporary files
// of killed writers are cleaned up; problems are found before any write.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "io/atomic_file.hpp"
#include "lowbit/error.hpp"
#include "test_util.hpp"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

void write_text(const std::string& path, const std::string& text) {
  write_file(path, {{text.data(), text.size()}});
}

struct stat status_of(const std::string& path) {
  struct stat status {};
  EXPECT_EQ(::lstat(path.c_str(), &status), 0) << path << ": " << std::strerror(errno);
  return status;
}

class WriteFile : public ::testing::Test {
 protected:
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  test::ScratchDirectory scratch_;
  fs::path dir_ = scratch_.path();
};

TEST_F(WriteFile, ReplacesARegularFileWithANewOne) {
  write_text(path("out.json"), "old");
  const ino_t before = status_of(path("out.json")).st_ino;
  fs::create_hard_link(path("out.json"), path("old.json"));  // the old inode stays in use
  write_text(path("out.json"), "new");
  EXPECT_EQ(test::read_file(path("out.json")), "new");
  EXPECT_EQ(test::read_file(path("old.json")), "old")
      << "the old file was written over, not replaced";
  EXPECT_NE(status_of(path("out.json")).st_ino, before);
  EXPECT_EQ(scratch_.names(), (std::vector<std::string>{"old.json", "out.json"}));
}

TEST_F(WriteFile, FollowsASymlinkAndKeepsIt) {
  fs::create_directory(path("runs"));
  write_text(path("runs/target.json"), "old");
  fs::create_hard_link(path("runs/target.json"), path("runs/old.json"));
  fs::create_symlink("runs/target.json", path("link.json"));
  write_text(path("link.json"), "new");
  EXPECT_TRUE(fs::is_symlink(path("link.json")));
  EXPECT_EQ(fs::read_symlink(path("link.json")), "runs/target.json");
  EXPECT_EQ(test::read_file(path("runs/target.json")), "new");
  EXPECT_EQ(test::read_file(path("runs/old.json")), "old") << "the target was written over, not replaced";
  EXPECT_EQ(scratch_.names(), (std::vector<std::string>{"link.json", "runs"}));
}

TEST_F(WriteFile, ADanglingSymlinkCreatesItsTarget) {
  fs::create_symlink("created.json", path("link.json"));
  EXPECT_EQ(write_problem(path("link.json")), "");
  write_text(path("link.json"), "new");
  EXPECT_TRUE(fs::is_symlink(path("link.json")));
  EXPECT_EQ(test::read_file(path("created.json")), "new");
}

// The reader opens first (without blocking: there is no writer yet), so the
// write does not wait for one; had the FIFO been replaced, the read would
// find no writer and return nothing rather than hang.
TEST_F(WriteFile, WritesIntoAFifo) {
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0600), 0) << std::strerror(errno);
  const int reader = ::open(path("fifo").c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(reader, 0) << std::strerror(errno);
  ASSERT_EQ(::fcntl(reader, F_SETFL, 0), 0);
  write_text(path("fifo"), "through the pipe");
  std::string received;
  char buffer[64];
  for (ssize_t got; (got = ::read(reader, buffer, sizeof buffer)) > 0;)
    received.append(buffer, static_cast<std::size_t>(got));
  ::close(reader);
  EXPECT_EQ(received, "through the pipe");
  EXPECT_TRUE(S_ISFIFO(status_of(path("fifo")).st_mode));
  EXPECT_EQ(scratch_.names(), std::vector<std::string>{"fifo"});
}

// A node like /dev/null, made here (as root) so that a regression replaces
// this one rather than the machine's.
TEST_F(WriteFile, WritesIntoACharacterDevice) {
  const dev_t null_device = makedev(1, 3);
  if (::mknod(path("null").c_str(), S_IFCHR | 0666, null_device) != 0)
    GTEST_SKIP() << "cannot create a device node here: " << std::strerror(errno);
  EXPECT_EQ(write_problem(path("null")), "");
  write_text(path("null"), "discarded");
  const struct stat status = status_of(path("null"));
  EXPECT_TRUE(S_ISCHR(status.st_mode));
  EXPECT_EQ(status.st_rdev, null_device);
  EXPECT_EQ(scratch_.names(), std::vector<std::string>{"null"});
}

TEST_F(WriteFile, DevNullIsWritableInPlace) {
  EXPECT_EQ(write_problem("/dev/null"), "");
  EXPECT_TRUE(S_ISCHR(status_of("/dev/null").st_mode));
}

// /proc/self/fd/N (and /dev/stdout, a link to /proc/self/fd/1) names an open
// file, not a path: written into, after what is there.
TEST_F(WriteFile, WritesIntoAnOpenFileNamedThroughProc) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  write_text("/proc/self/fd/" + std::to_string(pipe_fds[1]), "into the pipe");
  ::close(pipe_fds[1]);
  char buffer[64] = {};
  EXPECT_EQ(::read(pipe_fds[0], buffer, sizeof buffer - 1), 13);
  ::close(pipe_fds[0]);
  EXPECT_STREQ(buffer, "into the pipe");

  // A redirected stdout: a regular file keeps what was printed before.
  const int fd = ::open(path("log.txt").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "printed\n", 8), 8);
  write_text("/dev/fd/" + std::to_string(fd), "{}\n");
  ::close(fd);
  EXPECT_EQ(test::read_file(path("log.txt")), "printed\n{}\n");
  EXPECT_EQ(scratch_.names(), std::vector<std::string>{"log.txt"});
}

TEST_F(WriteFile, ADirectoryIsRefused) {
  fs::create_directory(path("dir"));
  EXPECT_EQ(write_problem(path("dir")), "is a directory");
  EXPECT_TRUE(test::throws_mentioning([&] { write_text(path("dir"), "x"); },
                                      path("dir") + ": is a directory"));
  fs::create_symlink("dir", path("link"));
  EXPECT_EQ(write_problem(path("link")), "is a directory (" + path("dir") + ")");
  EXPECT_TRUE(fs::is_empty(path("dir")));
}

TEST_F(WriteFile, ProblemsAreFoundWithoutWriting) {
  EXPECT_EQ(write_problem(path("new.json")), "");
  write_text(path("file"), "x");
  EXPECT_EQ(write_problem(path("file")), "");
  EXPECT_EQ(write_problem(path("missing/new.json")),
            "directory " + path("missing") + " does not exist");
  EXPECT_EQ(write_problem(path("file/new.json")), path("file") + " is not a directory");
  fs::create_symlink("loop", path("loop"));
  EXPECT_EQ(write_problem(path("loop")), "more than 40 levels of symbolic links");
  EXPECT_EQ(scratch_.names(), (std::vector<std::string>{"file", "loop"}));
  if (::geteuid() != 0) {  // root writes anywhere
    fs::create_directory(path("read-only"));
    fs::permissions(path("read-only"), fs::perms::owner_read | fs::perms::owner_exec);
    EXPECT_EQ(write_problem(path("read-only/new.json")),
              "cannot create files in " + path("read-only") + ": Permission denied");
  }
}

/// A process id that no longer runs: a child's, after it exited and was reaped.
pid_t dead_pid() {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  int status = 0;
  EXPECT_EQ(::waitpid(child, &status, 0), child);
  return child;
}

TEST_F(WriteFile, RemovesTheTemporaryFilesOfDeadWriters) {
  const std::string dead = std::to_string(dead_pid());
  const std::string alive = std::to_string(::getppid());
  const std::string own = std::to_string(::getpid());
  const std::vector<std::string> kept = {
      "ckpt.safetensors.tmp." + alive + ".0",  // another live process may be saving
      "ckpt.safetensors.tmp." + own + ".99",   // so may another thread of this one
      "ckpt.safetensors.tmp.notes",            // not a name a writer makes
      "other.safetensors.tmp." + dead + ".0",  // another file's
  };
  for (const std::string& name : kept) write_text(path(name), "x");
  write_text(path("ckpt.safetensors.tmp." + dead + ".3"), std::string(1000, 'x'));
  write_text(path("ckpt.safetensors"), "saved");
  std::vector<std::string> expected = kept;
  expected.push_back("ckpt.safetensors");
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(scratch_.names(), expected);
  EXPECT_EQ(test::read_file(path("ckpt.safetensors")), "saved");
}

}  // namespace
}  // namespace lowbit
