# Installs the built lowbit into a scratch prefix, then configures, builds and
# runs examples/consumer against it. Run by CTest (test consumer_example).
file(REMOVE_RECURSE "${WORK_DIR}")
function(run_step)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE status)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "failed (${status}): ${ARGV}")
  endif()
endfunction()
run_step(${CMAKE_COMMAND} --install "${LOWBIT_BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
set(consumer_flags "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix" "-DCMAKE_CUDA_COMPILER=${CUDA_COMPILER}")
run_step(${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build" ${consumer_flags})
run_step(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run_step("${WORK_DIR}/build/consumer")
run_step("${WORK_DIR}/build/consumer_graph")

# The kernels component configures and builds with lowbit::lowbit's
# dependencies made unfindable (a REQUIRED find of a disabled package is an
# error, so any find_dependency of them would fail the configure)...
set(without_dependencies
  -DCMAKE_DISABLE_FIND_PACKAGE_CUDNN=ON -DCMAKE_DISABLE_FIND_PACKAGE_ZLIB=ON
  -DCMAKE_DISABLE_FIND_PACKAGE_OpenMP=ON -DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=ON)
run_step(${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/kernels-only"
         ${consumer_flags} -DCONSUMER_KERNELS_ONLY=ON ${without_dependencies})
run_step(${CMAKE_COMMAND} --build "${WORK_DIR}/kernels-only")
run_step("${WORK_DIR}/kernels-only/consumer")

# ...which the whole package does need: without this failure the check above
# would prove nothing.
execute_process(
  COMMAND ${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/everything-without"
          ${consumer_flags} ${without_dependencies}
  RESULT_VARIABLE status OUTPUT_QUIET ERROR_QUIET)
if(status EQUAL 0)
  message(FATAL_ERROR "the full package configured without cuDNN, zlib, OpenMP and "
                      "nlohmann-json: the kernels-only check above tests nothing")
endif()
