# cmake -DIN=<file.cu|.cuh> -DOUT=<copy> -P rewrite_launches.cmake
#
# Copies a CUDA source with every kernel launch  k<<<cfg>>>(args)  (k may
# carry template arguments) rewritten into the C++ call
#   ::simt::launcher(::simt::config(cfg), SIMT_SITE, "k", [=](auto&&... p) { k(p...); })(args)
# on the same line, behind a #line that points diagnostics (and __FILE__) at
# the original file. Nothing else changes.
file(READ "${IN}" source)
set(kernel "[A-Za-z_][A-Za-z0-9_:]*(<[^<>;]*>)?")
string(REGEX REPLACE "(${kernel})[ \t]*<<<([^;]*)>>>"
       "::simt::launcher(::simt::config(\\3), SIMT_SITE, \"\\1\", [=](auto&&... simt_p) { \\1(simt_p...); })"
       rewritten "${source}")
string(FIND "${rewritten}" "<<<" left)
if(NOT left EQUAL -1)
  message(FATAL_ERROR "rewrite_launches: a launch in ${IN} was not rewritten")
endif()
file(WRITE "${OUT}.tmp" "#line 1 \"${IN}\"\n${rewritten}")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
