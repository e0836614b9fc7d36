# Warnings are errors in our own code, and no FMA contraction anywhere: the
# CPU reference and the CUDA kernels must round identically (DESIGN.md §2).
function(lowbit_strict target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror -ffp-contract=off>
    $<$<COMPILE_LANGUAGE:CUDA>:--Werror all-warnings -Xcompiler=-Wall,-Wextra,-Werror,-ffp-contract=off -fmad=false>)
endfunction()
