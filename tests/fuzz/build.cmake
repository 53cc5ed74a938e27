# Run by the CTest fixture `fuzz` (tests/CMakeLists.txt): configures
# tests/fuzz with clang and builds every target, at -O0 (a few seconds of
# fuzzing do not repay the optimiser's build time).
#   cmake -DCXX=clang++-14 -DSOURCE=<tests/fuzz> -DBINARY=<build>/fuzz -P build.cmake
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE} -B ${BINARY} -DCMAKE_CXX_COMPILER=${CXX}
                        -DPEFNOS_FUZZ_OPTIMIZE=-O0
                RESULT_VARIABLE configured)
if(NOT configured EQUAL 0)
  message(FATAL_ERROR "configuring the fuzz targets with ${CXX} failed")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY} -j2 RESULT_VARIABLE built)
if(NOT built EQUAL 0)
  message(FATAL_ERROR "building the fuzz targets failed")
endif()
