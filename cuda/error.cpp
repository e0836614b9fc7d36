#include "lowbit/error.hpp"

#include <string>

namespace lowbit {

Error::Error(const std::string& message, const char* file, int line)
    : std::runtime_error("lowbit: " + message + " (at " + file + ":" + std::to_string(line) + ")"),
      message_(message),
      file_(file),
      line_(line) {}

}  // namespace lowbit
